/**
 * The vCPU worker: one long-lived piscina task per vCPU runs `KVM_RUN` in a loop on this thread,
 * pushes every exit through the user's pipeline here (no thread hop for exits handled in
 * JavaScript), and hands only posted writes and unhandled exits to the main thread.
 *
 * Not imported by users: the runtime (`runtime.ts`) points piscina at this file.
 *
 * @module
 */
import { Subject, config as rxConfig, filter, map, type Observable } from 'rxjs';
import { receiveMessageOnPort } from 'node:worker_threads';
import { KvmError } from '../abi/errors';
import { nativeBackend } from '../backend/native';
import { GuestMemory, GuestMemoryMap } from '../wrappers/guest-memory';
import { RUN } from '../wrappers/kvm-run';
import { VCPU_EXIT_KINDS, decodeExit, type VcpuExit } from '../wrappers/vcpu-exit';
import type { VcpuFd } from '../wrappers/vcpu-fd';
import { VmFd } from '../wrappers/vm-fd';
import { deliverExit } from './hold';
import { recordExit, type RecordedExit } from './recording';
import { describeExit, UnhandledExitError } from './errors';
import {
  CONTROL_BYTES,
  MAILBOX_BYTES,
  MAILBOX_OFFSET,
  Mailbox,
  R,
  RECORD_BYTES,
  RECORD_DATA_BYTES,
  RING_OFFSET,
  RING_RECORDS,
  Rec,
  State,
  THREAD_SLOT,
  W,
  postedExit,
  Where,
  type PostedRange,
  type TaskOutcome,
  type VcpuTask,
} from './protocol';

/** What a pipeline gets besides the exits. */
export interface VcpuContext {
  /** The vCPU id. */
  readonly vcpuId: number;
  /** The vCPU, usable between exits (this thread owns it): `ctx.vcpu.getRegs()`. */
  readonly vcpu: VcpuFd;
  /** The VM (e.g. `ctx.vm.setIrqLine(4, true)`). */
  readonly vm: VmFd;
  /** Guest memory, by guest-physical address. */
  readonly memory: GuestMemoryMap;
  /** `pipelineOptions` given to `runtime.start()`. */
  readonly options: unknown;
  /** Sends a value to the main thread's `run.events$` (structured-cloned). */
  emit(channel: string, data: unknown): void;
  /** Aborted when the run stops. */
  readonly signal: AbortSignal;
  /**
   * Values the main thread sent with `run.send(channel, data)` (all channels, or one). Delivered
   * between exits: the main thread kicks the vCPU out of the guest to hand them over, so input
   * reaches a device even while the guest sleeps in an in-kernel `hlt`.
   */
  receive(channel?: string): Observable<unknown>;
}

/** The shape of a pipeline module's export. */
export type VcpuPipeline = (exits$: Observable<VcpuExit>, ctx: VcpuContext) => Observable<unknown>;

function isPosted(exit: VcpuExit, posted: PostedRange[]): boolean {
  if (exit.kind === 'IoOut') {
    if (exit.data.length > RECORD_DATA_BYTES) return false;
    return posted.some((p) => 'port' in p && exit.port >= p.port && exit.port <= (p.to ?? p.port));
  }
  if (exit.kind === 'MmioWrite') {
    return posted.some((p) => 'mmio' in p && exit.addr >= p.mmio && exit.addr < p.mmio + BigInt(p.size));
  }
  return false;
}

function serializeError(e: unknown): TaskOutcome['error'] {
  if (e instanceof Error) {
    const props: Record<string, unknown> = {};
    for (const k of Object.keys(e)) {
      const v = (e as unknown as Record<string, unknown>)[k];
      if (['string', 'number', 'boolean', 'bigint'].includes(typeof v)) props[k] = v;
    }
    return { name: e.name, message: e.message, code: (e as { code?: string }).code, stack: e.stack, props };
  }
  return { name: 'Error', message: String(e) };
}

async function loadPipeline(path: string, exportName: string | undefined): Promise<VcpuPipeline> {
  let mod: Record<string, unknown>;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    mod = require(path) as Record<string, unknown>;
  } catch (e) {
    if ((e as { code?: string }).code !== 'ERR_REQUIRE_ESM') throw e;
    // A real import() that TypeScript's CommonJS output does not turn into require().
    // eslint-disable-next-line @typescript-eslint/no-implied-eval
    const dynamicImport = new Function('s', 'return import(s)') as (s: string) => Promise<Record<string, unknown>>;
    mod = await dynamicImport(path);
  }
  const fn = exportName !== undefined ? mod[exportName] : (mod.default ?? mod.pipeline);
  if (typeof fn !== 'function') {
    throw new TypeError(`pipeline module ${path} has no ${exportName ?? 'default'} export that is a function`);
  }
  return fn as VcpuPipeline;
}

// A handler that throws inside a subscriber's `next` is, by default, reported by RxJS later from
// a timer: the vCPU would keep running (a flooding guest never lets the timer fire) and the error
// would surface in whichever run this thread serves next. This thread runs only vCPU tasks, so
// RxJS rethrows such errors synchronously here: out of `exits.next(exit)`, into the run loop,
// which ends the run with that error.
// (Deprecated in RxJS 7 and gone in 8: replace it before moving to RxJS 8.)
// eslint-disable-next-line @typescript-eslint/no-deprecated
rxConfig.useDeprecatedSynchronousErrorHandling = true;

/** The piscina task: runs one vCPU until its pipeline completes, it fails, or it is stopped. */
export default async function runVcpu(task: VcpuTask): Promise<TaskOutcome> {
  // Errors RxJS still reports asynchronously (thrown by a subscriber called from a timer or a
  // promise) belong to this run: checked at each exit and once more before the run reports.
  const late: { failure?: { error: unknown } } = {};
  rxConfig.onUnhandledError = (error: unknown) => {
    late.failure ??= { error };
  };
  const rethrowLate = (): void => {
    if (late.failure !== undefined) throw late.failure.error;
  };
  const backend = nativeBackend();
  backend.kickSignal();
  if (task.pinCpu !== undefined) backend.addon.setAffinity(task.pinCpu);
  const ctrl = new Int32Array(task.sab, 0, CONTROL_BYTES / 4);
  const tid = new BigInt64Array(task.sab, 0, CONTROL_BYTES / 8);
  const ring = new DataView(task.sab, RING_OFFSET, RING_RECORDS * RECORD_BYTES);
  const ringBytes = new Uint8Array(task.sab, RING_OFFSET, RING_RECORDS * RECORD_BYTES);
  const mailbox = new Uint8Array(task.sab, MAILBOX_OFFSET, MAILBOX_BYTES);
  const port = task.port;
  const abort = new AbortController();
  let stopResolve: () => void = () => undefined;
  const stopped = new Promise<void>((r) => (stopResolve = r));
  const inputs = new Subject<{ channel: string; data: unknown }>();
  let callTarget: VcpuFd | undefined;
  const onMessage = (m: {
    type?: string;
    channel?: string;
    data?: unknown;
    id?: number;
    method?: string;
    args?: unknown[];
  }) => {
    if (m?.type === 'stop') stopResolve();
    else if (m?.type === 'input') inputs.next({ channel: m.channel ?? '', data: m.data });
    else if (m?.type === 'call') {
      // A vCPU method called from the main thread (`run.call`), run here between exits.
      try {
        const target = callTarget;
        const method = m.method ?? '';
        if (
          target === undefined ||
          ['run', 'close', 'constructor'].includes(method) ||
          typeof (target as unknown as Record<string, unknown>)[method] !== 'function'
        ) {
          throw Object.assign(new TypeError(`cannot call '${method}' on a running vCPU`), {
            code: 'ERR_INVALID_ARG_VALUE',
          });
        }
        const value = (target as unknown as Record<string, (...a: unknown[]) => unknown>)[method](...(m.args ?? []));
        port.postMessage({ type: 'result', id: m.id, value });
      } catch (e) {
        port.postMessage({ type: 'result', id: m.id, error: serializeError(e) });
      }
    }
  };
  port.on('message', onMessage);
  // The run loop is synchronous between exits: take queued messages (input, stop) now.
  const drainMessages = () => {
    for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
      onMessage(m.message as { type?: string });
    }
  };
  const stopRequested = () => Atomics.load(ctrl, W.stop) !== 0;
  const ring_doorbell = () => {
    Atomics.add(ctrl, W.doorbell, 1);
    Atomics.notify(ctrl, W.doorbell);
  };

  tid[THREAD_SLOT] = backend.threadSelf();
  const vm = VmFd.borrow(backend, task.vmFd, task.runSize);
  const memories: GuestMemory[] = [];
  const outcome: TaskOutcome = { reason: 'stopped', exits: 0 };
  try {
    const vcpu = vm.borrowVcpu(task.vcpuFd, task.vcpuId);
    callTarget = vcpu;
    const run = vcpu.getKvmRun();
    const runBytes = run.bytes;
    const memory = new GuestMemoryMap();
    for (const s of task.slots) {
      const m = GuestMemory.borrow(backend, s.hostAddress, s.size);
      memories.push(m);
      memory.add({ guestPhysAddr: s.guestPhysAddr, memory: m });
    }
    const ctx: VcpuContext = {
      vcpuId: task.vcpuId,
      vcpu,
      vm,
      memory,
      options: task.options,
      emit: (channel, data) => port.postMessage({ type: 'emit', channel, data }),
      signal: abort.signal,
      receive: (channel) =>
        inputs.pipe(
          filter((m) => channel === undefined || m.channel === channel),
          map((m) => m.data),
        ),
    };

    const exits = new Subject<VcpuExit>();
    let unhandled: VcpuExit | undefined;
    let failure: unknown;
    let completed = false;
    const source = exits.asObservable();
    const pipeline = task.pipeline !== undefined ? await loadPipeline(task.pipeline, task.pipelineExport) : undefined;
    const out$ = pipeline ? pipeline(source, ctx) : source;
    const sub = out$.subscribe({
      next: (v) => {
        if (v !== null && typeof v === 'object' && 'kind' in v) unhandled = v as VcpuExit;
      },
      error: (e: unknown) => {
        failure = e;
      },
      complete: () => {
        completed = true;
      },
    });

    const writeRecord = (kind: number, where: number, exit: VcpuExit) => {
      for (;;) {
        const w = Atomics.load(ctrl, W.ringWrite);
        const r = Atomics.load(ctrl, W.ringRead);
        if (w - r < RING_RECORDS) break;
        if (stopRequested()) return;
        Atomics.wait(ctrl, W.ringRead, r, 50); // the ring is full: wait for the main thread to drain it
      }
      const w = Atomics.load(ctrl, W.ringWrite);
      const at = (w % RING_RECORDS) * RECORD_BYTES;
      ringBytes.fill(0, at, at + RECORD_BYTES);
      ring.setUint8(at + R.kind, kind);
      ring.setUint8(at + R.where, where);
      ring.setUint32(at + R.reason, VCPU_EXIT_KINDS.indexOf(exit.kind), true);
      let data: Uint8Array | undefined;
      if (exit.kind === 'IoOut' || exit.kind === 'IoIn') {
        ring.setUint8(at + R.size, exit.size);
        ring.setUint16(at + R.port, exit.port, true);
        ring.setUint32(at + R.count, exit.count, true);
        data = exit.data;
      } else if (exit.kind === 'MmioWrite' || exit.kind === 'MmioRead') {
        ring.setUint8(at + R.size, exit.data.length);
        ring.setBigUint64(at + R.addr, exit.addr, true);
        data = exit.data;
      }
      if (data !== undefined) {
        const n = Math.min(data.length, RECORD_DATA_BYTES);
        ring.setUint8(at + R.len, n);
        ringBytes.set(data.subarray(0, n), at + R.data);
      }
      Atomics.store(ctrl, W.ringWrite, w + 1);
      ring_doorbell();
    };

    // Hands the exit to the main thread and sleeps until it is answered (or the run stops).
    const handToMain = (exit: VcpuExit): boolean => {
      mailbox.set(runBytes.subarray(0, RUN.syncRegs), 0);
      if (exit.kind === 'IoIn' || exit.kind === 'IoOut') {
        mailbox.set(exit.data, exit.data.byteOffset - runBytes.byteOffset);
      }
      Atomics.store(ctrl, W.mailbox, Mailbox.posted);
      ring_doorbell();
      while (Atomics.load(ctrl, W.mailbox) === Mailbox.posted) {
        if (stopRequested()) return false;
        Atomics.wait(ctrl, W.mailbox, Mailbox.posted, 100);
      }
      // Copy the answer back: the exit union (MMIO data, hypercall ret, MSR data/error) and PIO data.
      runBytes.set(mailbox.subarray(RUN.exit, RUN.kvmValidRegs), RUN.exit);
      if (exit.kind === 'IoIn') {
        const off = exit.data.byteOffset - runBytes.byteOffset;
        exit.data.set(mailbox.subarray(off, off + exit.data.length));
      }
      Atomics.store(ctrl, W.mailbox, Mailbox.empty);
      return true;
    };

    // The native fast path: OUTs to posted ports go to the ring from C, without waking JavaScript.
    const postedPorts = task.posted.filter((p): p is { port: number; to?: number } => 'port' in p);
    let bitmap: Uint8Array | undefined;
    if (postedPorts.length > 0 && !task.record) {
      // a recording sees every exit in JavaScript
      bitmap = new Uint8Array(8192);
      for (const p of postedPorts) for (let q = p.port; q <= (p.to ?? p.port); q++) bitmap[q >> 3] |= 1 << (q & 7);
    }
    const layout = Int32Array.of(
      RING_RECORDS,
      RECORD_BYTES,
      W.ringWrite,
      W.ringRead,
      W.exits,
      R.kind,
      R.where,
      R.size,
      R.len,
      R.reason,
      R.port,
      R.count,
      R.data,
      RECORD_DATA_BYTES,
      Rec.postedIo,
      Where.posted,
      VCPU_EXIT_KINDS.indexOf('IoOut'),
    );
    const runView = run.asMutRef();
    const runAddress = run.address;
    const vcpuFd = vcpu.asRawFd();
    const addon = backend.addon;
    // With `postedTo: 'worker'`, the fast path fills a ring of this thread's own instead, which
    // the loop drains into the pipeline (in guest order, before the exit that ended the batch).
    const toWorker = task.postedTo === 'worker';
    const localCtl = new Int32Array(toWorker ? CONTROL_BYTES / 4 : 0);
    const localRing = new Uint8Array(toWorker ? RING_RECORDS * RECORD_BYTES : 0);
    const localView = new DataView(localRing.buffer);
    const drainLocal = (into: VcpuExit[]): void => {
      for (let r = localCtl[W.ringRead]; r < localCtl[W.ringWrite]; r++) {
        const exit = postedExit(localView, localRing, (r % RING_RECORDS) * RECORD_BYTES);
        if (exit !== undefined) into.push(exit);
      }
      localCtl[W.ringRead] = localCtl[W.ringWrite]!;
    };
    let batch: VcpuExit[] = [];
    // The kernel's coalesced MMIO/PIO ring (zones registered with vm.registerCoalescedMmio): writes
    // it buffered instead of exiting are handed to the pipeline before the next exit.
    if (task.coalescedRing) vcpu.mapCoalescedMmioRing();
    const drainCoalesced = () => {
      for (let e = vcpu.coalescedMmioRead(); e !== undefined; e = vcpu.coalescedMmioRead()) {
        const data = e.data.slice(0, Math.min(e.len, 8));
        batch.push(
          e.pio !== 0
            ? { kind: 'IoOut', port: Number(e.physAddr), size: data.length, count: 1, data }
            : { kind: 'MmioWrite', addr: e.physAddr, data },
        );
      }
    };
    const nextExitInner = (): VcpuExit | undefined => {
      if (bitmap === undefined) return vcpu.run();
      const r = toWorker
        ? addon.runFast(vcpuFd, runAddress, bitmap, localRing, localCtl, layout, 256)
        : addon.runFast(vcpuFd, runAddress, bitmap, ringBytes, ctrl, layout, 256);
      const fast = Math.floor(r / 2);
      if (fast > 0) {
        outcome.exits += fast;
        outcome.lastExit = 'IoOut';
        if (toWorker) {
          drainLocal(batch);
          Atomics.add(ctrl, W.exits, fast);
        } else ring_doorbell();
      }
      return r % 2 === 1 ? decodeExit(runView, runBytes) : undefined;
    };
    // Chosen once: the hot loop does not test the option on every exit.
    const nextExit: () => VcpuExit | undefined = task.coalescedRing
      ? () => {
          const exit = nextExitInner();
          drainCoalesced();
          return exit;
        }
      : nextExitInner;

    const recorded: RecordedExit[] | undefined = task.record ? [] : undefined;
    if (recorded) outcome.recording = recorded;

    const holds: Array<PromiseLike<unknown>> = [];
    const next = (exit: VcpuExit) => exits.next(exit);

    Atomics.store(ctrl, W.state, State.running);
    ring_doorbell();

    for (;;) {
      rethrowLate();
      if (stopRequested()) break;
      if (Atomics.load(ctrl, W.wake) !== 0) {
        Atomics.store(ctrl, W.wake, 0);
        drainMessages();
        if (failure !== undefined) throw failure as Error; // what the pipeline errored with
        if (completed) {
          outcome.reason = 'completed';
          break;
        }
        continue;
      }
      let exit: VcpuExit | undefined;
      try {
        exit = nextExit();
        if (batch.length > 0) {
          // Posted writes for this thread's pipeline: delivered in order, holds honoured.
          const posted = batch;
          batch = [];
          for (const w of posted) {
            holds.length = 0;
            unhandled = undefined;
            deliverExit(w, holds, next);
            if (holds.length > 0) await Promise.all(holds);
            if (failure !== undefined) throw failure as Error; // what the pipeline errored with
            if (unhandled !== undefined && task.unhandled === 'error') {
              throw new UnhandledExitError(w, describeExit(w) + ' (posted)');
            }
            if (completed) break;
          }
          if (completed) {
            outcome.reason = 'completed';
            break;
          }
        }
        if (exit === undefined) continue; // a batch of posted writes, no exit pending
      } catch (e) {
        if (e instanceof KvmError && e.code === 'EINTR') {
          run.immediateExit = 0;
          if (stopRequested()) break;
          continue; // a stray signal: go back into the guest
        }
        throw e;
      }
      outcome.exits++;
      outcome.lastExit = exit.kind;
      Atomics.add(ctrl, W.exits, 1);
      holds.length = 0;
      unhandled = undefined;
      deliverExit(exit, holds, next);
      if (holds.length > 0) {
        let stoppedWhileHeld = false;
        await Promise.race([Promise.all(holds), stopped.then(() => (stoppedWhileHeld = true))]);
        if (stoppedWhileHeld) break;
      }
      if (failure !== undefined) throw failure as Error; // what the pipeline errored with
      let where: number = Where.worker;
      if (unhandled !== undefined) {
        if (task.postedTo !== 'worker' && isPosted(exit, task.posted)) {
          writeRecord(exit.kind === 'IoOut' ? Rec.postedIo : Rec.postedMmio, Where.posted, exit);
          where = Where.posted;
        } else if (task.unhandled === 'main') {
          if (Atomics.load(ctrl, W.monitor) !== 0) writeRecord(Rec.monitor, Where.main, exit);
          if (!handToMain(exit)) break;
          recorded?.push(recordExit(exit));
          if (completed) {
            outcome.reason = 'completed';
            break;
          }
          continue;
        } else if (task.unhandled === 'ignore') {
          if (exit.kind === 'IoIn' || exit.kind === 'MmioRead') exit.data.fill(0xff);
          where = Where.unhandled;
        } else {
          throw new UnhandledExitError(exit, describeExit(exit) + `, rip 0x${vcpu.getRegs().rip.toString(16)}`);
        }
      }
      recorded?.push(recordExit(exit));
      // A posted record already tells the monitor about this exit.
      if (where !== Where.posted && Atomics.load(ctrl, W.monitor) !== 0) writeRecord(Rec.monitor, where, exit);
      if (completed) {
        outcome.reason = 'completed';
        break;
      }
    }
    sub.unsubscribe();
    if (outcome.reason !== 'completed') outcome.reason = 'stopped';
    // Let a timer-reported error of this run arrive before the run reports its outcome.
    await new Promise((r) => setTimeout(r, 0));
    rethrowLate();
  } catch (e) {
    outcome.reason = 'error';
    outcome.error = serializeError(e);
  } finally {
    if (task.pinCpu !== undefined) backend.addon.setAffinity(-1); // the pooled thread may run other vCPUs next
    rxConfig.onUnhandledError = null;
    abort.abort();
    inputs.complete();
    // Leave immediate_exit at 0 for whoever runs this vCPU next, then release this thread's views.
    try {
      vm.close();
    } catch {
      /* the views are gone either way */
    }
    for (const m of memories) m.close();
    port.postMessage({ type: 'end' }); // after every ctx.emit: the main thread completes events$ on it
    port.close();
    Atomics.store(ctrl, W.state, State.ended);
    Atomics.add(ctrl, W.doorbell, 1);
    Atomics.notify(ctrl, W.doorbell);
    Atomics.notify(ctrl, W.mailbox);
  }
  return outcome;
}
