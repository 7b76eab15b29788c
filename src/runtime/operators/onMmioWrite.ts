import type { OperatorFunction } from 'rxjs';
import type { MmioWriteExit, VcpuExit } from '../../wrappers/vcpu-exit';
import { handleExits } from './handleExits';
import type { HandlerResult } from './handleExits';
import { rangeMatcher } from './match';
import type { RangeMatcher } from './match';

/**
 * Handles the guest's MMIO writes (`MmioWrite` exits) inside `range`, and passes every other exit
 * downstream unchanged.
 *
 * The handler gets the exit and the offset of `exit.addr` in the matched range. It may return
 * `void`, a Promise or an Observable; the vCPU stays stopped until the Promise settles or the
 * Observable completes. A throw, a rejection or an Observable error errors the output stream.
 *
 * ## Example
 * ```ts
 * import { onMmioWrite } from 'kvm-rx';
 *
 * const regs = new Uint32Array(64);
 * exits$.pipe(
 *   onMmioWrite({ from: 0xfebf_0000n, size: 0x100 }, (exit, offset) => {
 *     regs[offset >> 2] = new DataView(exit.data.buffer, exit.data.byteOffset).getUint32(0, true);
 *   }),
 * );
 * ```
 *
 * @param range A window `{ from, size }` of guest-physical addresses, or an array of them.
 * @param handler Called with each matching exit and `offset = exit.addr - from` (a number).
 * @return A function that returns an Observable of the exits this handler did not consume.
 * @throws TypeError `ERR_INVALID_ARG_TYPE` / RangeError `ERR_OUT_OF_RANGE` for an invalid range or
 * handler (when called, before any subscription).
 */
export function onMmioWrite(
  range: RangeMatcher,
  handler: (exit: MmioWriteExit, offset: number) => HandlerResult<unknown>,
): OperatorFunction<VcpuExit, VcpuExit> {
  const find = rangeMatcher(range);
  return handleExits<MmioWriteExit, number, unknown>((exit) => {
    if (exit.kind !== 'MmioWrite') return undefined;
    const from = find(exit.addr);
    return from === undefined ? undefined : Number(exit.addr - from);
  }, handler);
}
