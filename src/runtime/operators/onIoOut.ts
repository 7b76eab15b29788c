import type { OperatorFunction } from 'rxjs';
import type { IoOutExit, VcpuExit } from '../../wrappers/vcpu-exit';
import { handleExits } from './handleExits';
import type { HandlerResult } from './handleExits';
import { portMatcher } from './match';
import type { PortMatcher } from './match';

/**
 * Handles the guest's port writes (`IoOut` exits) to the matching ports, and passes every other
 * exit downstream unchanged.
 *
 * `handler` is called synchronously with the exit while the vCPU is stopped. If it returns a
 * Promise or an Observable, the vCPU stays stopped (see `holdVcpu`) until the Promise settles or
 * the Observable completes (its values are ignored). A synchronous throw, a rejection or an
 * Observable error errors the output stream with that error. If the output is unsubscribed while
 * a handler is pending, its Observable is unsubscribed and the hold is released.
 *
 * ## Example
 * A serial port that prints what the guest writes to COM1's data register:
 * ```ts
 * import { onIoOut, untilHalt, failOnUnhandled } from 'kvm-rx';
 *
 * const pipeline = (exits$) =>
 *   exits$.pipe(
 *     untilHalt(),
 *     onIoOut(0x3f8, (exit) => void process.stdout.write(exit.data)),
 *     failOnUnhandled(),
 *   );
 * ```
 *
 * @param ports A port, an inclusive `[from, to]` range, an array of ports and ranges, or a
 * predicate (see {@link PortMatcher}).
 * @param handler Called with each matching `IoOut` exit; may return `void`, a Promise or an
 * Observable.
 * @return A function that returns an Observable of the exits this handler did not consume.
 * @throws TypeError `ERR_INVALID_ARG_TYPE` / RangeError `ERR_OUT_OF_RANGE` for an invalid matcher or
 * handler (when called, before any subscription).
 */
export function onIoOut(
  ports: PortMatcher,
  handler: (exit: IoOutExit) => HandlerResult<unknown>,
): OperatorFunction<VcpuExit, VcpuExit> {
  const match = portMatcher(ports);
  return handleExits<IoOutExit, true, unknown>(
    (exit) => (exit.kind === 'IoOut' && match(exit.port) ? true : undefined),
    handler,
  );
}
