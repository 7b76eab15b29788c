import type { MonoTypeOperatorFunction } from 'rxjs';
import type { VcpuExit } from '../../wrappers/vcpu-exit';
import { stopOn } from './stopOn';

/**
 * Completes the output when the vCPU shuts down (a `Shutdown` exit, e.g. a triple fault, consumed),
 * and passes every exit before it downstream unchanged. Same as `stopOn('Shutdown')`.
 *
 * ## Example
 * ```ts
 * import { untilShutdown, onIoOut } from 'kvm-rx';
 *
 * const pipeline = (exits$) => exits$.pipe(untilShutdown(), onIoOut(0x3f8, print));
 * ```
 *
 * @return A function that returns an Observable of the exits before the first `Shutdown`.
 */
export function untilShutdown(): MonoTypeOperatorFunction<VcpuExit> {
  return stopOn('Shutdown');
}
