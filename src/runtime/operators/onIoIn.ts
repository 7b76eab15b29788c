import type { OperatorFunction } from 'rxjs';
import type { IoInExit, VcpuExit } from '../../wrappers/vcpu-exit';
import { handleExits, writeAnswer } from './handleExits';
import type { ExitAnswer, HandlerResult } from './handleExits';
import { portMatcher } from './match';
import type { PortMatcher } from './match';

/**
 * Answers the guest's port reads (`IoIn` exits) from the matching ports, and passes every other
 * exit downstream unchanged.
 *
 * The handler returns what the guest reads: a `number` or `bigint` (written little-endian into
 * `exit.data`, truncated to `size * count` bytes), a `Uint8Array` or `number[]` (copied), or
 * `undefined` if it wrote `exit.data` itself. It may also return a Promise or an Observable of
 * such an answer: the answer is written when it arrives (the first value of an Observable, which
 * is then unsubscribed) and the vCPU stays stopped until then. A throw, a rejection, an
 * Observable error or an Observable that completes without a value (`EmptyError`) errors the
 * output stream.
 *
 * ## Example
 * COM1's line status register: always "transmitter empty".
 * ```ts
 * import { onIoIn } from 'kvm-rx';
 *
 * exits$.pipe(onIoIn(0x3fd, () => 0x60));
 * ```
 *
 * @param ports A port, an inclusive `[from, to]` range, an array of ports and ranges, or a
 * predicate (see {@link PortMatcher}).
 * @param handler Called with each matching `IoIn` exit; returns the answer, or a Promise or
 * Observable of it.
 * @return A function that returns an Observable of the exits this handler did not consume.
 * @throws TypeError `ERR_INVALID_ARG_TYPE` / RangeError `ERR_OUT_OF_RANGE` for an invalid matcher or
 * handler (when called, before any subscription).
 */
export function onIoIn(
  ports: PortMatcher,
  handler: (exit: IoInExit) => HandlerResult<ExitAnswer>,
): OperatorFunction<VcpuExit, VcpuExit> {
  const match = portMatcher(ports);
  return handleExits<IoInExit, true, ExitAnswer>(
    (exit) => (exit.kind === 'IoIn' && match(exit.port) ? true : undefined),
    handler,
    (exit, value) => writeAnswer(exit.data, value),
  );
}
