import type { OperatorFunction } from 'rxjs';
import type { MmioReadExit, VcpuExit } from '../../wrappers/vcpu-exit';
import { handleExits, writeAnswer } from './handleExits';
import type { ExitAnswer, HandlerResult } from './handleExits';
import { rangeMatcher } from './match';
import type { RangeMatcher } from './match';

/**
 * Answers the guest's MMIO reads (`MmioRead` exits) inside `range`, and passes every other exit
 * downstream unchanged.
 *
 * The handler gets the exit and the offset of `exit.addr` in the matched range, and returns what
 * the guest reads: a `number` or `bigint` (written little-endian, truncated to the access length),
 * a `Uint8Array` or `number[]` (copied), `undefined` if it wrote `exit.data` itself, or a Promise or
 * Observable of one of those (written when it arrives; the vCPU stays stopped until then). A
 * throw, a rejection, an Observable error or an empty Observable errors the output stream.
 *
 * ## Example
 * A read-only ID register at offset 0 of a device window:
 * ```ts
 * import { onMmioRead } from 'kvm-rx';
 *
 * exits$.pipe(onMmioRead({ from: 0xfebf_0000n, size: 0x100 }, (_exit, offset) => (offset === 0 ? 0x1af4 : 0)));
 * ```
 *
 * @param range A window `{ from, size }` of guest-physical addresses, or an array of them.
 * @param handler Called with each matching exit and `offset = exit.addr - from` (a number);
 * returns the answer, or a Promise or Observable of it.
 * @return A function that returns an Observable of the exits this handler did not consume.
 * @throws TypeError `ERR_INVALID_ARG_TYPE` / RangeError `ERR_OUT_OF_RANGE` for an invalid range or
 * handler (when called, before any subscription).
 */
export function onMmioRead(
  range: RangeMatcher,
  handler: (exit: MmioReadExit, offset: number) => HandlerResult<ExitAnswer>,
): OperatorFunction<VcpuExit, VcpuExit> {
  const find = rangeMatcher(range);
  return handleExits<MmioReadExit, number, ExitAnswer>(
    (exit) => {
      if (exit.kind !== 'MmioRead') return undefined;
      const from = find(exit.addr);
      return from === undefined ? undefined : Number(exit.addr - from);
    },
    handler,
    (exit, value) => writeAnswer(exit.data, value),
  );
}
