/**
 * The answer-before-resume protocol between handler operators and whatever runs the vCPU.
 *
 * The runner (the worker's run loop, the main-thread bridge, or the in-thread test runner) pushes
 * each exit into the pipeline synchronously and resumes the vCPU when `next()` returns, unless a
 * handler called {@link holdVcpu} with a promise: then the vCPU stays stopped until every such
 * promise settles. A rejected hold fails the run with that error.
 *
 * @module
 */
import type { VcpuExit } from '../wrappers/vcpu-exit';
import { checkObject, invalidType } from '../abi/validate';

/** The symbol under which a runner attaches its hold callback to an exit object. */
export const HOLD: unique symbol = Symbol.for('kvm-rx.hold') as never;

/** An exit as the runner hands it to the pipeline. */
export type HoldableExit = VcpuExit & { [HOLD]?: (pending: PromiseLike<unknown>) => void };

/**
 * Keeps the vCPU stopped at `exit` until `pending` settles. Handler operators call this for
 * handlers that return a Promise or an Observable. Outside a runner (plain marble tests) it does
 * nothing, and the promise is only awaited for its answer.
 */
export function holdVcpu(exit: VcpuExit, pending: PromiseLike<unknown>): void {
  checkObject('exit', exit);
  if (exit === currentExit && currentHolds !== undefined) {
    currentHolds.push(pending);
    return;
  }
  const hold = (exit as HoldableExit)[HOLD];
  if (hold !== undefined) hold(pending);
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

/** Attaches a hold collector to `exit` (for runners). Returns the list the holds land in. */
export function attachHold(exit: VcpuExit, into: Array<PromiseLike<unknown>>): void {
  checkObject('exit', exit);
  if (!Array.isArray(into)) invalidType('into', 'an array', into);
  Object.defineProperty(exit, HOLD, {
    value: (p: PromiseLike<unknown>) => into.push(p),
    enumerable: false,
    configurable: true,
  });
}
