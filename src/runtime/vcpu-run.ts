/**
 * `VcpuRun`: the main thread's handle on a vCPU that runs in a worker thread, with its exits as
 * Observables and as an async iterator.
 *
 * @module
 */
import { Observable, Subject, share } from 'rxjs';
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { deliverExit } from './hold';
import type { RecordedExit } from './recording';
import type { IoctlBackend } from '../backend/types';
import { VCPU_EXIT_KINDS, decodeExit, type DebugExit, type VcpuExit } from '../wrappers/vcpu-exit';
import type { VcpuFd } from '../wrappers/vcpu-fd';
import { RUN } from '../wrappers/kvm-run';
import { UnhandledExitError, describeExit, reviveError, serializeError } from './errors';
import {
  CONTROL_BYTES,
  ControlWord,
  HANDLED_BY_NAMES,
  MAILBOX_BYTES,
  MAILBOX_OFFSET,
  MailboxState,
  RECORD_BYTES,
  RING_OFFSET,
  RING_RECORDS,
  RecordField,
  RecordKind,
  RunState,
  RUNNING_SINCE_SLOT,
  THREAD_ID_SLOT,
  postedExit,
  type MainToWorker,
  type TaskOutcome,
  type WorkerToMain,
} from './protocol';

/** A summary of one exit, from `monitor$`. */
export interface ExitSummary {
  kind: VcpuExit['kind'];
  /** Where it was handled. */
  where: 'worker' | 'posted' | 'main' | 'unhandled';
  port?: number;
  addr?: bigint;
  size: number;
  /** Up to 40 bytes of PIO/MMIO data (for writes: what the guest wrote). */
  data?: Uint8Array;
}

/** How a run ended: what `run.done` resolves with (and `runInThread`). */
export interface RunOutcome {
  /**
   * Which action ended the run:
   *
   * - `'completed'`: the pipeline completed. In the worker (or `runInThread`): an operator such as
   *   `untilHalt()` or `stopOn()` completed it, or its Observable completed. On the main thread: the
   *   last `exits$` subscriber left while an exit was being delivered (an operator completed the
   *   main-thread pipeline at that exit; the vCPU does not resume).
   * - `'stopped'`: the run was ended from outside its pipeline: `run.stop()`, an aborted `signal`,
   *   leaving a `for await` loop over the run or `run.exits()` (`break`, `return` or a throw, even
   *   right after a `Hlt` exit), `await using`, `runtime.close()`, closing the VM or the vCPU, or the
   *   last `exits$` subscriber unsubscribing between exits.
   *
   * A failed run (a handler's or the pipeline's error, an unhandled exit) rejects `done` instead.
   */
  reason: 'completed' | 'stopped';
  /** Exits the vCPU took. */
  exits: number;
  /** The kind of the last exit. */
  lastExit?: string;
  /** Every exit and its answer, when started with `record: true` (replay it with `replayScript`). */
  recording?: RecordedExit[];
}

/**
 * A running vCPU, as returned by `VcpuRuntime#start()`.
 *
 * - `exits$`: exits the worker hands to this thread: posted writes (the vCPU did not wait) and
 *   exits its pipeline left unhandled (the vCPU waits until every subscriber's handlers settle;
 *   the answer-before-resume rule holds across threads).
 * - `next()` / `for await (const exit of run)`: the same exits, pulled; the vCPU resumes when you
 *   ask for the next one.
 * - `monitor$`: a summary of every exit, wherever it was handled (costs a ring write per exit
 *   while subscribed).
 * - `events$`: values the pipeline sent with `ctx.emit(channel, data)`.
 * - `done`: resolves with the {@link RunOutcome}, or rejects with the pipeline's error.
 *
 * `monitor$` and `events$` are hot, and neither is ordered against `exits$` (see their own docs).
 */
export class VcpuRun implements AsyncDisposable {
  readonly vcpu: VcpuFd;
  readonly done: Promise<RunOutcome>;
  readonly exits$: Observable<VcpuExit>;
  /**
   * A summary of every exit, wherever it was handled, in guest order. Hot: the worker writes
   * summaries only while someone is subscribed, so subscribe right after `start()` to see them
   * all; a later subscriber gets the exits from then on. Not ordered against `exits$`: the
   * summaries travel through the run's ring, which the main thread reads at its own pace, so a
   * summary can arrive after the exit it describes, or a later one, reached `exits$` or `next()`.
   * Completes when the run ends, also when it fails.
   */
  readonly monitor$: Observable<ExitSummary>;
  /**
   * What the pipeline sent with `ctx.emit(channel, data)`, in the order it sent them. Hot: a value
   * emitted before you subscribe is lost, so subscribe right after `start()`. Not ordered against
   * `exits$`: events travel on the run's message port while exits travel through shared memory,
   * so an event the worker pipeline emitted before an exit was handed to this thread can arrive
   * after that exit. Completes when the run ends (after every emitted value), also when it fails.
   */
  readonly events$: Observable<{ channel: string; data: unknown }>;
  /**
   * `Debug` exits (single-step, hardware breakpoints and watchpoints, `KVM_GUESTDBG_*` set with
   * `vcpu.setGuestDebug()`), for a debugger on this thread. While someone is subscribed, the worker
   * does not give `Debug` exits to its pipeline: it parks the vCPU at each one, out of `KVM_RUN`,
   * as {@link pause} does, and the exit is emitted here with {@link paused} already true: read and
   * change the vCPU's state from this thread, then {@link resume}. A `Debug` exit that arrives
   * when the last subscriber has left resumes the vCPU at once (unless a {@link pause} is pending).
   * Without subscribers nothing changes: `Debug` exits go to the pipeline. Hot; completes when the
   * run ends.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const run: VcpuRun;
   * import { constants } from 'kvm-rx';
   * run.debug$.subscribe((exit) => {
   *   console.log(`stepped to 0x${exit.pc.toString(16)}`); // run.paused is true here
   *   run.vcpu.setGuestDebug({ control: 0 });
   *   run.resume();
   * });
   * await run.pause();
   * run.vcpu.setGuestDebug({ control: constants.KVM_GUESTDBG_ENABLE | constants.KVM_GUESTDBG_SINGLESTEP });
   * run.resume();
   * ```
   */
  readonly debug$: Observable<DebugExit>;
  readonly #ctrl: Int32Array;
  readonly #tid: BigInt64Array;
  readonly #ring: DataView;
  readonly #ringBytes: Uint8Array;
  readonly #mbView: DataView;
  readonly #mbBytes: Uint8Array;
  readonly #backend: IoctlBackend;
  readonly #port: MessagePort;
  readonly #exits = new Subject<VcpuExit>();
  readonly #monitor = new Subject<ExitSummary>();
  readonly #events = new Subject<{ channel: string; data: unknown }>();
  readonly #debug = new Subject<DebugExit>();
  #debugObservers = 0;
  #exitObservers = 0;
  #pullQueue: VcpuExit[] = [];
  #pullWaiters: Array<(r: IteratorResult<VcpuExit>) => void> = [];
  #pulling = false;
  #pendingAnswer: (() => void) | undefined;
  #ended = false;
  #failure: Error | undefined;
  #stopping = false;
  /**
   * Set when the run has ended: the SharedArrayBuffer goes back to the runtime's pool for the next
   * run, so this handle must never touch it again (a late stop() or monitor$ unsubscribe would
   * reach another vCPU's run).
   */
  #released = false;
  #finalExits = 0;
  #finalSince: number | undefined;
  readonly #since: Float64Array;
  /** True while an exit is being pushed to `exits$` subscribers. */
  #delivering = false;
  /** The last `exits$` subscriber left during a delivery: the run ends as 'completed'. */
  #completedByMain = false;

  readonly #releaseMemory: () => void;
  /** This thread's kvm_run mapping: the VcpuFd keeps it mapped until the run ends, for kicks. */
  readonly #runAddress: bigint;
  readonly #runView: DataView;
  #endedCallbacks: Array<() => void> = [];
  readonly #unpinRun: () => void;

  /** @internal Created by `VcpuRuntime#start()`. */
  constructor(
    vcpu: VcpuFd,
    sab: SharedArrayBuffer,
    port: MessagePort,
    task: Promise<TaskOutcome>,
    signal?: AbortSignal,
    releaseMemory: () => void = () => undefined,
    startPaused = false,
  ) {
    this.vcpu = vcpu;
    if (startPaused) {
      // The worker parks before its first KVM_RUN and answers as to a pause with id 1.
      this.#pauseId = 1;
      this.#pausing.push({ resolve: () => undefined, reject: () => undefined });
    }
    this.#releaseMemory = releaseMemory;
    const run = vcpu.getKvmRun();
    // The kick writes immediate_exit through this mapping: it stays mapped until the run ends,
    // even if the KvmRunWrapper (or the vCPU) is closed meanwhile.
    this.#unpinRun = run.pin();
    this.#runAddress = run.address;
    this.#runView = run.asMutRef();
    vcpu.attachRun(this);
    this.#backend = vcpu.backend;
    this.#port = port;
    this.#ctrl = new Int32Array(sab, 0, CONTROL_BYTES / 4);
    this.#since = new Float64Array(sab, 0, CONTROL_BYTES / 8);
    this.#tid = new BigInt64Array(sab, 0, CONTROL_BYTES / 8);
    this.#ring = new DataView(sab, RING_OFFSET, RING_RECORDS * RECORD_BYTES);
    this.#ringBytes = new Uint8Array(sab, RING_OFFSET, RING_RECORDS * RECORD_BYTES);
    this.#mbView = new DataView(sab, MAILBOX_OFFSET, MAILBOX_BYTES);
    this.#mbBytes = new Uint8Array(sab, MAILBOX_OFFSET, MAILBOX_BYTES);
    let portEnded: () => void = () => undefined;
    const portDone = new Promise<void>((resolve) => (portEnded = resolve));
    this.#portEnded = () => portEnded();
    port.on('message', (m: WorkerToMain) => this.#onMessage(m));
    port.on('close', () => portEnded()); // a crashed worker never says 'end'
    // The port stays referenced until #finish closes it: it keeps the process alive until `done`
    // settles. Piscina's own port is unreferenced as soon as the task's result arrives, and what
    // `done` still waits on then (Atomics.waitAsync, the worker's 'end' message) keeps nothing
    // alive: `await run.stop()` at the end of a script let the process exit 0 before it resolved
    // (caught by spec/kvm/runtime-leaks.kvm.spec.ts, about 1 run in 5).
    this.exits$ = new Observable<VcpuExit>((sub) => {
      this.#exitObservers++;
      const s = this.#exits.subscribe(sub);
      return () => {
        this.#exitObservers--;
        s.unsubscribe();
        // The last main-thread pipeline left (an operator such as untilHalt() completed it, or it
        // was unsubscribed): the run ends, as it does when a worker pipeline completes. Leaving
        // while an exit is delivered means the pipeline completed at that exit: 'completed', and
        // the vCPU does not resume; otherwise 'stopped'.
        if (this.#exitObservers === 0 && !this.#ended && !this.#stopping) {
          if (this.#delivering) this.#completedByMain = true;
          void this.stop();
        }
      };
    });
    this.monitor$ = new Observable<ExitSummary>((sub) => {
      if (this.#released) {
        sub.complete();
        return undefined;
      }
      Atomics.add(this.#ctrl, ControlWord.monitorSubscribers, 1);
      const s = this.#monitor.subscribe(sub);
      return () => {
        if (!this.#released) Atomics.sub(this.#ctrl, ControlWord.monitorSubscribers, 1);
        s.unsubscribe();
      };
    }).pipe(share());
    this.events$ = this.#events.asObservable();
    this.debug$ = new Observable<DebugExit>((sub) => {
      if (this.#released) {
        sub.complete();
        return undefined;
      }
      this.#debugObservers++;
      Atomics.add(this.#ctrl, ControlWord.debugSubscribers, 1);
      const s = this.#debug.subscribe(sub);
      return () => {
        this.#debugObservers--;
        if (!this.#released) Atomics.sub(this.#ctrl, ControlWord.debugSubscribers, 1);
        s.unsubscribe();
      };
    });
    const onAbort = () => void this.stop();
    if (signal?.aborted) queueMicrotask(onAbort);
    signal?.addEventListener('abort', onAbort, { once: true });
    // Start bridging on the next macrotask, so whatever the caller subscribes synchronously after
    // start() (exits$, next(), for await) is in place before the first exit is delivered.
    const bridge = new Promise<void>((resolve, reject) =>
      setImmediate(() => void this.#bridge().then(resolve, reject)),
    );
    // If the worker dies without marking the run ended (a crashed thread), end the bridge anyway.
    const wake = () => {
      Atomics.store(this.#ctrl, ControlWord.state, RunState.ended);
      Atomics.add(this.#ctrl, ControlWord.doorbell, 1);
      Atomics.notify(this.#ctrl, ControlWord.doorbell);
    };
    task.then(wake, wake);
    // Every ctx.emit was sent before the worker's 'end' message: wait for it (bounded, in case the
    // thread died) so events$ has them all before it completes.
    const emitsDone = task.then(
      () => Promise.race([portDone, new Promise<void>((r) => setTimeout(r, 1000).unref())]),
      () => undefined,
    );
    this.done = Promise.all([task, bridge, emitsDone]).then(
      ([outcome]) => this.#finish(outcome, signal, onAbort),
      (e: unknown) => this.#finish({ reason: 'error', exits: 0, error: serializeError(e) }, signal, onAbort),
    );
  }

  #portEnded: () => void = () => undefined;

  #calls = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();
  #nextCall = 1;
  /** Waiting for the worker's `paused`. */
  #pausing: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  #paused = false;
  #pauseId = 0;

  #onMessage(m: WorkerToMain): void {
    if (m.type === 'emit') this.#events.next({ channel: m.channel, data: m.data });
    else if (m.type === 'debug') {
      if (this.#ended) return;
      // Parked at a Debug exit, out of KVM_RUN: paused, as after pause().
      this.#paused = true;
      this.vcpu.setOwner(undefined);
      if (this.#debugObservers > 0) this.#debug.next(m.exit);
      else if (this.#pausing.length === 0) this.resume(); // the debugger left meanwhile
    } else if (m.type === 'end') this.#portEnded();
    else if (m.type === 'paused') {
      // Resumed before the worker parked (it wakes at once), or the answer to an earlier pause.
      if (this.#pausing.length === 0 || m.id !== this.#pauseId) return;
      this.#paused = true;
      // The worker sleeps out of KVM_RUN: this thread's ioctls on the vCPU cannot block now.
      this.vcpu.setOwner(undefined);
      for (const p of this.#pausing.splice(0)) p.resolve();
    } else if (m.type === 'result') {
      const c = this.#calls.get(m.id);
      if (c === undefined) return;
      this.#calls.delete(m.id);
      if (m.error !== undefined) c.reject(reviveError(m.error));
      else c.resolve(m.value);
    }
  }

  #post(m: MainToWorker): void {
    this.#port.postMessage(m);
  }

  /**
   * Calls a method of the running vCPU on its own thread, between two exits (the vCPU is kicked out
   * of the guest so the call runs at once), e.g. `await run.call('getRegs')`. Arguments and the
   * result are structured-cloned. Rejects with `ERR_KVM_CLOSED` if the run ends first.
   *
   * @example `const { rip } = await run.call('getRegs');`
   */
  call<K extends keyof VcpuFd>(
    method: K,
    ...args: VcpuFd[K] extends (...a: infer P) => unknown ? P : never
  ): Promise<VcpuFd[K] extends (...a: never[]) => infer R ? R : never> {
    if (this.#ended) return Promise.reject(Object.assign(new Error('the run has ended'), { code: 'ERR_KVM_CLOSED' }));
    const id = this.#nextCall++;
    const p = new Promise<unknown>((resolve, reject) => this.#calls.set(id, { resolve, reject }));
    this.#post({ type: 'call', id, method: String(method), args });
    this.#wake();
    return p as Promise<never>;
  }

  /**
   * Pauses the vCPU between two exits: it is kicked out of the guest, any exit being handled is
   * answered first, and its thread then sleeps out of `KVM_RUN` until {@link resume}. While
   * paused, the vCPU's ioctls work from this thread (`vcpu.getRegs()`, `saveVcpuState(kvm, vcpu)`,
   * `vcpu.setRegs(…)`); calls to it through {@link call} still run on its own thread. Resolves
   * once it is paused; idempotent.
   *
   * @example
   * ```ts
   * await run.pause();
   * const { rip } = run.vcpu.getRegs(); // direct: the vCPU is not in KVM_RUN
   * run.resume();
   * ```
   * @throws (rejects) `ERR_KVM_CLOSED` when the run has ended or ends first
   */
  pause(): Promise<void> {
    if (this.#ended) return Promise.reject(Object.assign(new Error('the run has ended'), { code: 'ERR_KVM_CLOSED' }));
    if (this.#paused) return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.#pausing.push({ resolve, reject }));
    if (this.#pausing.length === 1) {
      this.#post({ type: 'pause', id: ++this.#pauseId });
      this.#wake();
    }
    return p;
  }

  /** Whether the vCPU is paused ({@link pause}). */
  get paused(): boolean {
    return this.#paused;
  }

  /**
   * Lets a paused vCPU run again (it goes back into the guest where it stopped). A no-op when it
   * is not paused.
   *
   * @example `run.resume();`
   */
  resume(): void {
    if (this.#ended) return;
    for (const p of this.#pausing.splice(0))
      p.reject(Object.assign(new Error('resumed before the pause completed'), { code: 'ERR_KVM_RESUMED' }));
    const wasPaused = this.#paused;
    this.#paused = false;
    if (wasPaused) this.vcpu.setOwner('a VcpuRuntime worker thread');
    this.#post({ type: 'resume' });
    Atomics.store(this.#ctrl, ControlWord.wakeRequested, 1);
    Atomics.notify(this.#ctrl, ControlWord.wakeRequested);
  }

  #wake(): void {
    Atomics.store(this.#ctrl, ControlWord.wakeRequested, 1);
    Atomics.notify(this.#ctrl, ControlWord.wakeRequested); // a paused worker sleeps on it
    const thread = this.#tid[THREAD_ID_SLOT];
    if (thread !== 0n && Atomics.load(this.#ctrl, ControlWord.state) === RunState.running)
      this.#backend.kick(thread, this.#runAddress);
  }

  #finish(outcome: TaskOutcome, signal: AbortSignal | undefined, onAbort: () => void): RunOutcome {
    signal?.removeEventListener('abort', onAbort);
    // The task's result can arrive before the pipeline's last ctx.emit() messages are dispatched
    // (they travel on another port): take them off the port before closing it.
    for (let m = receiveMessageOnPort(this.#port); m !== undefined; m = receiveMessageOnPort(this.#port)) {
      this.#onMessage(m.message as WorkerToMain);
    }
    this.#ended = true;
    this.#paused = false;
    for (const p of this.#pausing.splice(0))
      p.reject(Object.assign(new Error('the run ended before it paused'), { code: 'ERR_KVM_CLOSED' }));
    this.#runView.setUint8(RUN.immediateExit, 0);
    this.#finalExits = Atomics.load(this.#ctrl, ControlWord.exitCount);
    this.#finalSince = this.runningSince;
    this.#released = true;
    this.#unpinRun();
    this.vcpu.setOwner(undefined);
    this.vcpu.attachRun(undefined);
    this.#releaseMemory();
    for (const fn of this.#endedCallbacks.splice(0)) fn();
    for (const c of this.#calls.values())
      c.reject(Object.assign(new Error('the run ended before the call ran'), { code: 'ERR_KVM_CLOSED' }));
    this.#calls.clear();
    this.#port.close();
    const error = this.#failure ?? (outcome.error ? reviveError(outcome.error) : undefined);
    for (const w of this.#pullWaiters.splice(0)) w({ value: undefined, done: true });
    if (error) {
      this.#exits.error(error);
      this.#monitor.complete();
      this.#events.complete();
      this.#debug.complete();
      throw error;
    }
    this.#exits.complete();
    this.#monitor.complete();
    this.#events.complete();
    this.#debug.complete();
    const r: RunOutcome = {
      reason: outcome.reason === 'completed' || this.#completedByMain ? 'completed' : 'stopped',
      exits: outcome.exits,
    };
    if (outcome.lastExit !== undefined) r.lastExit = outcome.lastExit;
    if (outcome.recording !== undefined) r.recording = outcome.recording;
    return r;
  }

  /** Whether the worker has started running the vCPU and not ended. */
  get running(): boolean {
    return !this.#released && Atomics.load(this.#ctrl, ControlWord.state) === RunState.running;
  }

  /**
   * When the worker started running the vCPU (right before its first `KVM_RUN`), as
   * `performance.timeOrigin + performance.now()` in milliseconds (the same clock in every
   * thread); `undefined` before. It does not depend on when this thread looks, so it times a
   * start or a restore even while this thread is busy.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const run: VcpuRun; declare const t0: number; // performance.now() before
   * const startMs = run.runningSince! - performance.timeOrigin - t0;
   * ```
   */
  get runningSince(): number | undefined {
    if (this.#released) return this.#finalSince;
    if (Atomics.load(this.#ctrl, ControlWord.state) === RunState.starting) return undefined;
    const t = this.#since[RUNNING_SINCE_SLOT];
    return t === 0 ? undefined : t;
  }

  /** Exits taken so far (counted by the worker). */
  get exitCount(): number {
    return this.#released ? this.#finalExits : Atomics.load(this.#ctrl, ControlWord.exitCount);
  }

  async #bridge(): Promise<void> {
    for (;;) {
      const seen = Atomics.load(this.#ctrl, ControlWord.doorbell);
      this.#drainRing();
      if (Atomics.load(this.#ctrl, ControlWord.mailbox) === MailboxState.posted && this.#pendingAnswer === undefined) {
        const held = this.#handleMailbox();
        if (held !== undefined) await held;
      }
      if (Atomics.load(this.#ctrl, ControlWord.state) === RunState.ended) {
        this.#drainRing();
        return;
      }
      const r = Atomics.waitAsync(this.#ctrl, ControlWord.doorbell, seen);
      if (r.async) await r.value;
    }
  }

  #drainRing(): void {
    let r = Atomics.load(this.#ctrl, ControlWord.ringRead);
    const w = Atomics.load(this.#ctrl, ControlWord.ringWrite);
    if (r === w) return;
    while (r < w) {
      const at = (r % RING_RECORDS) * RECORD_BYTES;
      const kind = this.#ring.getUint8(at + RecordField.kind);
      const posted = postedExit(this.#ring, this.#ringBytes, at);
      if (posted !== undefined) this.#deliverPosted(posted);
      if (
        Atomics.load(this.#ctrl, ControlWord.monitorSubscribers) !== 0 &&
        (posted !== undefined || kind === RecordKind.monitor)
      ) {
        const data =
          posted?.data ??
          this.#ringBytes.slice(
            at + RecordField.data,
            at + RecordField.data + this.#ring.getUint8(at + RecordField.dataLength),
          );
        this.#monitor.next(this.#record(at, data, kind));
      }
      r++;
      Atomics.store(this.#ctrl, ControlWord.ringRead, r);
    }
    Atomics.notify(this.#ctrl, ControlWord.ringRead);
  }

  #record(at: number, data: Uint8Array, kind: number): ExitSummary {
    const kindIndex = this.#ring.getUint32(at + RecordField.exitKind, true);
    const rec: ExitSummary = {
      kind: VCPU_EXIT_KINDS[kindIndex] ?? 'Unsupported',
      where:
        kind === RecordKind.monitor
          ? (HANDLED_BY_NAMES[this.#ring.getUint8(at + RecordField.handledBy)] ?? 'worker')
          : 'posted',
      size: this.#ring.getUint8(at + RecordField.size),
    };
    if (rec.kind === 'IoIn' || rec.kind === 'IoOut') rec.port = this.#ring.getUint16(at + RecordField.port, true);
    if (rec.kind === 'MmioRead' || rec.kind === 'MmioWrite')
      rec.addr = this.#ring.getBigUint64(at + RecordField.address, true);
    if (data.length > 0) rec.data = data;
    return rec;
  }

  #deliverPosted(exit: VcpuExit): void {
    // Writes the guest made after the last exits$ subscriber left and the run was told to stop.
    if (this.#stopping && this.#exitObservers === 0 && !this.#pulling) return;
    if (this.#pulling) {
      this.#pushPull(exit);
      return;
    }
    if (this.#exitObservers > 0) {
      this.#delivering = true;
      try {
        this.#exits.next(exit);
      } finally {
        this.#delivering = false;
      }
      return;
    }
    this.#fail(new UnhandledExitError(exit, `posted ${describeExit(exit)} (nobody subscribed to exits$)`));
  }

  #pushPull(exit: VcpuExit): void {
    const w = this.#pullWaiters.shift();
    if (w) w({ value: exit, done: false });
    else this.#pullQueue.push(exit);
  }

  /** Handles the exit in the mailbox; returns a promise only when a handler holds the vCPU. */
  #handleMailbox(): Promise<void> | undefined {
    const exit = decodeExit(this.#mbView, this.#mbBytes);
    // The vCPU is stopped at this exit and its thread sleeps until the answer: register access
    // from this thread cannot block, so it is allowed until the answer is sent.
    this.vcpu.setOwner(undefined);
    const answer = () => {
      this.vcpu.setOwner('a VcpuRuntime worker thread');
      this.#pendingAnswer = undefined;
      Atomics.store(this.#ctrl, ControlWord.mailbox, MailboxState.answered);
      Atomics.notify(this.#ctrl, ControlWord.mailbox);
    };
    if (this.#pulling) {
      // Pull mode: the vCPU resumes when the consumer asks for the next exit.
      this.#pendingAnswer = answer;
      this.#pushPull(exit);
      return undefined;
    }
    if (this.#exitObservers > 0) {
      const holds: Array<PromiseLike<unknown>> = [];
      this.#delivering = true;
      try {
        deliverExit(exit, holds, this.#deliver);
      } catch (e) {
        this.#fail(e as Error);
        return undefined;
      } finally {
        this.#delivering = false;
      }
      if (holds.length === 0) {
        answer();
        return undefined;
      }
      return Promise.all(holds).then(answer, (e: unknown) => this.#fail(e as Error));
    }
    // The last subscriber left and the run is ending, or a stop was requested (a kick: the VM or
    // vCPU was closed) that the worker had not seen before this exit: a stop wins over an exit
    // nobody is there to take. The worker sees the flag within its wait and ends as 'stopped'.
    if (this.#stopping || Atomics.load(this.#ctrl, ControlWord.stopRequested) !== 0) return undefined;
    this.#fail(
      new UnhandledExitError(
        exit,
        `${describeExit(exit)} (not handled by the worker pipeline, and nobody on the main thread handles exits)`,
      ),
    );
    return undefined;
  }

  readonly #deliver = (exit: VcpuExit): void => this.#exits.next(exit);

  #fail(e: Error): void {
    this.#failure ??= e;
    void this.stop();
  }

  /**
   * The next exit handed to this thread (pull mode). The previous one is answered, and the vCPU
   * resumes, when you call `next()` again. Resolves `{ done: true }` when the run ends.
   */
  next(): Promise<IteratorResult<VcpuExit>> {
    this.#pulling = true;
    if (this.#pendingAnswer) this.#pendingAnswer();
    const queued = this.#pullQueue.shift();
    if (queued) return Promise.resolve({ value: queued, done: false });
    if (this.#ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.#pullWaiters.push(resolve));
  }

  /**
   * The exits handed to this thread as an async iterable (pull mode), for
   * `for await (const exit of run.exits()) { … }`. Leaving the loop (`break`, `return`, a throw)
   * stops the run: `done` resolves with `reason: 'stopped'`, even when you leave at a `Hlt`. When
   * the run ends otherwise, the loop ends by itself and `done` has that end's reason.
   */
  exits(): AsyncIterable<VcpuExit> {
    return { [Symbol.asyncIterator]: () => this[Symbol.asyncIterator]() };
  }

  /**
   * `for await (const exit of run) { … }`: pull mode. Leaving the loop (`break`, `return`, a throw)
   * stops the run: `done` resolves with `reason: 'stopped'`, even when you leave at a `Hlt`
   * (`'completed'` comes only from a pipeline that completes).
   */
  [Symbol.asyncIterator](): AsyncIterator<VcpuExit> {
    return {
      next: () => this.next(),
      return: async () => {
        await this.stop();
        return { value: undefined, done: true };
      },
    };
  }

  /**
   * Stops the vCPU: sets the stop flag, kicks the thread out of KVM_RUN (immediate_exit + signal),
   * and waits for the worker to release it. Resolves with the outcome (never rejects; the
   * outcome's error, if any, stays on `done`).
   */
  async stop(): Promise<RunOutcome | undefined> {
    if (!this.#stopping && !this.#released) {
      this.#stopping = true;
      Atomics.store(this.#ctrl, ControlWord.stopRequested, 1);
      Atomics.notify(this.#ctrl, ControlWord.mailbox);
      Atomics.notify(this.#ctrl, ControlWord.ringRead);
      try {
        this.#post({ type: 'stop' });
      } catch {
        /* the port is closed: the worker already ended */
      }
      this.kick();
      if (this.#pendingAnswer) this.#pendingAnswer();
    }
    return this.done.catch(() => undefined);
  }

  /**
   * Sends a value to the pipeline in the vCPU's worker (`ctx.receive(channel)`), e.g. console input
   * for a UART model. The vCPU is kicked out of the guest so the worker can take it at once, even if
   * the guest sleeps in `hlt` inside the kernel. The value is structured-cloned.
   *
   * @example `process.stdin.on('data', (b) => run.send('stdin', b));`
   */
  send(channel: string, data: unknown): void {
    if (this.#ended) return;
    this.#post({ type: 'input', channel, data });
    this.#wake();
  }

  /** @internal Runs `fn` once the run has ended (at once if it has). */
  whenEnded(fn: () => void): void {
    if (this.#ended) fn();
    else this.#endedCallbacks.push(fn);
  }

  /**
   * @internal Synchronous kick (also used at process exit and when the vCPU is closed): stop flag,
   * then immediate_exit + signal to the worker's thread, so KVM_RUN returns EINTR whether the guest
   * is running or about to enter.
   */
  kick(): void {
    if (this.#ended || this.#released) return;
    Atomics.store(this.#ctrl, ControlWord.stopRequested, 1);
    const thread = this.#tid[THREAD_ID_SLOT];
    if (thread !== 0n && Atomics.load(this.#ctrl, ControlWord.state) === RunState.running)
      this.#backend.kick(thread, this.#runAddress);
    else this.#runView.setUint8(RUN.immediateExit, 1);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
