/**
 * Real `VcpuExit` objects for operator specs: each is decoded by `decodeExit` from its own small
 * `kvm_run` buffer, so `data` is a live view exactly as a runner hands it to a pipeline.
 */
import { TestScheduler } from 'rxjs/testing';
import { kvm } from '../../src/abi/kvm-constants';
import { kvm_run } from '../../src/abi/layouts';
import { RUN } from '../../src/wrappers/kvm-run';
import { decodeExit } from '../../src/wrappers/vcpu-exit';
import type { IoInExit, IoOutExit, MmioReadExit, MmioWriteExit, VcpuExit } from '../../src/wrappers/vcpu-exit';

/** Where the fake kvm_run keeps port I/O data (past the struct, as the kernel does). */
const IO_DATA_OFFSET = kvm_run.size;

function fakeRun(fill: (view: DataView, bytes: Uint8Array) => void): VcpuExit {
  const bytes = new Uint8Array(kvm_run.size + 64);
  const view = new DataView(bytes.buffer);
  fill(view, bytes);
  return decodeExit(view, bytes);
}

function io(direction: number, port: number, size: number, count: number, data?: Uint8Array): VcpuExit {
  return fakeRun((view, bytes) => {
    view.setUint32(RUN.exitReason, kvm.KVM_EXIT_IO, true);
    view.setUint8(RUN.ioDirection, direction);
    view.setUint8(RUN.ioSize, size);
    view.setUint16(RUN.ioPort, port, true);
    view.setUint32(RUN.ioCount, count, true);
    view.setBigUint64(RUN.ioDataOffset, BigInt(IO_DATA_OFFSET), true);
    if (data !== undefined) bytes.set(data, IO_DATA_OFFSET);
  });
}

/** An `IoOut` exit: the guest wrote `bytes` to `port` (size = bytes.length / count). */
export function ioOut(port: number, bytes: number[] | Uint8Array, count = 1): IoOutExit {
  const data = Uint8Array.from(bytes);
  return io(kvm.KVM_EXIT_IO_OUT, port, data.length / count, count, data) as IoOutExit;
}

/** An `IoIn` exit: the guest reads `size * count` bytes from `port`. `data` starts as `junk`. */
export function ioIn(port: number, size = 1, count = 1, junk = 0xcc): IoInExit {
  return io(kvm.KVM_EXIT_IO_IN, port, size, count, new Uint8Array(size * count).fill(junk)) as IoInExit;
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

/** An `MmioRead` exit of `len` bytes at `addr`; `data` starts as `junk`. */
export function mmioRead(addr: bigint, len = 4, junk = 0xcc): MmioReadExit {
  return mmio(false, addr, new Uint8Array(len).fill(junk)) as MmioReadExit;
}

/** An `MmioWrite` exit of `bytes` at `addr`. */
export function mmioWrite(addr: bigint, bytes: number[] | Uint8Array): MmioWriteExit {
  return mmio(true, addr, Uint8Array.from(bytes)) as MmioWriteExit;
}

function bare(reason: number): VcpuExit {
  return fakeRun((view) => view.setUint32(RUN.exitReason, reason, true));
}

/** A `Hlt` exit. */
export const hlt = (): VcpuExit => bare(kvm.KVM_EXIT_HLT);
/** A `Shutdown` exit. */
export const shutdown = (): VcpuExit => bare(kvm.KVM_EXIT_SHUTDOWN);
/** An `IrqWindowOpen` exit. */
export const irqWindowOpen = (): VcpuExit => bare(kvm.KVM_EXIT_IRQ_WINDOW_OPEN);

/** Error fields compared by marble specs (errors are not comparable by identity across frames). */
function normalise(value: unknown): unknown {
  if (value instanceof Error) {
    const e = value as Error & { code?: string };
    return { name: e.name, code: e.code, message: e.message };
  }
  if (Array.isArray(value)) return value.map(normalise);
  if (value !== null && typeof value === 'object' && 'frame' in value && 'notification' in value) {
    const m = value as { frame: number; notification: { kind: string; value?: unknown; error?: unknown } };
    return {
      frame: m.frame,
      notification: {
        ...m.notification,
        value: normalise(m.notification.value),
        error: normalise(m.notification.error),
      },
    };
  }
  return value;
}

/** A TestScheduler whose equality normalises errors to `{ name, code, message }`. */
export function newTestScheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => {
    expect(normalise(actual)).toEqual(normalise(expected));
  });
}

/** Bytes of `data` as a plain array (for readable assertions). */
export const bytesOf = (data: Uint8Array): number[] => Array.from(data);
