/**
 * Running a vCPU on the calling thread: the synchronous `vcpuExits()` Observable and the
 * `runInThread()` runner. They work on either backend; with the mock they are how pipelines are
 * tested without threads (marble tests included).
 *
 * @module
 */
import { EMPTY, Observable, asapScheduler, filter, map } from 'rxjs';
import type { VcpuExit } from '../wrappers/vcpu-exit';
import { VcpuFd } from '../wrappers/vcpu-fd';
import { KvmError } from '../abi/errors';
import { checkObject, invalidType } from '../abi/validate';
import { describeExit } from './errors';
import { PipelineDriver, type VcpuContext, type VcpuPipeline } from './pipeline';
import { recordExit } from './recording';
import type { RunOutcome } from './vcpu-run';

/**
 * `vcpu.run()`, going back into the guest when a signal meant for the process (SIGCHLD, SIGWINCH,
 * a profiler's SIGPROF…) interrupted KVM_RUN on the real kernel: the kernel returns EINTR without an
 * exit, and `immediate_exit` is still 0. EINTR with `immediate_exit` set (a kick) is thrown, as is
 * every EINTR of the mock, which uses it on purpose (`runError('EINTR')`, an exhausted script).
 */
function runPastStraySignals(vcpu: VcpuFd): VcpuExit {
  for (;;) {
    try {
      return vcpu.run();
    } catch (e) {
      // An AP waiting for its SIPI (in-kernel LAPIC) returns EAGAIN when INIT moves it on: run again.
      if (e instanceof KvmError && e.code === 'EAGAIN' && vcpu.backend.kind === 'native' && !vcpu.closed) continue;
      if (
        !(e instanceof KvmError && e.code === 'EINTR') ||
        vcpu.backend.kind !== 'native' ||
        vcpu.closed ||
        vcpu.getKvmRun().immediateExit !== 0
      )
        throw e;
    }
  }
}

/**
 * A cold Observable of a vCPU's exits, run on the subscribing thread: each subscription calls
 * `vcpu.run()` in a loop (starting on the `asapScheduler`, right after `subscribe()` returns) and
 * emits every exit, until it unsubscribes (e.g. through `untilHalt()` or `takeWhile`) or `run()`
 * throws. Answers written into an exit during `next()` reach the
 * guest on the following `run()`. Async holds are not possible here (use {@link runInThread}).
 * A signal that interrupts KVM_RUN on the real kernel sends the vCPU back into the guest; a kick
 * (`immediate_exit` = 1) errors the Observable with EINTR.
 *
 * @example
 * ```ts
 * import { takeWhile } from 'rxjs';
 * vcpuExits(vcpu).pipe(onIoIn(0x3f8, () => 0x42), takeWhile((e) => e.kind !== 'Hlt')).subscribe();
 * ```
 */
export function vcpuExits(vcpu: VcpuFd): Observable<VcpuExit> {
  if (!(vcpu instanceof VcpuFd)) invalidType('vcpu', 'a VcpuFd', vcpu);
  return new Observable<VcpuExit>((subscriber) =>
    // The loop starts once subscribe() has returned, so operators downstream have their teardown
    // in place: one that completes or errors (stopOn, failOnUnhandled) closes this subscriber and
    // the vCPU is not run again. `asapScheduler` is virtualised by TestScheduler.run (frame 0).
    asapScheduler.schedule(() => {
      while (!subscriber.closed) {
        let exit: VcpuExit;
        try {
          exit = runPastStraySignals(vcpu);
        } catch (e) {
          subscriber.error(e);
          break;
        }
        subscriber.next(exit);
      }
    }),
  );
}

/** Options of {@link runInThread}. */
export interface InThreadOptions {
  /** Given to the pipeline as `ctx.options`. */
  options?: unknown;
  /** What to do with exits the pipeline leaves: `'error'` (default) or `'ignore'` (reads get all-ones). */
  unhandled?: 'error' | 'ignore';
  /** Stops the run (checked between exits). */
  signal?: AbortSignal;
  /** Receives `ctx.emit(channel, data)`. */
  onEmit?: (channel: string, data: unknown) => void;
  /** Records every exit and its answer into `outcome.recording`. */
  record?: boolean;
  /** What `ctx.receive(channel)` delivers (the worker runtime's `run.send`). */
  input?: Observable<{ channel: string; data: unknown }>;
}

/**
 * Runs `vcpu` through `pipeline` on this thread, with the same rules as the worker runtime: the
 * vCPU resumes only after every handler (sync or held) has finished; an exit nobody handles is an
 * error naming it. Resolves when the pipeline completes or `signal` aborts. A signal that
 * interrupts KVM_RUN on the real kernel (this thread handles SIGCHLD, SIGWINCH…) sends the vCPU
 * back into the guest; a kick (`immediate_exit` = 1) rejects with EINTR.
 *
 * @example
 * ```ts
 * const backend = new MockBackend();
 * backend.vcpu(0).script([ioIn(0x3f8), hlt()]);
 * const outcome = await runInThread(vcpu, (exits$) => exits$.pipe(onIoIn(0x3f8, () => 0x42), untilHalt()));
 * ```
 */
export async function runInThread(
  vcpu: VcpuFd,
  pipeline: VcpuPipeline,
  opts: InThreadOptions = {},
): Promise<RunOutcome> {
  if (!(vcpu instanceof VcpuFd)) invalidType('vcpu', 'a VcpuFd', vcpu);
  if (typeof pipeline !== 'function') invalidType('pipeline', 'a function', pipeline);
  checkObject('opts', opts);
  const abort = new AbortController();
  const ctx: VcpuContext = {
    vcpuId: vcpu.id,
    vcpu,
    vm: vcpu.vm,
    memory: vcpu.vm.guestMemory,
    options: opts.options,
    emit: (channel, data) => opts.onEmit?.(channel, data),
    signal: abort.signal,
    receive: (channel) =>
      (opts.input ?? EMPTY).pipe(
        filter((m) => channel === undefined || m.channel === channel),
        map((m) => m.data),
      ),
  };
  const driver = new PipelineDriver(pipeline, ctx);
  const outcome: RunOutcome = { reason: 'stopped', exits: 0 };
  if (opts.record) outcome.recording = [];
  try {
    while (!driver.completed && !opts.signal?.aborted) {
      driver.throwIfFailed();
      const exit = runPastStraySignals(vcpu);
      outcome.exits++;
      outcome.lastExit = exit.kind;
      const held = driver.deliver(exit);
      if (held !== undefined) await held;
      driver.throwIfFailed();
      if (driver.unhandled) {
        if (opts.unhandled === 'ignore') {
          if (exit.kind === 'IoIn' || exit.kind === 'MmioRead') exit.data.fill(0xff);
        } else {
          throw driver.unhandledError(exit, describeExit(exit));
        }
      }
      outcome.recording?.push(recordExit(exit));
    }
    if (driver.completed) outcome.reason = 'completed';
    return outcome;
  } finally {
    abort.abort();
    driver.close();
  }
}
