/**
 * `VcpuFd`: a virtual CPU.
 *
 * @module
 */
import { arm64Ioctls, kvm_vcpu_init, regSize, type KvmVcpuInit } from '../abi/arm64';
import { KvmError, errnoOf } from '../abi/errors';
import { decodeStruct, dv, structBytes } from '../abi/codec';
import { ioctls, kvm } from '../abi/kvm-constants';
import { kvm_one_reg, kvm_regs, kvm_sregs, type KvmRegs, type KvmSregs } from '../abi/layouts';
import { checkBytes, checkI32, checkInt, checkU64, invalidType } from '../abi/validate';
import type { IoctlBackend } from '../backend/types';
import { deviceAttrBytes, type DeviceAttr } from './device-attr';
import { CpuId, famBuffer, famCount, KVM_MAX_CPUID_ENTRIES, KVM_MAX_REG_LIST_ENTRIES, Msrs, RegList, type CpuIdEntryInput, type MsrEntryInput } from './fam';
import { FdOwner } from './fd';
import { KvmRunWrapper, RUN } from './kvm-run';
import { decodeExit, memoryFault, type VcpuExit } from './vcpu-exit';
import type { VmFd } from './vm-fd';

/**
 * A vCPU (kvm-ioctls' `VcpuFd`): its fd and its mmapped `kvm_run`. Closed by its VM.
 *
 * All vCPU ioctls block while this vCPU is inside `KVM_RUN` on another thread (the kernel's vCPU
 * mutex); the worker runtime routes them to the vCPU's own thread.
 *
 * @example
 * ```ts
 * using vcpu = vm.createVcpu(0);
 * const regs = vcpu.getRegs();
 * regs.rip = 0x1000n;
 * vcpu.setRegs(regs);
 * const exit = vcpu.run();
 * ```
 */
export class VcpuFd extends FdOwner {
  protected readonly label: string;
  /** The id given to `createVcpu` (-1 when adopted from a raw fd). */
  readonly id: number;
  /** The VM this vCPU belongs to. */
  readonly vm: VmFd;
  readonly #run: KvmRunWrapper;
  readonly #view: DataView;
  readonly #bytes: Uint8Array;

  /** @internal Use `VmFd#createVcpu()`. */
  constructor(backend: IoctlBackend, fd: number, runSize: number, id: number, vm: VmFd) {
    super(backend, fd);
    this.id = id;
    this.vm = vm;
    this.label = id >= 0 ? `VcpuFd ${id}` : 'VcpuFd';
    this.#run = KvmRunWrapper.mmapFromFd(backend, fd, runSize);
    this.#view = this.#run.asMutRef();
    this.#bytes = this.#run.bytes;
    this.onClosed(() => this.#run.close());
  }

  /**
   * `KVM_RUN`: runs the guest until it exits, and decodes the exit. Blocks the calling thread
   * while the guest runs, as kvm-ioctls' `run()`; use the worker runtime to keep the event loop free.
   * Views in the exit (`IoIn.data`, `MmioRead.data`, …) are valid until the next `run()`.
   *
   * @example
   * ```ts
   * const exit = vcpu.run();
   * if (exit.kind === 'IoIn') exit.data[0] = 0x42; // the guest's `in` reads 0x42
   * ```
   * @throws {@link KvmError} EINTR (kicked or `immediate_exit` set), EFAULT, EINVAL, …
   *   (a `MemoryFault` exit is returned, not thrown)
   */
  run(): VcpuExit {
    try {
      this.ioctl(ioctls.KVM_RUN);
    } catch (e) {
      if (
        e instanceof KvmError &&
        (e.code === 'EFAULT' || e.code === 'EHWPOISON') &&
        !this.closed &&
        this.#view.getUint32(RUN.exitReason, true) === kvm.KVM_EXIT_MEMORY_FAULT
      ) {
        return memoryFault(this.#view);
      }
      throw e;
    }
    return decodeExit(this.#view, this.#bytes);
  }

  /**
   * The vCPU's `kvm_run` mapping (`get_kvm_run`).
   * @example `vcpu.getKvmRun().immediateExit = 1;`
   */
  getKvmRun(): KvmRunWrapper {
    this.checkOpen();
    return this.#run;
  }

  /**
   * Sets `kvm_run.immediate_exit` (`set_kvm_immediate_exit`): while 1, `KVM_RUN` returns EINTR
   * at once. The kernel never clears it.
   * @example `vcpu.setKvmImmediateExit(1);`
   */
  setKvmImmediateExit(value: number): void {
    checkInt('value', value, 0, 255);
    this.checkOpen();
    this.#run.immediateExit = value;
  }

  /**
   * `KVM_GET_REGS`.
   * @example `const { rip } = vcpu.getRegs();`
   * @throws {@link KvmError}
   */
  getRegs(): KvmRegs {
    const buf = new Uint8Array(kvm_regs.size);
    this.ioctl(ioctls.KVM_GET_REGS, buf);
    return decodeStruct<KvmRegs>(kvm_regs, dv(buf));
  }

  /**
   * `KVM_SET_REGS`. Fields left out are written as 0.
   * @example `vcpu.setRegs({ ...vcpu.getRegs(), rip: 0x1000n, rflags: 2n });`
   * @throws {@link KvmError}; `TypeError`/`RangeError` for bad fields
   */
  setRegs(regs: Partial<KvmRegs>): void {
    this.checkOpen();
    this.ioctl(ioctls.KVM_SET_REGS, structBytes(kvm_regs, regs, 'regs'));
  }

  /**
   * `KVM_GET_SREGS`: segment, control and descriptor-table registers, EFER, APIC base.
   * @example `const sregs = vcpu.getSregs(); sregs.cs.base = 0n;`
   * @throws {@link KvmError}
   */
  getSregs(): KvmSregs {
    const buf = new Uint8Array(kvm_sregs.size);
    this.ioctl(ioctls.KVM_GET_SREGS, buf);
    return decodeStruct<KvmSregs>(kvm_sregs, dv(buf));
  }

  /**
   * `KVM_SET_SREGS`. Take the object from {@link getSregs} and change what you need.
   * @example `vcpu.setSregs(sregs);`
   * @throws {@link KvmError}; `TypeError`/`RangeError` for bad fields
   */
  setSregs(sregs: KvmSregs): void {
    this.checkOpen();
    this.ioctl(ioctls.KVM_SET_SREGS, structBytes(kvm_sregs, sregs, 'sregs'));
  }

  // @section cpuid/msr (setCpuid2, getCpuid2, getMsrs, setMsrs)

  /**
   * `KVM_SET_CPUID2`: the CPUID leaves the guest sees. Call it before the first `run()`; later it
   * only succeeds with identical leaves (EINVAL otherwise).
   * @example `vcpu.setCpuid2(kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES));`
   * @throws {@link KvmError} EINVAL (after the first run with different leaves, or leaves the
   *   kernel rejects), E2BIG (more than the kernel's maximum), ENOMEM
   * @throws `TypeError`/`RangeError` for malformed entries or more than 256 of them
   */
  setCpuid2(cpuid: CpuId | readonly CpuIdEntryInput[]): void {
    const c = cpuid instanceof CpuId ? cpuid : new CpuId(cpuid);
    this.checkOpen();
    this.ioctl(ioctls.KVM_SET_CPUID2, c.encode());
  }

  /**
   * `KVM_GET_CPUID2`: the vCPU's CPUID leaves, in a buffer of `maxEntries` entries (kvm-ioctls'
   * `get_cpuid2`). A vCPU whose CPUID was never set has none. The kernel may store leaves that
   * differ from what was set (it fills in dynamic bits).
   * @example `const leaves = vcpu.getCpuid2(KVM_MAX_CPUID_ENTRIES).entries;`
   * @throws {@link KvmError} ENOMEM when `maxEntries` > 256 (checked before any ioctl); E2BIG from
   *   the kernel when the vCPU holds more than `maxEntries` leaves
   */
  getCpuid2(maxEntries: number): CpuId {
    const n = checkInt('maxEntries', maxEntries, 0, Number.MAX_SAFE_INTEGER);
    if (n > KVM_MAX_CPUID_ENTRIES) {
      throw new KvmError(errnoOf('ENOMEM'), 'ioctl', { request: 'KVM_GET_CPUID2', detail: `maxEntries ${n} > KVM_MAX_CPUID_ENTRIES (${KVM_MAX_CPUID_ENTRIES})` });
    }
    const buf = famBuffer('CpuId', n);
    this.ioctl(ioctls.KVM_GET_CPUID2, buf);
    return CpuId.decode(buf);
  }

  /**
   * `KVM_GET_MSRS`: reads the MSRs listed in `msrs`, updating their `data` in place. The kernel
   * stops at the first MSR it cannot read: only the first `count` entries are valid.
   * @returns the number of MSRs read
   * @example
   * ```ts
   * const msrs = new Msrs([{ index: 0x174 }, { index: 0x175 }]);
   * vcpu.getMsrs(msrs) === 2;
   * ```
   * @throws {@link KvmError} E2BIG for 256 or more entries (the kernel's MAX_IO_MSRS)
   * @throws `TypeError` when `msrs` is not an {@link Msrs}
   */
  getMsrs(msrs: Msrs): number {
    if (!(msrs instanceof Msrs)) invalidType('msrs', 'an instance of Msrs', msrs);
    this.checkOpen();
    const buf = msrs.encode();
    const n = this.ioctl(ioctls.KVM_GET_MSRS, buf);
    msrs.loadFrom(buf);
    return n;
  }

  /**
   * `KVM_SET_MSRS`: writes the MSRs in order, stopping at the first one the kernel refuses
   * (unknown index or invalid value).
   * @returns the number of MSRs written
   * @example `vcpu.setMsrs(new Msrs([{ index: 0x174, data: 0n }, { index: 0x175, data: 1n }])) === 2`
   * @throws {@link KvmError} E2BIG for 256 or more entries
   * @throws `TypeError`/`RangeError` for malformed entries
   */
  setMsrs(msrs: Msrs | readonly MsrEntryInput[]): number {
    const m = msrs instanceof Msrs ? msrs : new Msrs(msrs);
    this.checkOpen();
    return this.ioctl(ioctls.KVM_SET_MSRS, m.encode());
  }

  // @section x86 state (getFpu, setFpu, setCpuid2, getCpuid2, enableCap, getLapic, setLapic, getMsrs, setMsrs, getMpState, setMpState, getXsave, getXsave2, setXsave, setXsave2, getXcrs, setXcrs, getDebugRegs, setDebugRegs, getVcpuEvents, setVcpuEvents, setGuestDebug, kvmclockCtrl, getTscKhz, setTscKhz, translateGva, smi, nmi, nestedState, setNestedState)

  // @section sync regs and coalesced ring (setSyncValidReg, setSyncDirtyReg, clearSyncValidReg, clearSyncDirtyReg, syncRegs, syncRegsMut, mapCoalescedMmioRing, coalescedMmioRead)

  // @section arm64 (vcpuInit, vcpuFinalize, getRegList, setOneReg, getOneReg, setDeviceAttr, hasDeviceAttr)

  /**
   * `KVM_ARM_VCPU_INIT`: resets the vCPU to its initial state with a target and features (take
   * the target from `VmFd#getPreferredTarget()`). aarch64 only (experimental).
   * @example `vcpu.vcpuInit(vm.getPreferredTarget());`
   * @throws {@link KvmError} EINVAL (unknown target or features; always on x86), ENOENT
   * @throws `TypeError`/`RangeError` for malformed fields
   */
  vcpuInit(init: KvmVcpuInit): void {
    const bytes = structBytes(kvm_vcpu_init, init, 'init');
    this.ioctl(arm64Ioctls.KVM_ARM_VCPU_INIT, bytes);
  }

  /**
   * `KVM_ARM_VCPU_FINALIZE`: finalizes a configurable feature (today only `KVM_ARM_VCPU_SVE`)
   * after `vcpuInit`. aarch64 only (experimental).
   * @example `vcpu.vcpuFinalize(KVM_ARM_VCPU_SVE);`
   * @throws {@link KvmError} ENOEXEC (before `vcpuInit`), EPERM (already finalized), EINVAL
   *   (feature not enabled, or on x86)
   */
  vcpuFinalize(feature: number): void {
    const what = new Int32Array([checkI32('feature', feature)]);
    this.ioctl(arm64Ioctls.KVM_ARM_VCPU_FINALIZE, what);
  }

  /**
   * `KVM_GET_REG_LIST`: fills `list.entries` with the vCPU's register ids, up to `list.capacity`.
   * When the room is too small the kernel answers E2BIG and reports the count it needs: it is
   * stored in `list.capacity` (clamped to 500) before the error is thrown, so retrying with the
   * same list succeeds. aarch64 and riscv64 (experimental here).
   * @example
   * ```ts
   * const list = new RegList(500);
   * vcpu.getRegList(list);
   * ```
   * @throws {@link KvmError} E2BIG (too small; see above), ENOEXEC (before `vcpuInit`)
   */
  getRegList(list: RegList): void {
    if (!(list instanceof RegList)) invalidType('list', 'an instance of RegList', list);
    this.checkOpen();
    const buf = famBuffer('RegList', list.capacity);
    try {
      this.ioctl(ioctls.KVM_GET_REG_LIST, buf);
    } catch (e) {
      if (e instanceof KvmError && e.code === 'E2BIG') list.capacity = Math.min(famCount('RegList', buf), KVM_MAX_REG_LIST_ENTRIES);
      throw e;
    }
    list.loadFrom(buf);
  }

  /**
   * `KVM_SET_ONE_REG`: writes one register from the first `regSize(id)` bytes of `data`
   * (little-endian). aarch64 and riscv64 (experimental here).
   * @returns the register size in bytes
   * @example `vcpu.setOneReg(ARM64_REG_PC, u64le(0x40080000n));`
   * @throws {@link KvmError} EINVAL when `data` is shorter than `regSize(id)` (checked before the
   *   ioctl, as kvm-ioctls), or for an id the kernel rejects; ENOENT (no such register)
   */
  setOneReg(id: bigint, data: Uint8Array): number {
    const { size } = this.#oneRegCheck(id, data, 'KVM_SET_ONE_REG');
    const bytes = structBytes(kvm_one_reg, { id, addr: this.backend.addressOf(data) });
    this.ioctl(ioctls.KVM_SET_ONE_REG, bytes);
    return size;
  }

  /**
   * `KVM_GET_ONE_REG`: reads one register. With `data`, fills its first `regSize(id)` bytes and
   * returns the size (kvm-ioctls' form); without, returns a new buffer of `regSize(id)` bytes.
   * @example `const pc = new DataView(vcpu.getOneReg(ARM64_REG_PC).buffer).getBigUint64(0, true);`
   * @throws {@link KvmError} EINVAL when `data` is shorter than `regSize(id)` (local check) or for
   *   an id the kernel rejects; ENOENT (no such register)
   */
  getOneReg(id: bigint): Uint8Array;
  getOneReg(id: bigint, data: Uint8Array): number;
  getOneReg(id: bigint, data?: Uint8Array): Uint8Array | number {
    const out = data ?? new Uint8Array(regSize(checkU64('id', id)));
    const { size } = this.#oneRegCheck(id, out, 'KVM_GET_ONE_REG');
    const bytes = structBytes(kvm_one_reg, { id, addr: this.backend.addressOf(out) });
    this.ioctl(ioctls.KVM_GET_ONE_REG, bytes);
    return data === undefined ? out : size;
  }

  #oneRegCheck(id: bigint, data: Uint8Array, request: string): { size: number } {
    const v = checkU64('id', id);
    checkBytes('data', data);
    this.checkOpen();
    const size = regSize(v);
    if (data.length < size) {
      throw new KvmError(errnoOf('EINVAL'), 'ioctl', { request, detail: `data has ${data.length} bytes, register 0x${v.toString(16)} needs ${size}` });
    }
    return { size };
  }

  /**
   * `KVM_SET_DEVICE_ATTR` on the vCPU fd (arm64: PMU, timer IRQs, PV time; x86: TSC offset).
   * @example `vcpu.setDeviceAttr({ group: KVM_ARM_VCPU_PVTIME_CTRL, attr: KVM_ARM_VCPU_PVTIME_IPA, addr: new BigUint64Array([ipa]) });`
   * @throws {@link KvmError} ENXIO (unknown group/attribute), EFAULT (bad `addr`), EINVAL, EBUSY
   */
  setDeviceAttr(attr: DeviceAttr): void {
    const { bytes, keep } = deviceAttrBytes(this.backend, attr);
    this.ioctl(ioctls.KVM_SET_DEVICE_ATTR, bytes);
    void keep;
  }

  /**
   * `KVM_HAS_DEVICE_ATTR` on the vCPU fd: succeeds when the attribute exists.
   * @example `vcpu.hasDeviceAttr({ group: KVM_ARM_VCPU_PMU_V3_CTRL, attr: KVM_ARM_VCPU_PMU_V3_INIT })`
   * @throws {@link KvmError} ENXIO when the attribute does not exist
   */
  hasDeviceAttr(attr: DeviceAttr): void {
    const { bytes } = deviceAttrBytes(this.backend, attr);
    this.ioctl(ioctls.KVM_HAS_DEVICE_ATTR, bytes);
  }
}
