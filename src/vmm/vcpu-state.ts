/**
 * The KVM state of an x86_64 vCPU and of a VM's in-kernel devices, saved and restored in the
 * order the kernel needs (the order Firecracker and Cloud Hypervisor use; the reason for each step
 * is next to it). The state is plain, structured-cloneable data (no class instances), so it can be
 * sent to another thread or written to a file. These are the building blocks of snapshots; the
 * vCPUs must be stopped (not inside `KVM_RUN`) while they run.
 *
 * @module
 */
import type {
  KvmClockData,
  KvmCpuidEntry2,
  KvmDebugregs,
  KvmIrqchip,
  KvmLapicState,
  KvmMpState,
  KvmPitState2,
  KvmRegs,
  KvmSregs,
  KvmVcpuEvents,
  KvmXcrs,
} from '../abi/layouts';
import { KvmError, KvmRangeError } from '../abi/errors';
import { checkObject, invalidType } from '../abi/validate';
import { CpuId, Msrs } from '../wrappers/fam';
import { Kvm } from '../wrappers/kvm';
import { VcpuFd, Xsave } from '../wrappers/vcpu-fd';
import { VmFd } from '../wrappers/vm-fd';

/** `MSR_IA32_TSC_DEADLINE`: restored last (see {@link restoreVcpuState}). */
const MSR_TSC_DEADLINE = 0x6e0;
/** `MSR_IA32_TSC`. */
const MSR_TSC = 0x10;
/** `KVM_GET_MSRS` takes at most this many entries per call. */
const MSR_CHUNK = 256;

/** One vCPU's state. */
export interface VcpuState {
  /** The vCPU's id (its APIC id). */
  id: number;
  cpuid: KvmCpuidEntry2[];
  mpState: KvmMpState;
  regs: KvmRegs;
  sregs: KvmSregs;
  /** The XSAVE area (`KVM_GET_XSAVE2`'s size where the host has it, else 4 KiB). */
  xsave: Uint8Array;
  xcrs: KvmXcrs;
  debugRegs: KvmDebugregs;
  /** The LAPIC (absent without the in-kernel irqchip). */
  lapic?: KvmLapicState;
  /** The guest TSC frequency, when the host reports it. */
  tscKhz?: number;
  /** The MSRs KVM lists as saveable that this vCPU could read, in index order. */
  msrs: Array<{ index: number; data: bigint }>;
  vcpuEvents: KvmVcpuEvents;
}

/** The VM's in-kernel device state. */
export interface VmState {
  /** The PIT (absent without one). */
  pit2?: KvmPitState2;
  clock: KvmClockData;
  /** PIC master, PIC slave, IOAPIC (absent without the in-kernel irqchip). */
  irqchips?: [KvmIrqchip, KvmIrqchip, KvmIrqchip];
}

/** The MSR indices `kvm` says are worth saving (`KVM_GET_MSR_INDEX_LIST`). */
export function saveableMsrs(kvm: Kvm): number[] {
  if (!(kvm instanceof Kvm)) invalidType('kvm', 'a Kvm', kvm);
  return [...kvm.getMsrIndexList().entries].sort((a, b) => a - b);
}

/** Reads `indices` in chunks; an index the vCPU refuses is left out (KVM stops a chunk at it). */
function readMsrs(vcpu: VcpuFd, indices: readonly number[]): Array<{ index: number; data: bigint }> {
  const out: Array<{ index: number; data: bigint }> = [];
  let rest = [...indices];
  while (rest.length > 0) {
    const chunk = rest.slice(0, MSR_CHUNK);
    const msrs = new Msrs(chunk.map((index) => ({ index })));
    const n = vcpu.getMsrs(msrs);
    for (let i = 0; i < n; i++) out.push({ index: msrs.entries[i].index, data: msrs.entries[i].data });
    // KVM stops at the first MSR it cannot read: skip it and go on with the next.
    rest = rest.slice(n < chunk.length ? n + 1 : n);
  }
  return out;
}

/**
 * Saves a stopped vCPU's state, in the order the kernel needs: MP state first (reading it makes
 * KVM accept pending INIT/SIPI events, which may change the rest), then regs, sregs, XSAVE, XCRs,
 * debug registers, the LAPIC, the TSC frequency, CPUID, the MSRs, and the vCPU events last (the
 * other reads may change what is pending).
 *
 * @example
 * ```ts
 * // @ts-setup: declare const kvm: import('kvm-rx').Kvm;
 * const state = saveVcpuState(kvm, vcpu); // the vCPU is not running
 * ```
 * @throws {@link KvmError} from the ioctls (`ERR_KVM_VCPU_RUNNING` while a worker runs it);
 *   `TypeError` for arguments of the wrong kind
 */
export function saveVcpuState(kvm: Kvm, vcpu: VcpuFd, msrIndices: readonly number[] = saveableMsrs(kvm)): VcpuState {
  if (!(kvm instanceof Kvm)) invalidType('kvm', 'a Kvm', kvm);
  if (!(vcpu instanceof VcpuFd)) invalidType('vcpu', 'a VcpuFd', vcpu);
  if (!Array.isArray(msrIndices)) invalidType('msrIndices', 'an array of MSR indices', msrIndices);
  const mpState = vcpu.getMpState();
  const regs = vcpu.getRegs();
  const sregs = vcpu.getSregs();
  const xsave = vcpu.getXsave2().bytes.slice();
  const xcrs = vcpu.getXcrs();
  const debugRegs = vcpu.getDebugRegs();
  let lapic: KvmLapicState | undefined;
  try {
    lapic = vcpu.getLapic();
  } catch (e) {
    if (!(e instanceof KvmError) || (e.code !== 'EINVAL' && e.code !== 'ENXIO')) throw e; // no in-kernel LAPIC
  }
  let tscKhz: number | undefined;
  try {
    tscKhz = vcpu.getTscKhz();
  } catch (e) {
    if (!(e instanceof KvmError)) throw e; // no KVM_CAP_GET_TSC_KHZ: the frequency is not saved
  }
  const cpuid = [...vcpu.getCpuid2(256).entries];
  const msrs = readMsrs(vcpu, msrIndices);
  const vcpuEvents = vcpu.getVcpuEvents();
  return {
    id: vcpu.id,
    cpuid,
    mpState,
    regs,
    sregs,
    xsave,
    xcrs,
    debugRegs,
    ...(lapic ? { lapic } : {}),
    ...(tscKhz !== undefined ? { tscKhz } : {}),
    msrs,
    vcpuEvents,
  };
}

/**
 * Restores a vCPU's state onto a fresh vCPU (same id) of a VM built like the saved one (irqchip,
 * PIT and memory before this). Each step's place is the kernel's requirement:
 * 1. the TSC frequency first, before anything reads the TSC, when it was saved and differs;
 * 2. CPUID, because other set ioctls (MP state, MSRs) check what the vCPU is (BSP, features);
 * 3. MP state; 4. regs, which clear pending exceptions, so before the events that restore them;
 * 5. sregs, which restore the APIC base, so before the LAPIC; 6. XSAVE, XCRs, debug registers;
 * 7. the LAPIC, before the MSRs (TSC_DEADLINE needs a configured LAPIC);
 * 8. the MSRs, with TSC_DEADLINE last (after TSC: KVM compares the deadline with the guest TSC);
 * 9. the vCPU events last; 10. `KVM_KVMCLOCK_CTRL`, so the guest does not see the pause as a
 *    soft lockup (where the host supports it).
 *
 * @example
 * ```ts
 * // @ts-setup: declare const state: import('kvm-rx').VcpuState;
 * restoreVcpuState(vm.createVcpu(state.id), state);
 * ```
 * @throws {@link KvmError} from the ioctls; `RangeError` `ERR_OUT_OF_RANGE` when the vCPU's id
 *   differs or KVM set fewer MSRs than saved (naming the first one it refused)
 */
export function restoreVcpuState(vcpu: VcpuFd, state: VcpuState): void {
  if (!(vcpu instanceof VcpuFd)) invalidType('vcpu', 'a VcpuFd', vcpu);
  checkObject('state', state);
  // The shape first, so that a malformed state is refused before any ioctl changes the vCPU.
  if (!Array.isArray(state.cpuid)) invalidType('state.cpuid', 'an array of CPUID entries', state.cpuid);
  if (!Array.isArray(state.msrs)) invalidType('state.msrs', 'an array of { index, data }', state.msrs);
  if (!(state.xsave instanceof Uint8Array)) invalidType('state.xsave', 'a Uint8Array', state.xsave);
  for (const k of ['mpState', 'regs', 'sregs', 'xcrs', 'debugRegs', 'vcpuEvents'] as const)
    checkObject(`state.${k}`, state[k]);
  if (state.lapic !== undefined) checkObject('state.lapic', state.lapic);
  for (const [i, m] of state.msrs.entries()) {
    checkObject(`state.msrs[${i}]`, m);
    if (!Number.isInteger(m.index) || typeof m.data !== 'bigint')
      invalidType(`state.msrs[${i}]`, '{ index: number, data: bigint }', m);
  }
  if (vcpu.id !== state.id)
    throw new KvmRangeError('ERR_OUT_OF_RANGE', `the state is vCPU ${state.id}'s; this is vCPU ${vcpu.id}`);
  if (state.tscKhz !== undefined) {
    let current: number | undefined;
    try {
      current = vcpu.getTscKhz();
    } catch (e) {
      if (!(e instanceof KvmError)) throw e;
    }
    if (current !== state.tscKhz) vcpu.setTscKhz(state.tscKhz);
  }
  vcpu.setCpuid2(new CpuId(state.cpuid));
  vcpu.setMpState(state.mpState);
  vcpu.setRegs(state.regs);
  vcpu.setSregs(state.sregs);
  const xsave = new Xsave(state.xsave.length);
  xsave.bytes.set(state.xsave);
  vcpu.setXsave2(xsave);
  vcpu.setXcrs(state.xcrs);
  vcpu.setDebugRegs(state.debugRegs);
  if (state.lapic) vcpu.setLapic(state.lapic);
  const deadline = state.msrs.filter((m) => m.index === MSR_TSC_DEADLINE);
  const tscFirst = [
    ...state.msrs.filter((m) => m.index === MSR_TSC),
    ...state.msrs.filter((m) => m.index !== MSR_TSC && m.index !== MSR_TSC_DEADLINE),
  ];
  for (const list of [tscFirst, deadline]) {
    for (let i = 0; i < list.length; i += MSR_CHUNK) {
      const chunk = list.slice(i, i + MSR_CHUNK);
      const n = vcpu.setMsrs(chunk);
      if (n !== chunk.length)
        throw new KvmRangeError(
          'ERR_OUT_OF_RANGE',
          `KVM set ${i + n} of the ${state.msrs.length} saved MSRs; it refused MSR 0x${chunk[n].index.toString(16)}`,
        );
    }
  }
  vcpu.setVcpuEvents(state.vcpuEvents);
  try {
    vcpu.kvmclockCtrl();
  } catch (e) {
    // EINVAL when the guest has no kvmclock set up; ENOTTY without the capability.
    if (!(e instanceof KvmError)) throw e;
  }
}

/**
 * Saves the VM's in-kernel device state: the PIT, the kvmclock, PIC master and slave, IOAPIC
 * (after the vCPUs, which are stopped, so no interrupt changes it meanwhile).
 *
 * @example `const vmState = saveVmState(vm);`
 * @throws {@link KvmError} from the ioctls
 */
export function saveVmState(vm: VmFd): VmState {
  if (!(vm instanceof VmFd)) invalidType('vm', 'a VmFd', vm);
  const clock = vm.getClock();
  let pit2: KvmPitState2 | undefined;
  let irqchips: VmState['irqchips'];
  try {
    irqchips = [vm.getIrqchip(0), vm.getIrqchip(1), vm.getIrqchip(2)];
  } catch (e) {
    if (!(e instanceof KvmError) || e.code !== 'ENXIO') throw e; // no in-kernel irqchip
  }
  try {
    pit2 = vm.getPit2();
  } catch (e) {
    if (!(e instanceof KvmError) || e.code !== 'ENXIO') throw e; // no PIT
  }
  return { clock, ...(pit2 ? { pit2 } : {}), ...(irqchips ? { irqchips } : {}) };
}

/**
 * Restores the VM's in-kernel device state, after every vCPU's: the PIT, then the clock (flags
 * cleared: the saved time, not "now"), then the PICs and the IOAPIC (which the vCPU restores could
 * otherwise have changed).
 *
 * @example
 * ```ts
 * // @ts-setup: declare const vmState: VmState;
 * restoreVmState(vm, vmState);
 * ```
 * @throws {@link KvmError} from the ioctls (ENXIO when the saved VM had an irqchip or PIT this one lacks)
 */
export function restoreVmState(vm: VmFd, state: VmState): void {
  if (!(vm instanceof VmFd)) invalidType('vm', 'a VmFd', vm);
  checkObject('state', state);
  checkObject('state.clock', state.clock);
  if (state.pit2 !== undefined) checkObject('state.pit2', state.pit2);
  if (state.irqchips !== undefined && (!Array.isArray(state.irqchips) || state.irqchips.length !== 3))
    invalidType('state.irqchips', 'three irqchip states (PIC master, PIC slave, IOAPIC)', state.irqchips);
  if (state.pit2) vm.setPit2(state.pit2);
  vm.setClock({ ...state.clock, flags: 0 });
  if (state.irqchips) for (const chip of state.irqchips) vm.setIrqchip(chip);
}
