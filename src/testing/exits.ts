/**
 * Real `VcpuExit` objects for marble tests of device pipelines: each is decoded by `decodeExit`
 * from a small `kvm_run` buffer of its own, so `data` is a live view exactly as a runner hands it
 * to a pipeline, and an answer written by a read handler can be checked in `exit.data`.
 *
 * @module
 */
import { kvm } from '../abi/kvm-constants';
import { kvm_run } from '../abi/layouts';
import { checkInt, checkU16, checkU64, invalidType, outOfRange } from '../abi/validate';
import { RUN } from '../wrappers/kvm-run';
import { decodeExit } from '../wrappers/vcpu-exit';
import type { IoInExit, IoOutExit, MmioReadExit, MmioWriteExit, VcpuExit } from '../wrappers/vcpu-exit';

/** Where the fake kvm_run keeps port I/O data (past the struct, as the kernel does). */
const IO_DATA_OFFSET = kvm_run.size;
/** The most data one exit carries here (a `rep outsb` of up to 64 bytes). */
const MAX_DATA = 64;

function fakeRun(fill: (view: DataView, bytes: Uint8Array) => void): VcpuExit {
  const bytes = new Uint8Array(kvm_run.size + MAX_DATA);
  const view = new DataView(bytes.buffer);
  fill(view, bytes);
  return decodeExit(view, bytes);
}

function toBytes(name: string, bytes: ArrayLike<number>, max: number): Uint8Array {
  if (!(bytes instanceof Uint8Array) && !Array.isArray(bytes))
    invalidType(name, 'a Uint8Array or an array of bytes', bytes);
  const data = Uint8Array.from(bytes);
  checkInt(`${name}.length`, data.length, 1, max);
  return data;
}

function io(direction: number, port: number, size: number, count: number, data: Uint8Array): VcpuExit {
  return fakeRun((view, bytes) => {
    view.setUint32(RUN.exitReason, kvm.KVM_EXIT_IO, true);
    view.setUint8(RUN.ioDirection, direction);
    view.setUint8(RUN.ioSize, size);
    view.setUint16(RUN.ioPort, port, true);
    view.setUint32(RUN.ioCount, count, true);
    view.setBigUint64(RUN.ioDataOffset, BigInt(IO_DATA_OFFSET), true);
    bytes.set(data, IO_DATA_OFFSET);
  });
}

function mmio(isWrite: boolean, addr: bigint, data: Uint8Array): VcpuExit {
  return fakeRun((view, bytes) => {
    view.setUint32(RUN.exitReason, kvm.KVM_EXIT_MMIO, true);
    view.setBigUint64(RUN.mmioPhysAddr, addr, true);
    view.setUint32(RUN.mmioLen, data.length, true);
    view.setUint8(RUN.mmioIsWrite, isWrite ? 1 : 0);
    bytes.set(data, RUN.mmioData);
  });
}

const bare = (reason: number): VcpuExit => fakeRun((view) => view.setUint32(RUN.exitReason, reason, true));

/**
 * Builders of real `VcpuExit`s for marble tests (the mock's `ioOut()`, `ioIn()`, … script what
 * `KVM_RUN` reports instead; these are what a pipeline receives).
 *
 * @example
 * ```ts
 * import { of } from 'rxjs';
 * import { makeExit } from 'kvm-rx/testing';
 * const read = makeExit.ioIn(0x3fd);            // IoIn, 1 byte, data starts as 0xcc
 * of(read).pipe(onIoIn(0x3fd, () => 0x60)).subscribe();
 * // read.data[0] === 0x60
 * ```
 */
export const makeExit = {
  /**
   * An `IoOut` exit: the guest wrote `bytes` to `port` (access size = `bytes.length / count`).
   * The kernel reports sizes 1, 2 and 4 only; other sizes are allowed here to fuzz devices.
   *
   * @throws `RangeError` (`ERR_OUT_OF_RANGE`) for a port outside 0..0xffff, no bytes or more than
   *   64, or a count that does not divide the byte count
   */
  ioOut(port: number, bytes: ArrayLike<number>, count = 1): IoOutExit {
    checkU16('port', port);
    const data = toBytes('bytes', bytes, MAX_DATA);
    checkInt('count', count, 1, data.length);
    const size = data.length / count;
    if (!Number.isInteger(size)) outOfRange('bytes.length / count', 'an integer', size);
    return io(kvm.KVM_EXIT_IO_OUT, port, size, count, data) as IoOutExit;
  },
  /**
   * An `IoIn` exit: the guest reads `size * count` bytes from `port`; `data` starts as `junk`.
   * The kernel reports sizes 1, 2 and 4 only; sizes up to 8 are allowed here to fuzz devices.
   *
   * @throws `RangeError` (`ERR_OUT_OF_RANGE`) for a bad port, a size outside 1..8, or a count past
   *   64 bytes in all
   */
  ioIn(port: number, size = 1, count = 1, junk = 0xcc): IoInExit {
    checkU16('port', port);
    checkInt('size', size, 1, 8);
    checkInt('count', count, 1, Math.floor(MAX_DATA / size));
    checkInt('junk', junk, 0, 0xff);
    return io(kvm.KVM_EXIT_IO_IN, port, size, count, new Uint8Array(size * count).fill(junk)) as IoInExit;
  },
  /**
   * An `MmioRead` exit of `len` (1..8) bytes at `addr`; `data` starts as `junk`.
   *
   * @throws `RangeError` (`ERR_OUT_OF_RANGE`) for an address past 2^64 - 1 or a length outside 1..8
   */
  mmioRead(addr: bigint, len = 4, junk = 0xcc): MmioReadExit {
    checkU64('addr', addr);
    checkInt('len', len, 1, 8);
    checkInt('junk', junk, 0, 0xff);
    return mmio(false, addr, new Uint8Array(len).fill(junk)) as MmioReadExit;
  },
  /**
   * An `MmioWrite` exit of `bytes` (1..8 of them) at `addr`.
   *
   * @throws `RangeError` (`ERR_OUT_OF_RANGE`) for an address past 2^64 - 1 or a length outside 1..8
   */
  mmioWrite(addr: bigint, bytes: ArrayLike<number>): MmioWriteExit {
    checkU64('addr', addr);
    return mmio(true, addr, toBytes('bytes', bytes, 8)) as MmioWriteExit;
  },
  /** A `Hlt` exit. */
  hlt: (): VcpuExit => bare(kvm.KVM_EXIT_HLT),
  /** A `Shutdown` exit. */
  shutdown: (): VcpuExit => bare(kvm.KVM_EXIT_SHUTDOWN),
  /** An `IrqWindowOpen` exit. */
  irqWindowOpen: (): VcpuExit => bare(kvm.KVM_EXIT_IRQ_WINDOW_OPEN),
} as const;
