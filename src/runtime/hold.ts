/**
 * The answer-before-resume protocol between handler operators and whatever runs the vCPU.
 *
 * The runner (the worker's run loop, the main-thread bridge, or the in-thread runner) pushes each
 * exit into the pipeline synchronously through {@link deliverExit} and resumes the vCPU when it
 * returns, unless a handler called {@link holdVcpu} with a promise during that call: then the vCPU
 * stays stopped until every such promise settles. A rejected hold fails the run with that error.
 * This is the only hold mechanism; marble tests collect holds with `collectHolds` from
 * `kvm-rx/testing`, which delivers each exit the same way.
 *
 * @module
 */
import type { VcpuExit } from '../wrappers/vcpu-exit';
import { checkObject } from '../abi/validate';

/**
 * Keeps the vCPU stopped at `exit` until `pending` settles. Handler operators call this for
 * handlers that return a Promise or an Observable, while the runner delivers `exit`. Outside a
 * runner (a plain marble test) it does nothing, and the promise is only awaited for its answer.
 *
 * @example
 * ```ts
 * import { filter, type MonoTypeOperatorFunction } from 'rxjs';
 * // a custom operator that answers a read from a promise
 * const answerLater = (answer: () => Promise<number>): MonoTypeOperatorFunction<VcpuExit> =>
 *   filter((exit) => {
 *     if (exit.kind !== 'IoIn') return true;
 *     holdVcpu(exit, answer().then((v) => writeAnswer(exit.data, v)));
 *     return false;
 *   });
 * ```
 */
export function holdVcpu(exit: VcpuExit, pending: PromiseLike<unknown>): void {
  checkObject('exit', exit);
  if (exit === currentExit && currentHolds !== undefined) currentHolds.push(pending);
}

// The exit a runner is pushing through a pipeline right now (pipelines run synchronously inside
// `next()`), and where its holds go. Cheaper than a property per exit on the hot path.
let currentExit: VcpuExit | undefined;
let currentHolds: Array<PromiseLike<unknown>> | undefined;

/**
 * For runners: pushes `exit` through `deliver` (e.g. `subject.next(exit)`) while collecting the
 * holds that handlers place on it into `into`. Holds placed later (by handlers that run after
 * `deliver` returned) are not collected: handlers call `holdVcpu` synchronously.
 */
export function deliverExit(
  exit: VcpuExit,
  into: Array<PromiseLike<unknown>>,
  deliver: (exit: VcpuExit) => void,
): void {
  const prevExit = currentExit;
  const prevHolds = currentHolds;
  currentExit = exit;
  currentHolds = into;
  try {
    deliver(exit);
  } finally {
    currentExit = prevExit;
    currentHolds = prevHolds;
  }
}
