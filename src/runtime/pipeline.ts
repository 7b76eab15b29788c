/**
 * Pipelines: the types users write (`VcpuPipeline`, `VcpuContext`), how a pipeline module is
 * loaded, and the one driver every run loop pushes exits through (the worker's, `runInThread`'s).
 *
 * @module
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { extname } from 'node:path';
import { Subject, type Observable, type Subscription } from 'rxjs';
import type { GuestMemoryMap } from '../wrappers/guest-memory';
import type { VcpuExit } from '../wrappers/vcpu-exit';
import type { VcpuFd } from '../wrappers/vcpu-fd';
import type { VmFd } from '../wrappers/vm-fd';
import { KvmTypeError } from '../abi/errors';
import { deliverExit } from './hold';
import { UnhandledExitError } from './errors';

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

/**
 * A pipeline: takes the vCPU's exits and returns an Observable that emits the exits it did not
 * handle (the runner answers those by its `unhandled` rule) and completes to end the run.
 *
 * @example
 * ```ts
 * import { onIoOut, untilHalt, failOnUnhandled, type VcpuPipeline } from 'kvm-rx';
 * const pipeline: VcpuPipeline = (exits$, ctx) =>
 *   exits$.pipe(onIoOut(0x3f8, (e) => ctx.emit('serial', e.data)), untilHalt(), failOnUnhandled());
 * export default pipeline;
 * ```
 */
export type VcpuPipeline = (exits$: Observable<VcpuExit>, ctx: VcpuContext) => Observable<unknown>;

const TS_EXTENSIONS = new Set(['.ts', '.mts', '.cts', '.tsx']);

/** Whether `path` names TypeScript source, which a worker needs a loader for. */
export function isTypeScriptModule(path: string): boolean {
  return TS_EXTENSIONS.has(extname(path));
}

/** The TypeScript loaders a worker can register on demand, in order of preference. */
const TS_LOADERS = ['tsx/cjs/api', 'ts-node'] as const;

/**
 * The TypeScript loader a worker would register for `path` (resolved from the module's own
 * folder, then from the working directory), or `undefined` when none is installed.
 */
export function findTypeScriptLoader(path: string): string | undefined {
  for (const from of [path, `${process.cwd()}/`]) {
    const req = createRequire(from);
    for (const loader of TS_LOADERS) {
      try {
        return req.resolve(loader);
      } catch {
        /* not installed there */
      }
    }
  }
  return undefined;
}

/**
 * Makes sure this thread can `require()` the TypeScript module `path`: registers tsx or ts-node
 * when no loader is active. Does nothing for other modules.
 *
 * @throws `TypeError` (`ERR_INVALID_ARG_VALUE`) when no loader is installed
 */
export function registerTypeScript(path: string): void {
  if (!isTypeScriptModule(path)) return;
  // A loader is already active in this thread (the parent's -r/--import, or jest's ts-node run).
  // eslint-disable-next-line @typescript-eslint/no-deprecated -- the one way to see a CommonJS loader
  if (require.extensions['.ts'] !== undefined) return;
  const loader = findTypeScriptLoader(path);
  if (loader === undefined) throw noTypeScriptLoader(path);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const mod = require(loader) as { register: (opts?: object) => unknown };
  if (loader.includes('ts-node')) mod.register({ transpileOnly: true });
  else mod.register();
}

/** The error for a TypeScript pipeline that no loader can run. */
export function noTypeScriptLoader(path: string): TypeError {
  return new KvmTypeError(
    'ERR_INVALID_ARG_VALUE',
    `pipeline module ${path} is TypeScript, and the worker has no loader for it: install tsx or ts-node ` +
      `where the module or the working directory can resolve it, start Node with one (node --import tsx), ` +
      `or point at the compiled .js`,
  );
}

/**
 * Checks a pipeline module's path before a run starts: the file exists, and a TypeScript one has
 * a loader. The message names the option.
 *
 * @throws `TypeError` (`ERR_INVALID_ARG_VALUE`) naming `option`
 */
export function checkPipelineModule(option: string, path: string): void {
  if (!existsSync(path)) {
    throw new KvmTypeError(
      'ERR_INVALID_ARG_VALUE',
      `${option}: no such file ${path} (a relative path resolves against process.cwd(); ` +
        `use require.resolve('./pipeline') or new URL('./pipeline.js', import.meta.url))`,
    );
  }
  // eslint-disable-next-line @typescript-eslint/no-deprecated -- the one way to see a CommonJS loader
  if (isTypeScriptModule(path) && require.extensions['.ts'] === undefined && findTypeScriptLoader(path) === undefined)
    throw noTypeScriptLoader(path);
}

const isFunction = (v: unknown): v is (...args: never[]) => unknown => typeof v === 'function';

/**
 * Loads a pipeline module in this thread, the ways users write them: `module.exports = fn`,
 * `exports.default = fn` (TypeScript's `export default` compiled to CommonJS), an ES module's
 * default export, or the named export `exportName` (default name looked for last: `pipeline`).
 * TypeScript sources are loaded through tsx or ts-node when no loader is active yet.
 *
 * @throws `TypeError` (`ERR_INVALID_ARG_VALUE`) when the module exports no such function;
 *   whatever loading the module throws
 */
export async function loadPipeline(path: string, exportName?: string): Promise<VcpuPipeline> {
  registerTypeScript(path);
  let mod: unknown;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    mod = require(path);
  } catch (e) {
    if (
      (e as { code?: string }).code !== 'ERR_REQUIRE_ESM' &&
      (e as { code?: string }).code !== 'ERR_REQUIRE_ASYNC_MODULE'
    )
      throw e;
    // A real import() that TypeScript's CommonJS output does not turn into require().
    // eslint-disable-next-line @typescript-eslint/no-implied-eval
    const dynamicImport = new Function('s', 'return import(s)') as (s: string) => Promise<unknown>;
    mod = await dynamicImport(path);
  }
  return exportedFunction<VcpuPipeline>(mod, path, 'pipeline', exportName, 'pipeline');
}

/**
 * The function a loaded module exports, found the ways users write modules: the named export
 * `exportName` when given; otherwise `module.exports` itself, the default export (also when an
 * ES module wraps CommonJS exports in `default`), then the export named `fallbackName`.
 *
 * @throws `TypeError` (`ERR_INVALID_ARG_VALUE`) naming what was looked for and what the module has
 */
export function exportedFunction<T>(
  mod: unknown,
  path: string,
  what: string,
  exportName: string | undefined,
  fallbackName: string,
): T {
  const m = (mod ?? {}) as Record<string, unknown>;
  const inner = (m.default ?? {}) as Record<string, unknown>;
  if (exportName !== undefined) {
    const fn = m[exportName] ?? inner[exportName];
    if (isFunction(fn)) return fn as T;
    throw new KvmTypeError(
      'ERR_INVALID_ARG_VALUE',
      `${what} module ${path} has no export '${exportName}' that is a function`,
    );
  }
  for (const fn of [mod, m.default, inner.default, m[fallbackName], inner[fallbackName]])
    if (isFunction(fn)) return fn as T;
  const keys = Object.keys(m);
  throw new KvmTypeError(
    'ERR_INVALID_ARG_VALUE',
    `${what} module ${path} exports no function: looked for module.exports, the default export ` +
      `and an export named '${fallbackName}' (it exports ${keys.length === 0 ? 'nothing' : keys.map((k) => `'${k}'`).join(', ')})`,
  );
}

const isExit = (v: unknown): v is VcpuExit => v !== null && typeof v === 'object' && 'kind' in v;
const noop = (): void => undefined;

/**
 * Drives one pipeline: pushes each exit in synchronously, collects the holds its handlers place
 * (see `holdVcpu`), and tells the run loop what came of it: whether the exit came out the far
 * end (nobody handled it), whether the pipeline failed or completed. The worker's run loop and
 * `runInThread` both run pipelines through it.
 */
export class PipelineDriver {
  /** Holds placed on the exit last delivered. */
  readonly #holds: Array<PromiseLike<unknown>> = [];
  readonly #exits = new Subject<VcpuExit>();
  readonly #sub: Subscription;
  readonly #vcpu: VcpuFd;
  #passed: VcpuExit | undefined;
  #failure: { error: unknown } | undefined;
  #completed = false;
  readonly #next = (exit: VcpuExit): void => this.#exits.next(exit);

  /**
   * Subscribes `pipeline` (identity when `undefined`: every exit is unhandled).
   *
   * @throws `TypeError` (`ERR_INVALID_RETURN_VALUE`) when the pipeline does not return an Observable
   */
  constructor(pipeline: VcpuPipeline | undefined, ctx: VcpuContext) {
    this.#vcpu = ctx.vcpu;
    const source = this.#exits.asObservable();
    const out$: unknown = pipeline === undefined ? source : pipeline(source, ctx);
    if (
      out$ === null ||
      typeof out$ !== 'object' ||
      typeof (out$ as { subscribe?: unknown }).subscribe !== 'function'
    ) {
      throw new KvmTypeError(
        'ERR_INVALID_RETURN_VALUE',
        `the pipeline must return an Observable (got ${out$ === null ? 'null' : typeof out$})`,
      );
    }
    this.#sub = (out$ as Observable<unknown>).subscribe({
      next: (v) => {
        if (isExit(v)) this.#passed = v;
      },
      error: (e: unknown) => {
        this.#failure ??= { error: e };
      },
      complete: () => {
        this.#completed = true;
      },
    });
  }

  /**
   * Pushes `exit` through the pipeline. Returns a promise when a handler holds the vCPU (resolves
   * when every hold has, rejects with the first failed hold), `undefined` otherwise.
   */
  deliver(exit: VcpuExit): Promise<void> | undefined {
    const holds = this.#holds;
    holds.length = 0;
    this.#passed = undefined;
    deliverExit(exit, holds, this.#next);
    if (holds.length === 0) return undefined;
    return (holds.length === 1 ? Promise.resolve(holds[0]) : Promise.all(holds)).then(noop);
  }

  /** Whether the exit last delivered came out of the pipeline (nobody handled it). */
  get unhandled(): boolean {
    return this.#passed !== undefined;
  }

  /** Whether the pipeline has completed (the run ends). */
  get completed(): boolean {
    return this.#completed;
  }

  /**
   * Throws what the pipeline errored with, if it did. An `UnhandledExitError` (from
   * `failOnUnhandled()`) gets the vCPU's RIP appended, as the runner's own one has.
   */
  throwIfFailed(): void {
    if (this.#failure === undefined) return;
    const error = this.#failure.error;
    if (error instanceof UnhandledExitError && error.rip === undefined) withRip(error, this.#vcpu);
    throw error;
  }

  /** The error for `exit` nobody handled, naming the vCPU's RIP. */
  unhandledError(exit: VcpuExit, detail: string): UnhandledExitError {
    return withRip(new UnhandledExitError(exit, detail), this.#vcpu);
  }

  /** Unsubscribes the pipeline. */
  close(): void {
    this.#sub.unsubscribe();
  }
}

function withRip(error: UnhandledExitError, vcpu: VcpuFd): UnhandledExitError {
  try {
    error.rip = vcpu.getRegs().rip;
    error.message += `, rip 0x${error.rip.toString(16)}`;
  } catch {
    /* the vCPU is gone (closed): the message says what it can */
  }
  return error;
}
