/**
 * `virtioMmio`: the register windows of virtio-mmio devices, served in the vCPU's thread.
 *
 * @module
 */
import { pipe, type MonoTypeOperatorFunction } from 'rxjs';
import { invalidType } from '../../abi/validate';
import { onMmioRead } from '../../runtime/operators/onMmioRead';
import { onMmioWrite } from '../../runtime/operators/onMmioWrite';
import type { VcpuExit } from '../../wrappers/vcpu-exit';
import { VIRTIO_MMIO_WINDOW, VirtioMmioRegisters, type VirtioMmioShared } from './mmio-transport';

/**
 * Answers the guest's reads and writes of the register windows of `devices` (each
 * `{ base, state }`, from `VirtioMmioDevice.shared`, passed to the worker in `pipelineOptions`),
 * and passes every other exit on. The registers are served here, on the vCPU's thread, with no
 * thread hop; what the device must act on (DRIVER_OK, a reset) rings its doorbell. Queue
 * notifications never get here: an ioeventfd takes them in the kernel.
 *
 * @example
 * ```ts
 * // devices.ts, the vCPU's pipeline module
 * import { virtioMmio, type VcpuPipeline, type VirtioMmioShared } from 'kvm-rx';
 * const pipeline: VcpuPipeline = (exits$, ctx) =>
 *   exits$.pipe(virtioMmio((ctx.options as { virtio: VirtioMmioShared[] }).virtio));
 * export default pipeline;
 * ```
 * @throws `TypeError` `ERR_INVALID_ARG_TYPE` for `devices` that is not an array of
 *   `{ base: bigint, state: SharedArrayBuffer }` (when called)
 */
export function virtioMmio(list: readonly VirtioMmioShared[]): MonoTypeOperatorFunction<VcpuExit> {
  if (!Array.isArray(list)) invalidType('devices', 'an array of VirtioMmioShared', list);
  const devices: readonly VirtioMmioShared[] = list;
  if (devices.length === 0) return (source) => source;
  const windows = devices.map((d, i) => {
    if (typeof d !== 'object' || d === null || typeof d.base !== 'bigint')
      invalidType(`devices[${i}].base`, 'a bigint', (d as Partial<VirtioMmioShared> | null)?.base);
    return { from: d.base, size: VIRTIO_MMIO_WINDOW, regs: new VirtioMmioRegisters(d.state) };
  });
  // The operators match the window; its base (address − offset) names the device.
  const regsAt = new Map(windows.map((w) => [w.from, w.regs]));
  const regsOf = (addr: bigint, offset: number) => regsAt.get(addr - BigInt(offset))!;
  const ranges = windows.map(({ from, size }) => ({ from, size }));
  return pipe(
    onMmioRead(ranges, (exit, offset) => regsOf(exit.addr, offset).read(offset, exit.data.length)),
    onMmioWrite(ranges, (exit, offset) => {
      const d = exit.data;
      let value = 0;
      for (let i = Math.min(d.length, 4) - 1; i >= 0; i--) value = value * 256 + d[i];
      regsOf(exit.addr, offset).write(offset, d.length, value);
    }),
  );
}
