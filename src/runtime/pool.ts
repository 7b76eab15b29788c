/**
 * `VcpuRuntime`: runs vCPUs on a piscina pool, one long-lived task (and so one thread) per vCPU.
 *
 * @module
 */
import { Piscina } from 'piscina';
import { MessageChannel } from 'node:worker_threads';
import { extname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { availableParallelism } from 'node:os';
import { checkInt, checkObject, checkString, invalidType, invalidValue } from '../abi/validate';
import { VcpuRun } from './vcpu-run';
import { VcpuFd } from '../wrappers/vcpu-fd';
import { CONTROL_BYTES, ControlWord, SAB_BYTES, type PostedRange, type TaskOutcome, type VcpuTask } from './protocol';
import { checkPipelineModule } from './pipeline';

/** Options of {@link VcpuRuntime}. */
export interface VcpuRuntimeOptions {
  /** Threads, i.e. the most vCPUs that can run at once (default: the CPU count, at least 1). */
  maxVcpus?: number;
  /**
   * Node options for the vCPU threads. Default: the worker threads inherit this process's
   * (`node --import tsx app.ts` gives the pipeline module the same loader). A TypeScript pipeline
   * module is run through tsx or ts-node, when one is installed, without any option.
   */
  execArgv?: string[];
}

/** Options of {@link VcpuRuntime.start}. */
export interface StartOptions {
  /**
   * A module whose export is the pipeline `(exits$, ctx) => Observable` ({@link VcpuPipeline}):
   * `module.exports = fn`, `export default fn` (ES module, or TypeScript compiled to CommonJS), or
   * the named export `pipelineExport`. Give an absolute path (`require.resolve('./pipeline')`) or a
   * file URL (`new URL('./pipeline.js', import.meta.url)`); a relative path resolves against
   * `process.cwd()`. It is loaded inside the vCPU's worker thread, so exits it handles never cross
   * threads. A `.ts` module needs tsx or ts-node installed. Omit it to handle every exit on the
   * main thread.
   */
  pipeline?: string | URL;
  /** The named export to use instead of the default one. */
  pipelineExport?: string;
  /** Passed to the pipeline as `ctx.options` (structured-cloned). */
  pipelineOptions?: unknown;
  /**
   * Port or MMIO ranges whose writes (IoOut/MmioWrite) need no answer: when the worker pipeline
   * does not handle them, the vCPU resumes at once and they reach `exits$` in order, in batches.
   */
  posted?: PostedRange[];
  /**
   * Where posted writes go: `'main'` (default: `exits$` / `next()` on the main thread) or
   * `'worker'` (the worker pipeline, in batches: the native fast path queues OUTs to posted ports
   * and the pipeline sees them, in guest order, before the exit that ended the batch).
   */
  postedTo?: 'main' | 'worker';
  /**
   * Map the kernel's coalesced MMIO/PIO ring in the worker and hand the writes it buffered (for
   * zones registered with `vm.registerCoalescedMmio`) to the worker pipeline, in order, before
   * each exit. The ring is per VM: enable it on one vCPU's run only.
   */
  coalescedRing?: boolean;
  /**
   * Exits the worker pipeline does not handle: `'main'` hands them to `exits$` / `next()` on the
   * main thread (the vCPU waits for the answer), `'error'` ends the run with
   * `ERR_KVM_UNHANDLED_EXIT` (naming the exit, its port/address and RIP), `'ignore'` drops them
   * (reads get all-ones). Default: `'main'` without a pipeline, `'error'` with one.
   */
  unhandled?: 'main' | 'error' | 'ignore';
  /** Stops the run when aborted. */
  signal?: AbortSignal;
  /**
   * Records every exit and the answer it got into `outcome.recording` (replay it on the mock
   * with `replayScript` from `kvm-rx/testing`). Posted ports then take the JavaScript path.
   */
  record?: boolean;
  /**
   * Pins the vCPU's worker thread to this CPU while it runs (for benchmarks: see
   * docs/performance.md). Default: no pinning.
   */
  pinCpu?: number;
  /**
   * Start paused: the worker parks before the vCPU's first instruction, as after `run.pause()`
   * (`run.paused` turns true once it has; the vCPU's ioctls then work from this thread), until
   * `run.resume()`. For a debugger that must see the first instruction. Default `false`.
   */
  paused?: boolean;
}

function workerFile(): { filename: string; execArgv: string[] | undefined } {
  const ext = extname(__filename);
  const filename = join(__dirname, `worker${ext}`);
  // From kvm-rx's own TypeScript sources (its specs, ts-node), the worker needs a loader for them.
  // Otherwise `undefined`: Node gives the threads this process's own options.
  return { filename, execArgv: ext === '.ts' ? ['-r', 'ts-node/register/transpile-only'] : undefined };
}

/**
 * The absolute path of a module given as a path (relative to the working directory) or a file URL,
 * for loading it in a vCPU's thread.
 *
 * @throws `TypeError` (`ERR_INVALID_ARG_VALUE`) for anything else
 * @internal
 */
export function modulePath(name: string, p: unknown): string {
  if (p instanceof URL) return fileURLToPath(p);
  if (typeof p === 'string' && p.length > 0) return isAbsolute(p) ? p : resolve(p);
  return invalidValue(name, 'must be a path or a file URL', p);
}

/**
 * A pool of vCPU threads. `start()` runs a vCPU on its own thread until its pipeline completes,
 * it fails, or it is stopped; `close()` stops every vCPU and ends the threads. Process exit kicks
 * every running vCPU, so a guest spinning in `jmp $` never keeps the process alive.
 *
 * @example
 * ```ts
 * const runtime = new VcpuRuntime({ maxVcpus: 2 });
 * const run = runtime.start(vcpu, { pipeline: require.resolve('./devices'), signal: AbortSignal.timeout(5000) });
 * const stats = new Map<string, number>();
 * run.monitor$.subscribe((e) => stats.set(e.kind, (stats.get(e.kind) ?? 0) + 1));
 * const outcome = await run.done;          // { reason: 'completed', exits: 42, lastExit: 'Hlt' }
 * await runtime.close();
 * ```
 */
export class VcpuRuntime implements AsyncDisposable {
  readonly maxVcpus: number;
  readonly #pool: Piscina;
  readonly #runs = new Set<VcpuRun>();
  /**
   * SharedArrayBuffers of ended runs, reused by the next ones. A fresh one per run would be freed
   * only when the worker thread's isolate collects its garbage, which a vCPU thread seldom does:
   * 74 KB per run piled up (measured: +147 KB per cycle of 2 runs, linear over 4,000 cycles).
   */
  readonly #freeSabs: SharedArrayBuffer[] = [];
  #closed = false;
  readonly #onExit = () => {
    for (const r of this.#runs) r.kick();
  };

  constructor(options: VcpuRuntimeOptions = {}) {
    checkObject('options', options);
    this.maxVcpus =
      options.maxVcpus === undefined
        ? Math.max(1, availableParallelism())
        : checkInt('options.maxVcpus', options.maxVcpus, 1, 1024);
    const { filename, execArgv: own } = workerFile();
    let execArgv = own;
    if (options.execArgv !== undefined) {
      if (!Array.isArray(options.execArgv) || !options.execArgv.every((a) => typeof a === 'string'))
        invalidType('options.execArgv', 'an array of strings', options.execArgv);
      execArgv = [...(own ?? []), ...options.execArgv];
    }
    this.#pool = new Piscina({
      filename,
      execArgv,
      minThreads: 0,
      maxThreads: this.maxVcpus,
      concurrentTasksPerWorker: 1,
      idleTimeout: Infinity,
      maxQueue: this.maxVcpus,
      atomics: 'disabled',
    });
    process.on('exit', this.#onExit);
  }

  /** vCPUs running now. */
  get active(): number {
    return this.#runs.size;
  }

  /**
   * Runs `vcpu` on a thread of its own. While it runs, the vCPU's ioctls from this thread throw
   * `ERR_KVM_VCPU_RUNNING` (they would block the event loop on the kernel's vCPU mutex).
   *
   * @throws `Error` `ERR_KVM_RUNTIME_FULL` when `maxVcpus` vCPUs already run; `ERR_KVM_VCPU_RUNNING`
   *   when this vCPU already runs; `ERR_KVM_CLOSED` for a closed vCPU or runtime
   */
  start(vcpu: VcpuFd, options: StartOptions = {}): VcpuRun {
    if (!(vcpu instanceof VcpuFd)) invalidType('vcpu', 'a VcpuFd', vcpu);
    checkObject('options', options);
    if (this.#closed) throw Object.assign(new Error('VcpuRuntime is closed'), { code: 'ERR_KVM_CLOSED' });
    if (vcpu.running)
      throw Object.assign(new Error(`vCPU ${vcpu.id} is already running`), { code: 'ERR_KVM_VCPU_RUNNING' });
    if (this.#runs.size >= this.maxVcpus) {
      throw Object.assign(new Error(`all ${this.maxVcpus} vCPU threads are busy`), { code: 'ERR_KVM_RUNTIME_FULL' });
    }
    if (vcpu.backend.kind !== 'native')
      invalidValue('vcpu', 'must use the native backend (the mock runs in-thread: see kvm-rx/testing)');
    const pipeline = options.pipeline === undefined ? undefined : modulePath('options.pipeline', options.pipeline);
    if (pipeline !== undefined) checkPipelineModule('options.pipeline', pipeline);
    if (options.pipelineExport !== undefined) checkString('options.pipelineExport', options.pipelineExport);
    if (options.postedTo !== undefined && options.postedTo !== 'main' && options.postedTo !== 'worker') {
      invalidValue('options.postedTo', "must be 'main' or 'worker'", options.postedTo);
    }
    if (options.postedTo === 'worker' && pipeline === undefined)
      invalidValue('options.postedTo', "is 'worker' but there is no pipeline");
    const unhandled = options.unhandled ?? (pipeline === undefined ? 'main' : 'error');
    if (!['main', 'error', 'ignore'].includes(unhandled))
      invalidValue('options.unhandled', "must be 'main', 'error' or 'ignore'", unhandled);
    const pinCpu = options.pinCpu === undefined ? undefined : checkInt('options.pinCpu', options.pinCpu, 0, 1023);
    if (options.paused !== undefined && typeof options.paused !== 'boolean')
      invalidType('options.paused', 'of type boolean', options.paused);
    const vm = vcpu.vm;
    // The worker gets fds of its own: closing the VM or the vCPU here, even before the thread has
    // started, neither breaks the run (it is kicked and stops) nor lets it use a reused fd number.
    const backend = vcpu.backend;
    const vmFd = backend.dup(vm.asRawFd());
    let vcpuFd: number;
    try {
      vcpuFd = backend.dup(vcpu.asRawFd());
    } catch (e) {
      backend.close(vmFd);
      throw e;
    }
    const reused = this.#freeSabs.pop();
    if (reused !== undefined) new Uint8Array(reused).fill(0);
    const sab = reused ?? new SharedArrayBuffer(SAB_BYTES);
    const { port1, port2 } = new MessageChannel();
    const task: VcpuTask = {
      sab,
      vmFd,
      vcpuFd,
      vcpuId: vcpu.id,
      runSize: vm.runSize(),
      slots: vm.memorySlots(),
      pipeline,
      pipelineExport: options.pipelineExport,
      options: options.pipelineOptions,
      posted: options.posted ?? [],
      postedTo: options.postedTo === 'worker' ? 'worker' : 'main',
      coalescedRing: options.coalescedRing === true,
      unhandled,
      record: options.record === true,
      port: port2,
    };
    // The worker has views of guest memory: keep every mapping alive until the run ends.
    const releases = vm.slotMemories().map((m) => m.retain(`a VcpuRun of vCPU ${vcpu.id}`));
    const releaseMemory = () => {
      for (const r of releases.splice(0)) r();
    };
    if (pinCpu !== undefined) task.pinCpu = pinCpu;
    if (options.paused === true) task.paused = true;
    vcpu.setOwner(`a VcpuRuntime worker thread`);
    let result: Promise<TaskOutcome>;
    try {
      result = this.#pool.run(task, { transferList: [port2] }) as Promise<TaskOutcome>;
    } catch (e) {
      vcpu.setOwner(undefined);
      releaseMemory();
      backend.close(vcpuFd);
      backend.close(vmFd);
      throw e;
    }
    const run = new VcpuRun(vcpu, sab, port1, result, options.signal, releaseMemory, options.paused === true);
    this.#runs.add(run);
    const control = new Int32Array(sab, 0, CONTROL_BYTES / 4);
    const release = () => {
      this.#runs.delete(run);
      // A thread that died before its cleanup (process.exit() in a pipeline) left its fds open.
      if (Atomics.load(control, ControlWord.fdsClosed) === 0) {
        backend.close(vcpuFd);
        backend.close(vmFd);
      }
      // The worker has ended and the run no longer touches the buffer (see VcpuRun#released).
      if (this.#freeSabs.length < this.maxVcpus) this.#freeSabs.push(sab);
    };
    run.done.then(release, release);
    return run;
  }

  /** Stops every running vCPU and ends the threads. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all([...this.#runs].map((r) => r.stop()));
    process.off('exit', this.#onExit);
    await this.#pool.destroy();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
