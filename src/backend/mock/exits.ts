/**
 * Builders for the exits a mock vCPU's `KVM_RUN` reports, in the kernel's own kvm_run layout.
 *
 * @example
 * ```ts
 * backend.vcpu(0).script([ioOut(0x3f8, 'hi'), ioIn(0x3f8), mmioRead(0xd000_0000n, 4), hlt()]);
 * ```
 * @module
 */
import { decodeStruct, dv, encodeStruct, offsetOf } from '../../abi/codec';
import { kvm } from '../../abi/kvm-constants';
import { kvm_regs, kvm_run, type KvmRegs } from '../../abi/layouts';
import { leValue, type MockVcpu, type ScriptedExit } from './state';

const O = (p: string) => offsetOf(kvm_run, p);
const EXIT_REASON = O('exit_reason');
const IO = {
  direction: O('io.direction'),
  size: O('io.size'),
  port: O('io.port'),
  count: O('io.count'),
  dataOffset: O('io.data_offset'),
};
const MMIO = { physAddr: O('mmio.phys_addr'), data: O('mmio.data'), len: O('mmio.len'), isWrite: O('mmio.is_write') };
/** Where the mock puts PIO data: the second page of the mapping, as the kernel does. */
export const PIO_DATA_OFFSET = 4096;

function toBytes(data: string | Uint8Array | number[]): Uint8Array {
  if (typeof data === 'string') return new Uint8Array(Buffer.from(data, 'latin1'));
  return Uint8Array.from(data);
}

function clearExit(view: DataView, bytes: Uint8Array, reason: number): void {
  bytes.fill(0, O('hw'), O('hw') + 256);
  view.setUint32(EXIT_REASON, reason, true);
}

/** Extra options every builder takes. */
export interface ExitOptions {
  /** Guest stores performed before this exit (their pages become dirty). */
  writes?: Array<{ gpa: bigint; data: Uint8Array }>;
}

/** The guest wrote `data` to `port` (`size` bytes per access; `count = data.length / size`). */
export function ioOut(
  port: number,
  data: string | Uint8Array | number[],
  size = 1,
  opts: ExitOptions = {},
): ScriptedExit {
  const d = toBytes(data);
  return {
    label: `IoOut(0x${port.toString(16)})`,
    ...opts,
    write(view, bytes) {
      clearExit(view, bytes, kvm.KVM_EXIT_IO);
      view.setUint8(IO.direction, kvm.KVM_EXIT_IO_OUT);
      view.setUint8(IO.size, size);
      view.setUint16(IO.port, port, true);
      view.setUint32(IO.count, Math.max(1, Math.floor(d.length / size)), true);
      view.setBigUint64(IO.dataOffset, BigInt(PIO_DATA_OFFSET), true);
      bytes.set(d, PIO_DATA_OFFSET);
    },
  };
}

/**
 * The guest reads `size * count` bytes from `port`. The answer is recorded; for a single access it
 * lands in the low bytes of RAX, as `in %dx, %al/%ax/%eax` would.
 */
export function ioIn(port: number, size = 1, count = 1, opts: ExitOptions = {}): ScriptedExit {
  return {
    label: `IoIn(0x${port.toString(16)})`,
    ...opts,
    write(view, bytes) {
      clearExit(view, bytes, kvm.KVM_EXIT_IO);
      view.setUint8(IO.direction, kvm.KVM_EXIT_IO_IN);
      view.setUint8(IO.size, size);
      view.setUint16(IO.port, port, true);
      view.setUint32(IO.count, count, true);
      view.setBigUint64(IO.dataOffset, BigInt(PIO_DATA_OFFSET), true);
      bytes.fill(0, PIO_DATA_OFFSET, PIO_DATA_OFFSET + size * count);
    },
    answer: (_view, bytes) => bytes.slice(PIO_DATA_OFFSET, PIO_DATA_OFFSET + size * count),
    complete(vcpu, _view, bytes) {
      if (count !== 1) return;
      const regs = regsOf(vcpu);
      const v = leValue(bytes.subarray(PIO_DATA_OFFSET, PIO_DATA_OFFSET + size));
      const mask = (1n << BigInt(8 * size)) - 1n;
      regs.rax = size === 4 ? v : (regs.rax & ~mask) | v;
      setRegsOf(vcpu, regs);
    },
  };
}

function regsOf(vcpu: MockVcpu): KvmRegs {
  return decodeStruct<KvmRegs>(kvm_regs, dv(vcpu.state.get('kvm_regs')!));
}
function setRegsOf(vcpu: MockVcpu, regs: KvmRegs): void {
  encodeStruct(kvm_regs, regs, dv(vcpu.state.get('kvm_regs')!));
}

/** The guest wrote `data` (1–8 bytes) at `addr`. */
export function mmioWrite(addr: bigint, data: Uint8Array | number[], opts: ExitOptions = {}): ScriptedExit {
  const d = toBytes(data);
  return {
    label: `MmioWrite(0x${addr.toString(16)})`,
    ...opts,
    write(view, bytes) {
      clearExit(view, bytes, kvm.KVM_EXIT_MMIO);
      view.setBigUint64(MMIO.physAddr, addr, true);
      bytes.set(d.subarray(0, 8), MMIO.data);
      view.setUint32(MMIO.len, Math.min(d.length, 8), true);
      view.setUint8(MMIO.isWrite, 1);
    },
  };
}

/** The guest reads `len` bytes (1–8) at `addr`; the answer is recorded. */
export function mmioRead(addr: bigint, len: number, opts: ExitOptions = {}): ScriptedExit {
  return {
    label: `MmioRead(0x${addr.toString(16)})`,
    ...opts,
    write(view, bytes) {
      clearExit(view, bytes, kvm.KVM_EXIT_MMIO);
      view.setBigUint64(MMIO.physAddr, addr, true);
      view.setUint32(MMIO.len, len, true);
      view.setUint8(MMIO.isWrite, 0);
    },
    answer: (_view, bytes) => bytes.slice(MMIO.data, MMIO.data + len),
  };
}

/** An exit with no payload, by reason number (`KVM_EXIT_*`). */
export function bareExit(reason: number, label: string, opts: ExitOptions = {}): ScriptedExit {
  return { label, ...opts, write: (view, bytes) => clearExit(view, bytes, reason) };
}

/** `hlt`. */
export const hlt = (opts: ExitOptions = {}): ScriptedExit => bareExit(kvm.KVM_EXIT_HLT, 'Hlt', opts);
/** A triple fault. */
export const shutdown = (opts: ExitOptions = {}): ScriptedExit => bareExit(kvm.KVM_EXIT_SHUTDOWN, 'Shutdown', opts);

/** `KVM_EXIT_FAIL_ENTRY`. */
export function failEntry(reason: bigint, cpu = 0): ScriptedExit {
  return {
    label: 'FailEntry',
    write(view, bytes) {
      clearExit(view, bytes, kvm.KVM_EXIT_FAIL_ENTRY);
      view.setBigUint64(O('fail_entry.hardware_entry_failure_reason'), reason, true);
      view.setUint32(O('fail_entry.cpu'), cpu, true);
    },
  };
}

/** `KVM_EXIT_INTERNAL_ERROR` with a suberror and data words. */
export function internalError(suberror: number, data: bigint[] = []): ScriptedExit {
  return {
    label: 'InternalError',
    write(view, bytes) {
      clearExit(view, bytes, kvm.KVM_EXIT_INTERNAL_ERROR);
      view.setUint32(O('internal.suberror'), suberror, true);
      view.setUint32(O('internal.ndata'), data.length, true);
      data.forEach((w, i) => view.setBigUint64(O('internal.data') + 8 * i, w, true));
    },
  };
}

/**
 * The `internal.data` words of an emulation failure that carries its instruction bytes, as the
 * kernel fills them (`flags` = INSTRUCTION_BYTES, then `insn_size` and up to 15 bytes).
 *
 * @example `emulationFailureData([0xcc]) // an int3 the emulator could not do`
 */
export function emulationFailureData(insn: ReadonlyArray<number>): bigint[] {
  const raw = new Uint8Array(16);
  raw[0] = Math.min(insn.length, 15);
  raw.set(insn.slice(0, 15), 1);
  const v = new DataView(raw.buffer);
  return [
    BigInt(kvm.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES),
    v.getBigUint64(0, true),
    v.getBigUint64(8, true),
  ];
}

/** `KVM_EXIT_INTERNAL_ERROR`, suberror EMULATION, at the instruction `insn`. */
export function emulationFailure(insn: ReadonlyArray<number>): ScriptedExit {
  return internalError(kvm.KVM_INTERNAL_ERROR_EMULATION, emulationFailureData(insn));
}

/** `KVM_EXIT_SYSTEM_EVENT`. */
export function systemEvent(type: number, data: bigint[] = []): ScriptedExit {
  return {
    label: 'SystemEvent',
    write(view, bytes) {
      clearExit(view, bytes, kvm.KVM_EXIT_SYSTEM_EVENT);
      view.setUint32(O('system_event.type'), type, true);
      view.setUint32(O('system_event.ndata'), data.length, true);
      data.forEach((w, i) => view.setBigUint64(O('system_event.data') + 8 * i, w, true));
    },
  };
}

/** `KVM_EXIT_HYPERCALL`; the `ret` written by the handler is recorded. */
export function hypercall(nr: bigint, args: bigint[] = [], longmode = 1): ScriptedExit {
  return {
    label: `Hypercall(${nr})`,
    write(view, bytes) {
      clearExit(view, bytes, kvm.KVM_EXIT_HYPERCALL);
      view.setBigUint64(O('hypercall.nr'), nr, true);
      args.slice(0, 6).forEach((a, i) => view.setBigUint64(O('hypercall.args') + 8 * i, a, true));
      view.setUint32(O('hypercall.longmode'), longmode, true);
    },
    answer: (view) => view.getBigUint64(O('hypercall.ret'), true),
  };
}

/** `KVM_EXIT_X86_RDMSR`; the data and error written by the handler are recorded. */
export function rdmsr(index: number, reason: number = kvm.KVM_MSR_EXIT_REASON_UNKNOWN): ScriptedExit {
  return {
    label: `X86Rdmsr(0x${index.toString(16)})`,
    write(view, bytes) {
      clearExit(view, bytes, kvm.KVM_EXIT_X86_RDMSR);
      view.setUint32(O('msr.reason'), reason, true);
      view.setUint32(O('msr.index'), index, true);
    },
    answer: (view) => ({ data: view.getBigUint64(O('msr.data'), true), error: view.getUint8(O('msr.error')) }),
  };
}

/** `KVM_EXIT_X86_WRMSR`; the error written by the handler is recorded. */
export function wrmsr(index: number, data: bigint, reason: number = kvm.KVM_MSR_EXIT_REASON_UNKNOWN): ScriptedExit {
  return {
    label: `X86Wrmsr(0x${index.toString(16)})`,
    write(view, bytes) {
      clearExit(view, bytes, kvm.KVM_EXIT_X86_WRMSR);
      view.setUint32(O('msr.reason'), reason, true);
      view.setUint32(O('msr.index'), index, true);
      view.setBigUint64(O('msr.data'), data, true);
    },
    answer: (view) => ({ error: view.getUint8(O('msr.error')) }),
  };
}

/** `KVM_EXIT_DEBUG` (x86 `kvm_debug_exit_arch`). */
export function debugExit(pc: bigint, exception = 1, dr6 = 0n, dr7 = 0n): ScriptedExit {
  return {
    label: 'Debug',
    write(view, bytes) {
      clearExit(view, bytes, kvm.KVM_EXIT_DEBUG);
      view.setUint32(O('debug.arch.exception'), exception, true);
      view.setBigUint64(O('debug.arch.pc'), pc, true);
      view.setBigUint64(O('debug.arch.dr6'), dr6, true);
      view.setBigUint64(O('debug.arch.dr7'), dr7, true);
    },
  };
}

/** KVM_RUN fails with this errno (e.g. `'EINTR'`, `'EFAULT'`). */
export function runError(code: string): ScriptedExit {
  return { label: `error ${code}`, error: code, write: () => undefined };
}
