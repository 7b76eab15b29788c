/**
 * The vCPU run loop of a worker thread: one long-lived piscina task per vCPU runs `KVM_RUN` in a
 * loop on this thread, pushes every exit through the user's pipeline here (no thread hop for exits
 * handled in JavaScript), and hands only posted writes and unhandled exits to the main thread.
 *
 * Not imported by users: the pool (`pool.ts`) points piscina at this file.
 *
 * @module
 */
import { Subject, config as rxConfig, filter, map } from 'rxjs';
import { receiveMessageOnPort } from 'node:worker_threads';
import { KvmError } from '../abi/errors';
import type { IoctlBackend } from '../backend/types';
import { nativeBackend } from '../backend/native';
import { GuestMemory, GuestMemoryMap } from '../wrappers/guest-memory';
import { RUN } from '../wrappers/kvm-run';
import { VCPU_EXIT_KINDS, decodeExit, type DebugExit, type VcpuExit } from '../wrappers/vcpu-exit';
import type { VcpuFd } from '../wrappers/vcpu-fd';
import { VmFd } from '../wrappers/vm-fd';
import { recordExit, type RecordedExit } from './recording';
import { describeExit, serializeError } from './errors';
import { PipelineDriver, loadPipeline, type VcpuContext } from './pipeline';
import {
  CONTROL_BYTES,
  ControlWord,
  HandledBy,
  MAILBOX_BYTES,
  MAILBOX_OFFSET,
  MailboxState,
  RECORD_BYTES,
  RECORD_DATA_BYTES,
  RING_OFFSET,
  RING_RECORDS,
  RecordField,
  RecordKind,
  RunState,
  THREAD_ID_SLOT,
  RUNNING_SINCE_SLOT,
  postedExit,
  runFastLayout,
  type MainToWorker,
  type PostedRange,
  type TaskOutcome,
  type VcpuTask,
  type WorkerToMain,
} from './protocol';

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

// A handler that throws inside a subscriber's `next` is, by default, reported by RxJS later from
// a timer: the vCPU would keep running (a flooding guest never lets the timer fire) and the error
// would surface in whichever run this thread serves next. This thread runs only vCPU tasks, so
// RxJS rethrows such errors synchronously here: out of the driver's delivery, into the run loop,
// which ends the run with that error.
// (Deprecated in RxJS 7 and gone in 8: replace it before moving to RxJS 8.)
// eslint-disable-next-line @typescript-eslint/no-deprecated
rxConfig.useDeprecatedSynchronousErrorHandling = true;

/** The shared memory of one run, as this thread sees it. */
class Shared {
  readonly control: Int32Array;
  readonly threadIds: BigInt64Array;
  readonly ring: DataView;
  readonly ringBytes: Uint8Array;
  readonly mailbox: Uint8Array;
  constructor(sab: SharedArrayBuffer) {
    this.control = new Int32Array(sab, 0, CONTROL_BYTES / 4);
    this.threadIds = new BigInt64Array(sab, 0, CONTROL_BYTES / 8);
    this.ring = new DataView(sab, RING_OFFSET, RING_RECORDS * RECORD_BYTES);
    this.ringBytes = new Uint8Array(sab, RING_OFFSET, RING_RECORDS * RECORD_BYTES);
    this.mailbox = new Uint8Array(sab, MAILBOX_OFFSET, MAILBOX_BYTES);
  }
  get stopRequested(): boolean {
    return Atomics.load(this.control, ControlWord.stopRequested) !== 0;
  }
  ringDoorbell(): void {
    Atomics.add(this.control, ControlWord.doorbell, 1);
    Atomics.notify(this.control, ControlWord.doorbell);
  }
  /** Appends a record of `exit` to the ring (waits while the ring is full, unless stopping). */
  writeRecord(kind: number, handledBy: number, exit: VcpuExit): void {
    const { control, ring, ringBytes } = this;
    for (;;) {
      const w = Atomics.load(control, ControlWord.ringWrite);
      const r = Atomics.load(control, ControlWord.ringRead);
      if (w - r < RING_RECORDS) break;
      if (this.stopRequested) return;
      Atomics.wait(control, ControlWord.ringRead, r, 50); // full: wait for the main thread to drain it
    }
    const w = Atomics.load(control, ControlWord.ringWrite);
    const at = (w % RING_RECORDS) * RECORD_BYTES;
    ringBytes.fill(0, at, at + RECORD_BYTES);
    ring.setUint8(at + RecordField.kind, kind);
    ring.setUint8(at + RecordField.handledBy, handledBy);
    ring.setUint32(at + RecordField.exitKind, VCPU_EXIT_KINDS.indexOf(exit.kind), true);
    let data: Uint8Array | undefined;
    if (exit.kind === 'IoOut' || exit.kind === 'IoIn') {
      ring.setUint8(at + RecordField.size, exit.size);
      ring.setUint16(at + RecordField.port, exit.port, true);
      ring.setUint32(at + RecordField.count, exit.count, true);
      data = exit.data;
    } else if (exit.kind === 'MmioWrite' || exit.kind === 'MmioRead') {
      ring.setUint8(at + RecordField.size, exit.data.length);
      ring.setBigUint64(at + RecordField.address, exit.addr, true);
      data = exit.data;
    }
    if (data !== undefined) {
      const n = Math.min(data.length, RECORD_DATA_BYTES);
      ring.setUint8(at + RecordField.dataLength, n);
      ringBytes.set(data.subarray(0, n), at + RecordField.data);
    }
    Atomics.store(control, ControlWord.ringWrite, w + 1);
    this.ringDoorbell();
  }
  /**
   * Hands the exit to the main thread through the mailbox and sleeps until it is answered;
   * `false` when the run stops first. `runBytes` is this vCPU's kvm_run.
   */
  handToMain(exit: VcpuExit, runBytes: Uint8Array): boolean {
    const { control, mailbox } = this;
    mailbox.set(runBytes.subarray(0, RUN.syncRegs), 0);
    if (exit.kind === 'IoIn' || exit.kind === 'IoOut')
      mailbox.set(exit.data, exit.data.byteOffset - runBytes.byteOffset);
    Atomics.store(control, ControlWord.mailbox, MailboxState.posted);
    this.ringDoorbell();
    while (Atomics.load(control, ControlWord.mailbox) === MailboxState.posted) {
      if (this.stopRequested) return false;
      Atomics.wait(control, ControlWord.mailbox, MailboxState.posted, 100);
    }
    // Copy the answer back: the exit union (MMIO data, hypercall ret, MSR data/error) and PIO data.
    runBytes.set(mailbox.subarray(RUN.exit, RUN.kvmValidRegs), RUN.exit);
    if (exit.kind === 'IoIn') {
      const off = exit.data.byteOffset - runBytes.byteOffset;
      exit.data.set(mailbox.subarray(off, off + exit.data.length));
    }
    Atomics.store(control, ControlWord.mailbox, MailboxState.empty);
    return true;
  }
  /** Marks the run ended and wakes every main-thread waiter. */
  end(): void {
    Atomics.store(this.control, ControlWord.state, RunState.ended);
    this.ringDoorbell();
    Atomics.notify(this.control, ControlWord.mailbox);
  }
}

/** Where exits come from: `KVM_RUN`, with posted OUTs queued natively and coalesced writes drained. */
class ExitSource {
  /** Posted writes (native fast path to this worker, or the coalesced ring) for the pipeline. */
  batch: VcpuExit[] = [];
  readonly next: () => VcpuExit | undefined;
  #bitmap: Uint8Array | undefined;
  readonly #localControl: Int32Array;
  readonly #localRing: Uint8Array;
  readonly #localView: DataView;

  constructor(backend: IoctlBackend, vcpu: VcpuFd, task: VcpuTask, shared: Shared, outcome: TaskOutcome) {
    const postedPorts = task.posted.filter((p): p is { port: number; to?: number } => 'port' in p);
    if (postedPorts.length > 0 && !task.record) {
      // (a recording sees every exit in JavaScript)
      const bitmap = new Uint8Array(8192);
      for (const p of postedPorts) for (let q = p.port; q <= (p.to ?? p.port); q++) bitmap[q >> 3] |= 1 << (q & 7);
      this.#bitmap = bitmap;
    }
    // With `postedTo: 'worker'`, the fast path fills a ring of this thread's own instead, which
    // the loop drains into the pipeline (in guest order, before the exit that ended the batch).
    const toWorker = task.postedTo === 'worker';
    this.#localControl = new Int32Array(toWorker ? CONTROL_BYTES / 4 : 0);
    this.#localRing = new Uint8Array(toWorker ? RING_RECORDS * RECORD_BYTES : 0);
    this.#localView = new DataView(this.#localRing.buffer);
    const run = vcpu.getKvmRun();
    const runView = run.asMutRef();
    const runBytes = run.bytes;
    const runAddress = run.address;
    const fd = vcpu.asRawFd();
    const layout = runFastLayout();
    const ring = toWorker ? this.#localRing : shared.ringBytes;
    const control = toWorker ? this.#localControl : shared.control;
    const bitmap = this.#bitmap;
    const fromKernel =
      bitmap === undefined
        ? () => vcpu.run()
        : () => {
            const r = backend.runPosted(fd, runAddress, bitmap, ring, control, layout, 256);
            const fast = Math.floor(r / 2);
            if (fast > 0) {
              outcome.exits += fast;
              outcome.lastExit = 'IoOut';
              if (toWorker) {
                this.#drainLocal();
                Atomics.add(shared.control, ControlWord.exitCount, fast);
              } else shared.ringDoorbell();
            }
            return r % 2 === 1 ? decodeExit(runView, runBytes) : undefined;
          };
    // The kernel's coalesced MMIO/PIO ring (zones registered with vm.registerCoalescedMmio): writes
    // it buffered instead of exiting go to the pipeline before the next exit. Chosen once, so the
    // hot loop does not test the option on every exit.
    if (task.coalescedRing) {
      vcpu.mapCoalescedMmioRing();
      this.next = () => {
        const exit = fromKernel();
        for (let e = vcpu.coalescedMmioRead(); e !== undefined; e = vcpu.coalescedMmioRead()) {
          const data = e.data.slice(0, Math.min(e.len, 8));
          this.batch.push(
            e.pio !== 0
              ? { kind: 'IoOut', port: Number(e.physAddr), size: data.length, count: 1, data }
              : { kind: 'MmioWrite', addr: e.physAddr, data },
          );
        }
        return exit;
      };
    } else this.next = fromKernel;
  }

  #drainLocal(): void {
    const control = this.#localControl;
    for (let r = control[ControlWord.ringRead]; r < control[ControlWord.ringWrite]; r++) {
      const exit = postedExit(this.#localView, this.#localRing, (r % RING_RECORDS) * RECORD_BYTES);
      if (exit !== undefined) this.batch.push(exit);
    }
    control[ControlWord.ringRead] = control[ControlWord.ringWrite]!;
  }
}

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
  const shared = new Shared(task.sab);
  const { control } = shared;
  const port = task.port;
  const post = (m: WorkerToMain): void => port.postMessage(m);
  const abort = new AbortController();
  let onStop: () => void = () => undefined;
  const stopped = new Promise<void>((r) => (onStop = r));
  const inputs = new Subject<{ channel: string; data: unknown }>();
  let callTarget: VcpuFd | undefined;
  // Started paused: parked before the first KVM_RUN as if a pause with id 1 had been taken.
  let pauseRequested = task.paused === true;
  let pauseMessages = pauseRequested ? 1 : 0;
  let pauseId = pauseRequested ? 1 : 0;
  /** A Debug exit the vCPU is parked at, to post once it is out of KVM_RUN (debug$). */
  let debugStop: DebugExit | undefined;
  const onMessage = (m: MainToWorker): void => {
    if (m.type === 'stop') onStop();
    else if (m.type === 'pause') {
      pauseRequested = true;
      pauseMessages++;
      pauseId = m.id;
    } else if (m.type === 'resume') pauseRequested = false;
    else if (m.type === 'input') inputs.next({ channel: m.channel, data: m.data });
    else if (m.type === 'call') {
      // A vCPU method called from the main thread (`run.call`), run here between exits.
      try {
        const target = callTarget as unknown as Record<string, (...a: unknown[]) => unknown> | undefined;
        if (
          target === undefined ||
          ['run', 'close', 'constructor'].includes(m.method) ||
          typeof target[m.method] !== 'function'
        ) {
          throw Object.assign(new TypeError(`cannot call '${m.method}' on a running vCPU`), {
            code: 'ERR_INVALID_ARG_VALUE',
          });
        }
        post({ type: 'result', id: m.id, value: target[m.method](...m.args) });
      } catch (e) {
        post({ type: 'result', id: m.id, error: serializeError(e) });
      }
    }
  };
  port.on('message', onMessage);
  // The run loop is synchronous between exits: take queued messages (input, stop, calls) now.
  const drainMessages = (): void => {
    for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
      onMessage(m.message as MainToWorker);
    }
  };

  backend.kickSignal();
  if (task.pinCpu !== undefined) backend.setThreadAffinity(task.pinCpu);
  shared.threadIds[THREAD_ID_SLOT] = backend.threadSelf();
  const outcome: TaskOutcome = { reason: 'stopped', exits: 0 };
  const memories: GuestMemory[] = [];
  let vm: VmFd | undefined;
  let driver: PipelineDriver | undefined;
  try {
    // Stopped (or the VM closed) before this thread got the task: nothing to run.
    if (shared.stopRequested) return outcome;
    vm = VmFd.borrow(backend, task.vmFd, task.runSize);
    const vcpu = vm.borrowVcpu(task.vcpuFd, task.vcpuId);
    callTarget = vcpu;
    const kvmRun = vcpu.getKvmRun();
    const runBytes = kvmRun.bytes;
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
      emit: (channel, data) => post({ type: 'emit', channel, data }),
      signal: abort.signal,
      receive: (channel) =>
        inputs.pipe(
          filter((m) => channel === undefined || m.channel === channel),
          map((m) => m.data),
        ),
    };
    const pipeline = task.pipeline !== undefined ? await loadPipeline(task.pipeline, task.pipelineExport) : undefined;
    const pipe = (driver = new PipelineDriver(pipeline, ctx));
    const source = new ExitSource(backend, vcpu, task, shared, outcome);
    const recorded: RecordedExit[] | undefined = task.record ? [] : undefined;
    if (recorded) outcome.recording = recorded;
    const monitoring = (): boolean => Atomics.load(control, ControlWord.monitorSubscribers) !== 0;

    // Written before the state word: a reader that sees 'running' sees the time too.
    new Float64Array(task.sab, 0, CONTROL_BYTES / 8)[RUNNING_SINCE_SLOT] = performance.timeOrigin + performance.now();
    Atomics.store(control, ControlWord.state, RunState.running);
    shared.ringDoorbell();

    run: for (;;) {
      rethrowLate();
      if (shared.stopRequested) break;
      if (Atomics.load(control, ControlWord.wakeRequested) !== 0) {
        Atomics.store(control, ControlWord.wakeRequested, 0);
        drainMessages();
        pipe.throwIfFailed();
        if (pipe.completed) break;
        continue;
      }
      if (pauseRequested) {
        // KVM finishes an I/O, MMIO or MSR exit's instruction (the IN's register, RIP past it) only
        // when KVM_RUN is entered again: until then the vCPU's state shows it undone, and a state
        // saved now would run it twice. KVM_RUN with immediate_exit completes it and returns EINTR
        // before any further guest instruction (the KVM API's way to make the state consistent).
        if (outcome.exits > 0) {
          kvmRun.immediateExit = 1;
          try {
            vcpu.run();
          } catch (e) {
            if (!(e instanceof KvmError) || (e.code !== 'EINTR' && e.code !== 'EAGAIN')) throw e;
          } finally {
            kvmRun.immediateExit = 0;
          }
        }
        // Paused between two exits: out of KVM_RUN, so the main thread may use the vCPU's ioctls
        // (its mutex is free). Sleep until resumed or stopped; calls and input are taken meanwhile.
        if (debugStop !== undefined) {
          post({ type: 'debug', exit: debugStop });
          debugStop = undefined;
        }
        post({ type: 'paused', id: pauseId });
        let answered = pauseMessages;
        while (pauseRequested && !shared.stopRequested) {
          Atomics.wait(control, ControlWord.wakeRequested, 0, 100);
          Atomics.store(control, ControlWord.wakeRequested, 0);
          drainMessages();
          // A resume and a new pause taken in one drain: still parked, but the new pause waits
          // for its own answer.
          if (pauseMessages !== answered && pauseRequested) {
            answered = pauseMessages;
            post({ type: 'paused', id: pauseId });
          }
        }
        continue;
      }
      let exit: VcpuExit | undefined;
      try {
        exit = source.next();
      } catch (e) {
        if (e instanceof KvmError && e.code === 'EINTR') {
          kvmRun.immediateExit = 0;
          if (shared.stopRequested) break;
          continue; // a stray signal: go back into the guest
        }
        // An AP waiting for its SIPI (in-kernel LAPIC) returns EAGAIN when INIT moves it on.
        if (e instanceof KvmError && e.code === 'EAGAIN' && backend.kind === 'native') {
          if (shared.stopRequested) break;
          continue;
        }
        throw e;
      }
      if (source.batch.length > 0) {
        // Posted writes for this thread's pipeline: delivered in order, holds honoured.
        const posted = source.batch;
        source.batch = [];
        for (const w of posted) {
          const held = pipe.deliver(w);
          if (held !== undefined) await held;
          pipe.throwIfFailed();
          if (pipe.unhandled && task.unhandled === 'error') throw pipe.unhandledError(w, `${describeExit(w)} (posted)`);
          if (pipe.completed) break run;
        }
      }
      if (exit === undefined) continue; // a batch of posted writes, no exit pending
      outcome.exits++;
      outcome.lastExit = exit.kind;
      Atomics.add(control, ControlWord.exitCount, 1);
      if (exit.kind === 'Debug' && Atomics.load(control, ControlWord.debugSubscribers) !== 0) {
        // A debugger on the main thread (debug$) takes Debug exits: park here, as a pause does.
        const { exception, pc, dr6, dr7 } = exit;
        debugStop = { kind: 'Debug', exception, pc, dr6, dr7 };
        pauseRequested = true;
        if (monitoring()) shared.writeRecord(RecordKind.monitor, HandledBy.main, exit);
        continue;
      }
      const held = pipe.deliver(exit);
      if (held !== undefined) {
        let stoppedWhileHeld = false;
        await Promise.race([held, stopped.then(() => (stoppedWhileHeld = true))]);
        if (stoppedWhileHeld) break;
      }
      pipe.throwIfFailed();
      let handledBy: number = HandledBy.worker;
      if (pipe.unhandled) {
        if (task.postedTo !== 'worker' && isPosted(exit, task.posted)) {
          shared.writeRecord(
            exit.kind === 'IoOut' ? RecordKind.postedIo : RecordKind.postedMmio,
            HandledBy.posted,
            exit,
          );
          handledBy = HandledBy.posted;
        } else if (task.unhandled === 'main') {
          if (monitoring()) shared.writeRecord(RecordKind.monitor, HandledBy.main, exit);
          if (!shared.handToMain(exit, runBytes)) break;
          recorded?.push(recordExit(exit));
          if (pipe.completed) break;
          continue;
        } else if (task.unhandled === 'ignore') {
          if (exit.kind === 'IoIn' || exit.kind === 'MmioRead') exit.data.fill(0xff);
          handledBy = HandledBy.unhandled;
        } else {
          throw pipe.unhandledError(exit, describeExit(exit));
        }
      }
      recorded?.push(recordExit(exit));
      // A posted record already tells the monitor about this exit.
      if (handledBy !== HandledBy.posted && monitoring()) shared.writeRecord(RecordKind.monitor, handledBy, exit);
      if (pipe.completed) break;
    }
    outcome.reason = pipe.completed ? 'completed' : 'stopped';
    pipe.close();
    driver = undefined;
    // Let a timer-reported error of this run arrive before the run reports its outcome.
    await new Promise((r) => setTimeout(r, 0));
    rethrowLate();
  } catch (e) {
    outcome.reason = 'error';
    outcome.error = serializeError(e);
  } finally {
    driver?.close();
    if (task.pinCpu !== undefined) backend.setThreadAffinity(-1); // the pooled thread may run other vCPUs next
    rxConfig.onUnhandledError = null;
    abort.abort();
    inputs.complete();
    // Leave immediate_exit at 0 for whoever runs this vCPU next, then release this thread's views.
    try {
      vm?.close();
    } catch {
      /* the views are gone either way */
    }
    for (const m of memories) m.close();
    // The fds are this task's own duplicates (see pool.ts): closed here, and marked first so the
    // pool never closes them again (it does when a crashed thread never got here). A crash between
    // the mark and the close leaks them rather than closing a reused number.
    Atomics.store(control, ControlWord.fdsClosed, 1);
    for (const fd of [task.vcpuFd, task.vmFd]) {
      try {
        backend.close(fd);
      } catch {
        /* already closed */
      }
    }
    post({ type: 'end' }); // after every ctx.emit: the main thread completes events$ on it
    port.close();
    shared.end();
  }
  return outcome;
}
