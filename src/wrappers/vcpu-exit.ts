/**
 * `VcpuExit`: why `KVM_RUN` returned, as a discriminated union on `kind` whose values are
 * kvm-ioctls' variant names.
 *
 * The `data` of `IoIn` and `MmioRead`, `ret` of `Hypercall`, and `data`/`error` of `X86Rdmsr` are
 * live views into the vCPU's `kvm_run`: what you write there is what the guest gets when the vCPU
 * runs again. Every view is valid only until the next `run()`.
 *
 * @module
 */
import { KvmError, errnoOf } from '../abi/errors';
import { kvm } from '../abi/kvm-constants';
import { RUN } from './kvm-run';

/** `KVM_EXIT_IO` out: the guest wrote `data` (`size * count` bytes) to `port`. */
export interface IoOutExit {
  kind: 'IoOut';
  port: number;
  size: number;
  count: number;
  data: Uint8Array;
}
/** `KVM_EXIT_IO` in: fill `data` (`size * count` bytes) with what the guest reads from `port`. */
export interface IoInExit {
  kind: 'IoIn';
  port: number;
  size: number;
  count: number;
  data: Uint8Array;
}
/** `KVM_EXIT_MMIO` read: fill `data` (`len` bytes) with what the guest reads at `addr`. */
export interface MmioReadExit {
  kind: 'MmioRead';
  addr: bigint;
  data: Uint8Array;
}
/** `KVM_EXIT_MMIO` write: the guest wrote `data` at `addr`. */
export interface MmioWriteExit {
  kind: 'MmioWrite';
  addr: bigint;
  data: Uint8Array;
}
/** `KVM_EXIT_HYPERCALL`; set `ret` to answer. */
export interface HypercallExit {
  kind: 'Hypercall';
  nr: bigint;
  args: bigint[];
  longmode: number;
  ret: bigint;
}
/** `KVM_EXIT_DEBUG` (x86: `kvm_debug_exit_arch`). */
export interface DebugExit {
  kind: 'Debug';
  exception: number;
  pc: bigint;
  dr6: bigint;
  dr7: bigint;
}
/** `KVM_EXIT_FAIL_ENTRY`. */
export interface FailEntryExit {
  kind: 'FailEntry';
  hardwareEntryFailureReason: bigint;
  cpu: number;
}
/** `KVM_EXIT_EXCEPTION`. */
export interface ExceptionExit {
  kind: 'Exception';
  exception: number;
  errorCode: number;
}
/** `KVM_EXIT_UNKNOWN`. */
export interface UnknownExit {
  kind: 'Unknown';
  hardwareExitReason: bigint;
}
/** `KVM_EXIT_INTERNAL_ERROR`, with the suberror and its data words (kvm-ioctls drops these). */
export interface InternalErrorExit {
  kind: 'InternalError';
  suberror: number;
  data: bigint[];
}
/** `KVM_EXIT_SYSTEM_EVENT`. */
export interface SystemEventExit {
  kind: 'SystemEvent';
  type: number;
  data: bigint[];
}
/** `KVM_EXIT_IOAPIC_EOI`. */
export interface IoapicEoiExit {
  kind: 'IoapicEoi';
  vector: number;
}
/** `KVM_EXIT_TPR_ACCESS`. */
export interface TprAccessExit {
  kind: 'TprAccess';
  rip: bigint;
  isWrite: number;
}
/** `KVM_EXIT_X86_RDMSR`: set `data` (and `error` to 1 to inject #GP). */
export interface X86RdmsrExit {
  kind: 'X86Rdmsr';
  reason: number;
  index: number;
  data: bigint;
  error: number;
}
/** `KVM_EXIT_X86_WRMSR`: set `error` to 1 to inject #GP. */
export interface X86WrmsrExit {
  kind: 'X86Wrmsr';
  reason: number;
  index: number;
  data: bigint;
  error: number;
}
/** `KVM_EXIT_MEMORY_FAULT` (KVM_RUN failed with EFAULT/EHWPOISON and described the fault). */
export interface MemoryFaultExit {
  kind: 'MemoryFault';
  flags: bigint;
  gpa: bigint;
  size: bigint;
}
/** Any exit reason kvm-ioctls does not decode; `reason` is the raw `KVM_EXIT_*` number. */
export interface UnsupportedExit {
  kind: 'Unsupported';
  reason: number;
}

/** Exits without a payload. */
export interface BareExit {
  kind:
    | 'Hlt'
    | 'IrqWindowOpen'
    | 'Shutdown'
    | 'Intr'
    | 'SetTpr'
    | 'S390Sieic'
    | 'S390Reset'
    | 'Dcr'
    | 'Nmi'
    | 'Osi'
    | 'PaprHcall'
    | 'S390Ucontrol'
    | 'Watchdog'
    | 'S390Tsch'
    | 'Epr'
    | 'S390Stsi'
    | 'Hyperv';
}

/** Why `KVM_RUN` returned. Discriminate on `kind`. */
export type VcpuExit =
  | IoOutExit
  | IoInExit
  | MmioReadExit
  | MmioWriteExit
  | HypercallExit
  | DebugExit
  | FailEntryExit
  | ExceptionExit
  | UnknownExit
  | InternalErrorExit
  | SystemEventExit
  | IoapicEoiExit
  | TprAccessExit
  | X86RdmsrExit
  | X86WrmsrExit
  | MemoryFaultExit
  | UnsupportedExit
  | BareExit;

/** Every `kind` of {@link VcpuExit}: the 34 variants of kvm-ioctls. */
export const VCPU_EXIT_KINDS = [
  'Unknown',
  'Exception',
  'IoIn',
  'IoOut',
  'Hypercall',
  'Debug',
  'Hlt',
  'MmioRead',
  'MmioWrite',
  'IrqWindowOpen',
  'Shutdown',
  'FailEntry',
  'Intr',
  'SetTpr',
  'TprAccess',
  'S390Sieic',
  'S390Reset',
  'Dcr',
  'Nmi',
  'InternalError',
  'Osi',
  'PaprHcall',
  'S390Ucontrol',
  'Watchdog',
  'S390Tsch',
  'Epr',
  'SystemEvent',
  'S390Stsi',
  'IoapicEoi',
  'Hyperv',
  'X86Rdmsr',
  'X86Wrmsr',
  'MemoryFault',
  'Unsupported',
] as const satisfies ReadonlyArray<VcpuExit['kind']>;

const BARE: Record<number, BareExit['kind']> = {
  [kvm.KVM_EXIT_HLT]: 'Hlt',
  [kvm.KVM_EXIT_IRQ_WINDOW_OPEN]: 'IrqWindowOpen',
  [kvm.KVM_EXIT_SHUTDOWN]: 'Shutdown',
  [kvm.KVM_EXIT_INTR]: 'Intr',
  [kvm.KVM_EXIT_SET_TPR]: 'SetTpr',
  [kvm.KVM_EXIT_S390_SIEIC]: 'S390Sieic',
  [kvm.KVM_EXIT_S390_RESET]: 'S390Reset',
  [kvm.KVM_EXIT_DCR]: 'Dcr',
  [kvm.KVM_EXIT_NMI]: 'Nmi',
  [kvm.KVM_EXIT_OSI]: 'Osi',
  [kvm.KVM_EXIT_PAPR_HCALL]: 'PaprHcall',
  [kvm.KVM_EXIT_S390_UCONTROL]: 'S390Ucontrol',
  [kvm.KVM_EXIT_WATCHDOG]: 'Watchdog',
  [kvm.KVM_EXIT_S390_TSCH]: 'S390Tsch',
  [kvm.KVM_EXIT_EPR]: 'Epr',
  [kvm.KVM_EXIT_S390_STSI]: 'S390Stsi',
  [kvm.KVM_EXIT_HYPERV]: 'Hyperv',
};

/**
 * The PIO data view of the last IO exit decoded on this thread, reused while the mapping, offset
 * and length stay the same (the kernel keeps data_offset fixed): a view of the same bytes either
 * way, without allocating one per exit. It is detached with the mapping like any other view.
 */
let lastIo: { bytes: Uint8Array; off: number; len: number; data: Uint8Array } | undefined;

function ioData(bytes: Uint8Array, off: number, len: number): Uint8Array {
  const c = lastIo;
  if (c !== undefined && c.bytes === bytes && c.off === off && c.len === len) return c.data;
  const data = bytes.subarray(off, off + len);
  lastIo = { bytes, off, len, data };
  return data;
}

function u64s(view: DataView, at: number, n: number): bigint[] {
  const out: bigint[] = [];
  for (let i = 0; i < n; i++) out.push(view.getBigUint64(at + 8 * i, true));
  return out;
}

/**
 * Decodes the exit in a `kvm_run` mapping after `KVM_RUN` returned 0.
 *
 * @param view - DataView over the whole kvm_run mapping
 * @param bytes - Uint8Array over the same mapping
 * @throws {@link KvmError} EINVAL for an IO exit with an unknown direction (as kvm-ioctls)
 */
export function decodeExit(view: DataView, bytes: Uint8Array): VcpuExit {
  const reason = view.getUint32(RUN.exitReason, true);
  switch (reason) {
    case kvm.KVM_EXIT_IO: {
      const direction = view.getUint8(RUN.ioDirection);
      const size = view.getUint8(RUN.ioSize);
      const port = view.getUint16(RUN.ioPort, true);
      const count = view.getUint32(RUN.ioCount, true);
      // data_offset is a u64; two u32 reads spare a BigInt per exit.
      const off = view.getUint32(RUN.ioDataOffset, true) + view.getUint32(RUN.ioDataOffset + 4, true) * 2 ** 32;
      const len = size * count;
      if (off + len > bytes.length)
        throw new KvmError(errnoOf('EINVAL'), 'ioctl', { request: 'KVM_RUN', detail: 'io data outside kvm_run' });
      const data = ioData(bytes, off, len);
      if (direction === kvm.KVM_EXIT_IO_OUT) return { kind: 'IoOut', port, size, count, data };
      if (direction === kvm.KVM_EXIT_IO_IN) return { kind: 'IoIn', port, size, count, data };
      throw new KvmError(errnoOf('EINVAL'), 'ioctl', { request: 'KVM_RUN', detail: `io direction ${direction}` });
    }
    case kvm.KVM_EXIT_MMIO: {
      const addr = view.getBigUint64(RUN.mmioPhysAddr, true);
      const len = Math.min(view.getUint32(RUN.mmioLen, true), 8);
      const data = bytes.subarray(RUN.mmioData, RUN.mmioData + len);
      return view.getUint8(RUN.mmioIsWrite) !== 0
        ? { kind: 'MmioWrite', addr, data }
        : { kind: 'MmioRead', addr, data };
    }
    case kvm.KVM_EXIT_HYPERCALL:
      return {
        kind: 'Hypercall',
        nr: view.getBigUint64(RUN.hypercallNr, true),
        args: u64s(view, RUN.hypercallArgs, 6),
        longmode: view.getUint32(RUN.hypercallLongmode, true),
        get ret(): bigint {
          return view.getBigUint64(RUN.hypercallRet, true);
        },
        set ret(v: bigint) {
          view.setBigUint64(RUN.hypercallRet, BigInt.asUintN(64, v), true);
        },
      };
    case kvm.KVM_EXIT_DEBUG:
      return {
        kind: 'Debug',
        exception: view.getUint32(RUN.debugException, true),
        pc: view.getBigUint64(RUN.debugPc, true),
        dr6: view.getBigUint64(RUN.debugDr6, true),
        dr7: view.getBigUint64(RUN.debugDr7, true),
      };
    case kvm.KVM_EXIT_FAIL_ENTRY:
      return {
        kind: 'FailEntry',
        hardwareEntryFailureReason: view.getBigUint64(RUN.failEntryReason, true),
        cpu: view.getUint32(RUN.failEntryCpu, true),
      };
    case kvm.KVM_EXIT_EXCEPTION:
      return {
        kind: 'Exception',
        exception: view.getUint32(RUN.exException, true),
        errorCode: view.getUint32(RUN.exErrorCode, true),
      };
    case kvm.KVM_EXIT_UNKNOWN:
      return { kind: 'Unknown', hardwareExitReason: view.getBigUint64(RUN.hwExitReason, true) };
    case kvm.KVM_EXIT_INTERNAL_ERROR: {
      const n = Math.min(view.getUint32(RUN.internalNdata, true), 16);
      return {
        kind: 'InternalError',
        suberror: view.getUint32(RUN.internalSuberror, true),
        data: u64s(view, RUN.internalData, n),
      };
    }
    case kvm.KVM_EXIT_SYSTEM_EVENT: {
      const n = Math.min(view.getUint32(RUN.systemEventNdata, true), 16); // ndata is a u32
      return {
        kind: 'SystemEvent',
        type: view.getUint32(RUN.systemEventType, true),
        data: u64s(view, RUN.systemEventData, n),
      };
    }
    case kvm.KVM_EXIT_IOAPIC_EOI:
      return { kind: 'IoapicEoi', vector: view.getUint8(RUN.eoiVector) };
    case kvm.KVM_EXIT_TPR_ACCESS:
      return {
        kind: 'TprAccess',
        rip: view.getBigUint64(RUN.tprRip, true),
        isWrite: view.getUint32(RUN.tprIsWrite, true),
      };
    case kvm.KVM_EXIT_X86_RDMSR:
    case kvm.KVM_EXIT_X86_WRMSR: {
      const base = {
        reason: view.getUint32(RUN.msrReason, true),
        index: view.getUint32(RUN.msrIndex, true),
        get error(): number {
          return view.getUint8(RUN.msrError);
        },
        set error(v: number) {
          view.setUint8(RUN.msrError, v);
        },
      };
      if (reason === kvm.KVM_EXIT_X86_WRMSR) {
        return Object.defineProperties(
          { kind: 'X86Wrmsr', data: view.getBigUint64(RUN.msrData, true) },
          Object.getOwnPropertyDescriptors(base),
        ) as X86WrmsrExit;
      }
      return Object.defineProperties(
        {
          kind: 'X86Rdmsr',
          get data(): bigint {
            return view.getBigUint64(RUN.msrData, true);
          },
          set data(v: bigint) {
            view.setBigUint64(RUN.msrData, BigInt.asUintN(64, v), true);
          },
        },
        Object.getOwnPropertyDescriptors(base),
      ) as X86RdmsrExit;
    }
    case kvm.KVM_EXIT_MEMORY_FAULT:
      return memoryFault(view);
    default: {
      const bare = BARE[reason];
      if (bare !== undefined) return { kind: bare };
      return { kind: 'Unsupported', reason };
    }
  }
}

/** Decodes `kvm_run.memory_fault` (valid only after KVM_RUN failed with EFAULT/EHWPOISON). */
export function memoryFault(view: DataView): MemoryFaultExit {
  return {
    kind: 'MemoryFault',
    flags: view.getBigUint64(RUN.memoryFaultFlags, true),
    gpa: view.getBigUint64(RUN.memoryFaultGpa, true),
    size: view.getBigUint64(RUN.memoryFaultSize, true),
  };
}
