/**
 * Mock CPUID and MSR ioctls, on the system fd and on vCPU fds, with the kernel's protocol:
 *
 * - `KVM_GET_SUPPORTED_CPUID` / `KVM_GET_EMULATED_CPUID`: E2BIG when `nent` is below 1 or below
 *   the table's size (nent is then left as it was); otherwise the leaves and `nent` = their count.
 * - `KVM_GET_MSR_INDEX_LIST` / `..._FEATURE_INDEX_LIST`: `nmsrs` is always written back with the
 *   real count, then E2BIG if the room was smaller.
 * - `KVM_GET_MSRS` / `KVM_SET_MSRS`: E2BIG for `nmsrs` >= 256 (the kernel's MAX_IO_MSRS); entries are
 *   processed in order and the first one that fails stops the loop; the result is the count done.
 *   The system fd reads feature MSRs (their value) and to-be-saved MSRs (0).
 * - vCPU `KVM_SET_CPUID2` (E2BIG above 256 leaves; EINVAL after the first KVM_RUN unless identical)
 *   and `KVM_GET_CPUID2` (E2BIG when `nent` is below the stored count; a fresh vCPU has none).
 *
 * @module
 */
import { decodeStruct, dv, encodeStruct, offsetOf } from '../../abi/codec';
import { ioctls } from '../../abi/kvm-constants';
import {
  kvm_cpuid2,
  kvm_cpuid_entry2,
  kvm_msr_entry,
  kvm_msr_list,
  kvm_msrs,
  type KvmCpuidEntry2,
} from '../../abi/layouts';
import { EMULATED_CPUID, FEATURE_MSRS, MSR_INDEX_LIST, SUPPORTED_CPUID } from './cpuid-data';
import { fail, type MockContext, type MockFile, type MockIoctl, type MockVcpu } from './state';

type SystemFile = Extract<MockFile, { kind: 'system' }>;
type VcpuFile = Extract<MockFile, { kind: 'vcpu' }>;

const KVM_MAX_CPUID_ENTRIES = 256;
/** `MAX_IO_MSRS` in arch/x86/kvm/x86.c. */
const MAX_IO_MSRS = 256;
const CPUID_ENTRIES = offsetOf(kvm_cpuid2, 'entries');
const MSRS_ENTRIES = offsetOf(kvm_msrs, 'entries');
const MSR_LIST_INDICES = offsetOf(kvm_msr_list, 'indices');
const MSR_DATA = offsetOf(kvm_msr_entry, 'data');

const MSR_EFER = 0xc000_0080;
/** EFER bits a guest may set (SCE, LME, LMA, NXE, SVME, LMSLE, FFXSR, TCE). */
const EFER_VALID = 0xfd01n;

function readCpuid(ctx: MockContext, arg: unknown, request: string): { bytes: Uint8Array; nent: number } {
  const head = ctx.bytes(arg as never, request, CPUID_ENTRIES);
  return { bytes: head, nent: dv(head).getUint32(0, true) };
}

function writeCpuid(ctx: MockContext, bytes: Uint8Array, request: string, leaves: readonly KvmCpuidEntry2[]): void {
  if (bytes.length < CPUID_ENTRIES + leaves.length * kvm_cpuid_entry2.size)
    fail('EFAULT', request, 'entries buffer too small');
  const view = dv(bytes);
  leaves.forEach((e, i) => encodeStruct(kvm_cpuid_entry2, e, view, CPUID_ENTRIES + i * kvm_cpuid_entry2.size));
  view.setUint32(0, leaves.length, true);
}

function systemCpuid(table: readonly KvmCpuidEntry2[], request: string): MockIoctl<SystemFile> {
  return (ctx, _f, arg) => {
    const { bytes, nent } = readCpuid(ctx, arg, request);
    if (nent < 1 || Math.min(nent, KVM_MAX_CPUID_ENTRIES) < table.length) fail('E2BIG', request);
    writeCpuid(ctx, bytes, request, table);
    return 0;
  };
}

function msrList(list: readonly number[], request: string): MockIoctl<SystemFile> {
  return (ctx, _f, arg) => {
    const bytes = ctx.bytes(arg, request, MSR_LIST_INDICES);
    const view = dv(bytes);
    const room = view.getUint32(0, true);
    view.setUint32(0, list.length, true);
    if (room < list.length) fail('E2BIG', request);
    if (bytes.length < MSR_LIST_INDICES + 4 * list.length) fail('EFAULT', request);
    list.forEach((x, i) => view.setUint32(MSR_LIST_INDICES + 4 * i, x, true));
    return 0;
  };
}

/** The `__msr_io` loop: E2BIG for too many, then `fn` per entry until it returns false. */
function msrIo(
  ctx: MockContext,
  arg: unknown,
  request: string,
  fn: (index: number, view: DataView, at: number) => boolean,
): number {
  const head = ctx.bytes(arg as never, request, MSRS_ENTRIES);
  const view = dv(head);
  const n = view.getUint32(0, true);
  if (n >= MAX_IO_MSRS) fail('E2BIG', request);
  if (head.length < MSRS_ENTRIES + n * kvm_msr_entry.size) fail('EFAULT', request);
  let done = 0;
  for (; done < n; done++) {
    const at = MSRS_ENTRIES + done * kvm_msr_entry.size;
    if (!fn(view.getUint32(at, true), view, at)) break;
  }
  return done;
}

const SAVED = new Set(MSR_INDEX_LIST);

/** The vCPU's MSR values (created on first use: every listed MSR, plus EFER, reads 0). */
function vcpuMsrs(vcpu: MockVcpu): Map<number, bigint> {
  let m = vcpu.extra.get('msrs') as Map<number, bigint> | undefined;
  if (!m) {
    m = new Map([...MSR_INDEX_LIST, MSR_EFER].map((i) => [i, 0n]));
    vcpu.extra.set('msrs', m);
  }
  return m;
}

function sameLeaves(a: readonly KvmCpuidEntry2[], b: readonly KvmCpuidEntry2[]): boolean {
  return a.length === b.length && a.every((e, i) => JSON.stringify(e) === JSON.stringify(b[i]));
}

/** System-fd handlers (spread into `systemIoctls`). */
export const cpuidMsrSystemIoctls: Record<number, MockIoctl<SystemFile>> = {
  [ioctls.KVM_GET_SUPPORTED_CPUID]: systemCpuid(SUPPORTED_CPUID, 'KVM_GET_SUPPORTED_CPUID'),
  [ioctls.KVM_GET_EMULATED_CPUID]: systemCpuid(EMULATED_CPUID, 'KVM_GET_EMULATED_CPUID'),
  [ioctls.KVM_GET_MSR_INDEX_LIST]: msrList(MSR_INDEX_LIST, 'KVM_GET_MSR_INDEX_LIST'),
  [ioctls.KVM_GET_MSR_FEATURE_INDEX_LIST]: msrList([...FEATURE_MSRS.keys()], 'KVM_GET_MSR_FEATURE_INDEX_LIST'),
  [ioctls.KVM_GET_MSRS]: (ctx, _f, arg) =>
    msrIo(ctx, arg, 'KVM_GET_MSRS', (index, view, at) => {
      const v = FEATURE_MSRS.get(index) ?? (SAVED.has(index) ? 0n : undefined);
      if (v === undefined) return false;
      view.setBigUint64(at + MSR_DATA, v, true);
      return true;
    }),
};

/** vCPU-fd handlers (spread into `vcpuIoctls`). */
export const cpuidMsrVcpuIoctls: Record<number, MockIoctl<VcpuFile>> = {
  [ioctls.KVM_SET_CPUID2]: (ctx, { vcpu }, arg) => {
    const R = 'KVM_SET_CPUID2';
    const { bytes, nent } = readCpuid(ctx, arg, R);
    if (nent > KVM_MAX_CPUID_ENTRIES) fail('E2BIG', R);
    if (bytes.length < CPUID_ENTRIES + nent * kvm_cpuid_entry2.size) fail('EFAULT', R);
    const leaves: KvmCpuidEntry2[] = [];
    for (let i = 0; i < nent; i++)
      leaves.push(decodeStruct<KvmCpuidEntry2>(kvm_cpuid_entry2, dv(bytes), CPUID_ENTRIES + i * kvm_cpuid_entry2.size));
    const old = (vcpu.extra.get('cpuid') as KvmCpuidEntry2[] | undefined) ?? [];
    if (vcpu.runs > 0 && !sameLeaves(old, leaves)) fail('EINVAL', R, 'CPUID changed after KVM_RUN');
    vcpu.extra.set('cpuid', leaves);
    return 0;
  },
  [ioctls.KVM_GET_CPUID2]: (ctx, { vcpu }, arg) => {
    const R = 'KVM_GET_CPUID2';
    const { bytes, nent } = readCpuid(ctx, arg, R);
    const leaves = (vcpu.extra.get('cpuid') as KvmCpuidEntry2[] | undefined) ?? [];
    if (nent < leaves.length) fail('E2BIG', R);
    writeCpuid(ctx, bytes, R, leaves);
    return 0;
  },
  [ioctls.KVM_GET_MSRS]: (ctx, { vcpu }, arg) => {
    const msrs = vcpuMsrs(vcpu);
    return msrIo(ctx, arg, 'KVM_GET_MSRS', (index, view, at) => {
      const v = msrs.get(index);
      if (v === undefined) return false;
      view.setBigUint64(at + MSR_DATA, v, true);
      return true;
    });
  },
  [ioctls.KVM_SET_MSRS]: (ctx, { vcpu }, arg) => {
    const msrs = vcpuMsrs(vcpu);
    return msrIo(ctx, arg, 'KVM_SET_MSRS', (index, view, at) => {
      if (!msrs.has(index)) return false;
      const data = view.getBigUint64(at + MSR_DATA, true);
      if (index === MSR_EFER && (data & ~EFER_VALID) !== 0n) return false;
      msrs.set(index, data);
      return true;
    });
  },
};
