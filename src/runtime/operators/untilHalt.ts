import type { MonoTypeOperatorFunction } from 'rxjs';
import type { VcpuExit } from '../../wrappers/vcpu-exit';
import { stopOn } from './stopOn';

/**
 * Completes the output when the guest executes `HLT` (a `Hlt` exit, consumed), and passes every
 * exit before it downstream unchanged. Same as `stopOn('Hlt')`.
 *
 * ## Example
 * ```ts
 * import { untilHalt, onIoOut } from 'kvm-rx';
 *
 * const pipeline = (exits$) => exits$.pipe(untilHalt(), onIoOut(0x3f8, print));
 * ```
 *
 * @return A function that returns an Observable of the exits before the first `Hlt`.
 */
export function untilHalt(): MonoTypeOperatorFunction<VcpuExit> {
  return stopOn('Hlt');
}
