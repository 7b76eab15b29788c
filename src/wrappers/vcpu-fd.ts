/**
 * `VcpuFd`: a virtual CPU.
 *
 * @module
 */
import { arm64Ioctls, kvm_vcpu_init, regSize, type KvmVcpuInit } from '../abi/arm64';
import { KvmError, errnoOf } from '../abi/errors';
import { checkComplete, decodeStruct, dv, encodeStruct, structBytes, type StructDef } from '../abi/codec';
import { ioctls, kvm } from '../abi/kvm-constants';
import {
  kvm_coalesced_mmio,
  kvm_coalesced_mmio_ring,
  kvm_debugregs,
  kvm_enable_cap,
  kvm_fpu,
  kvm_guest_debug,
  kvm_lapic_state,
  kvm_mp_state,
  kvm_nested_state,
  kvm_one_reg,
  kvm_regs,
  kvm_sregs,
  kvm_sync_regs,
  kvm_translation,
  kvm_vcpu_events,
  kvm_vmx_nested_state_data,
  kvm_xcrs,
  kvm_xsave,
  type KvmCoalescedMmio,
  type KvmDebugregs,
  type KvmFpu,
  type KvmLapicState,
  type KvmMpState,
  type KvmNestedState,
  type KvmRegs,
  type KvmSregs,
  type KvmSyncRegs,
  type KvmTranslation,
  type KvmVcpuEvents,
  type KvmXcrs,
  type KvmXsave,
} from '../abi/layouts';
import {
  checkBytes,
  checkI32,
  checkInt,
  checkObject,
  checkU32,
  checkU64,
  invalidType,
  invalidValue,
  outOfRange,
} from '../abi/validate';
import type { IoctlArg, IoctlBackend } from '../backend/types';
import { deviceAttrBytes, type DeviceAttr } from './device-attr';
import {
  CpuId,
  famBuffer,
  famCount,
  KVM_MAX_CPUID_ENTRIES,
  KVM_MAX_REG_LIST_ENTRIES,
  Msrs,
  RegList,
  type CpuIdEntryInput,
  type MsrEntryInput,
} from './fam';
import { FdOwner } from './fd';
import { KvmRunWrapper, RUN } from './kvm-run';
import { decodeExit, memoryFault, type VcpuExit } from './vcpu-exit';
import type { VmFd } from './vm-fd';

/**
 * The register sets of `kvm_run.s.regs` (kvm-ioctls' `SyncReg`), valued like `KVM_SYNC_X86_*`:
 * `Register` = 1 (`regs`), `SystemRegister` = 2 (`sregs`), `VcpuEvents` = 4 (`events`).
 */
export const SyncReg = {
  Register: kvm.KVM_SYNC_X86_REGS,
  SystemRegister: kvm.KVM_SYNC_X86_SREGS,
  VcpuEvents: kvm.KVM_SYNC_X86_EVENTS,
} as const;
/** A value of {@link SyncReg}. */
export type SyncReg = (typeof SyncReg)[keyof typeof SyncReg];

/** `struct kvm_enable_cap` as an argument: `flags` and `args` default to 0. */
export interface EnableCap {
  cap: number;
  flags?: number;
  /** Up to 4 u64 arguments. */
  args?: Array<bigint | number>;
}

/** Every field optional, recursively (for partial writes of nested structs). */
export type DeepPartial<T> = T extends Uint8Array | bigint | number
  ? T
  : T extends Array<infer E>
    ? Array<DeepPartial<E>>
    : { [K in keyof T]?: DeepPartial<T[K]> };

/**
 * A `struct kvm_xsave` of any size (kvm-ioctls' `Xsave`, a FAM wrapper): the 4 KiB legacy
 * `region` followed by `extra`. Use the size from `KVM_CAP_XSAVE2`; `VcpuFd#getXsave2()` allocates one.
 *
 * @example
 * ```ts
 * const xsave = new Xsave(vm.checkExtensionRaw(constants.KVM_CAP_XSAVE2));
 * vcpu.getXsave2(xsave);
 * const xstateBv = new DataView(xsave.bytes.buffer).getBigUint64(512, true);
 * ```
 */
export class Xsave {
  /** The whole struct's bytes (what the ioctls read and write). */
  readonly bytes: Uint8Array;

  /**
   * @param size - bytes, at least 4096, a multiple of 4
   * @throws `RangeError` for another size
   */
  constructor(size: number = kvm_xsave.size) {
    checkInt('size', size, kvm_xsave.size, 1 << 24);
    if (size % 4 !== 0) outOfRange('size', 'a multiple of 4', size);
    this.bytes = new Uint8Array(size);
  }

  /** The first 4096 bytes as 1024 u32 words (`kvm_xsave.region`), a live view. */
  get region(): Uint32Array {
    return new Uint32Array(this.bytes.buffer, this.bytes.byteOffset, kvm_xsave.size / 4);
  }

  /** The words after the legacy area (`kvm_xsave.extra`), a live view. */
  get extra(): Uint32Array {
    return new Uint32Array(
      this.bytes.buffer,
      this.bytes.byteOffset + kvm_xsave.size,
      (this.bytes.length - kvm_xsave.size) / 4,
    );
  }
}

/**
 * A `struct kvm_nested_state` with room for the VMX data (kvm-ioctls' `KvmNestedStateBuffer`):
 * 128 header bytes plus 8 KiB. `size` starts at the whole buffer's size.
 *
 * @example
 * ```ts
 * const buf = new KvmNestedStateBuffer();
 * const n = vcpu.nestedState(buf); // undefined: no nested guest
 * ```
 */
export class KvmNestedStateBuffer {
  /** The struct's bytes. */
  readonly bytes = new Uint8Array(kvm_nested_state.size + kvm_vmx_nested_state_data.size);

  constructor() {
    this.size = this.bytes.length;
  }

  /** `kvm_nested_state.size`: bytes of state (header included). */
  get size(): number {
    return dv(this.bytes).getUint32(kvm_nested_state.fields.size.offset, true);
  }
  set size(v: number) {
    dv(this.bytes).setUint32(kvm_nested_state.fields.size.offset, checkU32('size', v), true);
  }

  /** The decoded header (`flags`, `format`, `size`, `hdr`). */
  get header(): Omit<KvmNestedState, 'data'> {
    const { data: _data, ...header } = decodeStruct<KvmNestedState>(kvm_nested_state, dv(this.bytes));
    return header;
  }
}

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
  #owner: string | undefined;
  #activeRun: { kick(): void; whenEnded(fn: () => void): void } | undefined;

  /** @internal Use `VmFd#createVcpu()`. */
  constructor(backend: IoctlBackend, fd: number, runSize: number, id: number, vm: VmFd) {
    super(backend, fd);
    this.id = id;
    this.vm = vm;
    this.label = id >= 0 ? `VcpuFd ${id}` : 'VcpuFd';
    this.#run = KvmRunWrapper.mmapFromFd(backend, fd, runSize);
    this.#view = this.#run.asMutRef();
    this.#bytes = this.#run.bytes;
    this.onClosed(() => {
      const active = this.#activeRun;
      if (active === undefined) {
        this.#run.close();
        return;
      }
      // A worker may be inside KVM_RUN on this fd: make it stop (it checks the stop flag before any
      // further ioctl) before the fd number is released and can be reused. The kick writes through
      // this thread's kvm_run mapping, so that mapping is unmapped only once the run has ended.
      active.kick();
      active.whenEnded(() => this.#run.close());
    });
  }

  /** @internal The runtime attaches its run while a worker owns this vCPU, and detaches it after. */
  attachRun(run: { kick(): void; whenEnded(fn: () => void): void } | undefined): void {
    this.#activeRun = run;
  }

  /**
   * @internal While a worker thread runs this vCPU, ioctls from this thread would block on the
   * kernel's vCPU mutex (and so freeze the event loop): they throw `ERR_KVM_VCPU_RUNNING` instead.
   */
  setOwner(owner: string | undefined): void {
    this.#owner = owner;
  }

  /** Whether a runtime currently runs this vCPU on another thread. */
  get running(): boolean {
    return this.#activeRun !== undefined;
  }

  protected override ioctl(request: number, arg?: IoctlArg): number {
    if (this.#owner !== undefined) {
      this.checkOpen();
      const err = new Error(
        `${this.label} is running in ${this.#owner}; from the main thread, route the call to it with ` +
          `run.call(method, ...args), e.g. await run.call('getRegs'); in the pipeline, use ctx.vcpu; ` +
          `or stop the run first`,
      );
      (err as Error & { code: string }).code = 'ERR_KVM_VCPU_RUNNING';
      throw err;
    }
    return super.ioctl(request, arg);
  }

  /** @internal A VcpuFd over an fd another VcpuFd owns; closing it unmaps its own kvm_run view only. */
  static borrowed(backend: IoctlBackend, fd: number, runSize: number, id: number, vm: VmFd): VcpuFd {
    const v = new VcpuFd(backend, fd, runSize, id, vm);
    v.borrow();
    return v;
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
    this.#run.asMutRef(); // ERR_KVM_CLOSED if the kvm_run mapping was closed on its own
    try {
      this.ioctl(ioctls.KVM_RUN);
    } catch (e) {
      if (
        e instanceof KvmError &&
        (e.code === 'EFAULT' || e.code === 'EHWPOISON') &&
        !this.closed &&
        !this.#run.closed &&
        this.#view.getUint32(RUN.exitReason, true) === kvm.KVM_EXIT_MEMORY_FAULT
      ) {
        return memoryFault(this.#view);
      }
      throw e;
    }
    return decodeExit(this.#run.asMutRef(), this.#run.bytes);
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
    return this.getStruct<KvmRegs>(kvm_regs, ioctls.KVM_GET_REGS);
  }

  /**
   * `KVM_SET_REGS`: writes every general register, as kvm-ioctls' `set_regs(&kvm_regs)`. It takes
   * a whole {@link KvmRegs}, not a patch: to change some registers, spread {@link getRegs} and
   * override them.
   * @example `vcpu.setRegs({ ...vcpu.getRegs(), rip: 0x1000n, rflags: 2n });`
   * @throws {@link KvmError}; `TypeError` `ERR_INVALID_ARG_TYPE` naming the first register left
   *   out (e.g. `regs.rbx`), and `TypeError`/`RangeError` for bad fields, before any ioctl
   */
  setRegs(regs: KvmRegs): void {
    this.checkOpen();
    checkComplete(kvm_regs, regs, 'regs', 'setRegs writes every register: start from { ...vcpu.getRegs(), … }');
    this.ioctl(ioctls.KVM_SET_REGS, structBytes(kvm_regs, regs, 'regs'));
  }

  /**
   * `KVM_GET_SREGS`: segment, control and descriptor-table registers, EFER, APIC base.
   * @example `const sregs = vcpu.getSregs(); sregs.cs.base = 0n;`
   * @throws {@link KvmError}
   */
  getSregs(): KvmSregs {
    return this.getStruct<KvmSregs>(kvm_sregs, ioctls.KVM_GET_SREGS);
  }

  /**
   * `KVM_SET_SREGS`. Take the object from {@link getSregs} and change what you need.
   * @example
   * ```ts
   * const sregs = vcpu.getSregs();
   * sregs.cr0 |= 1n; // CR0.PE: protected mode
   * vcpu.setSregs(sregs);
   * ```
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
      throw new KvmError(errnoOf('ENOMEM'), 'ioctl', {
        request: 'KVM_GET_CPUID2',
        detail: `maxEntries ${n} > KVM_MAX_CPUID_ENTRIES (${KVM_MAX_CPUID_ENTRIES})`,
      });
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

  #setStruct(def: StructDef, request: number, value: unknown, name: string): void {
    checkObject(name, value);
    this.checkOpen();
    this.ioctl(request, structBytes(def, value, name));
  }

  /**
   * `KVM_GET_FPU`: the x87/SSE state (a fresh vCPU has `fcw` 0x37f and `mxcsr` 0x1f80).
   * @example `const { fcw, mxcsr } = vcpu.getFpu();`
   * @throws {@link KvmError}
   */
  getFpu(): KvmFpu {
    return this.getStruct<KvmFpu>(kvm_fpu, ioctls.KVM_GET_FPU);
  }

  /**
   * `KVM_SET_FPU`. Fields left out are written as 0.
   * @example `vcpu.setFpu({ ...vcpu.getFpu(), fcw: 0x37f, mxcsr: 0x1f80 });`
   * @throws {@link KvmError}; `TypeError`/`RangeError` for bad fields
   */
  setFpu(fpu: Partial<KvmFpu>): void {
    this.#setStruct(kvm_fpu, ioctls.KVM_SET_FPU, fpu, 'fpu');
  }

  /**
   * `KVM_ENABLE_CAP` on the vCPU fd (x86 vCPU caps: `KVM_CAP_HYPERV_SYNIC`, `_SYNIC2`,
   * `_ENLIGHTENED_VMCS`, `_DIRECT_TLBFLUSH`, `_ENFORCE_CPUID`, `KVM_CAP_ENFORCE_PV_FEATURE_CPUID`).
   * VM-wide caps go to `VmFd#enableCap`.
   * @example `vcpu.enableCap({ cap: constants.KVM_CAP_ENFORCE_PV_FEATURE_CPUID, args: [1n] });`
   * @throws {@link KvmError} EINVAL (not a vCPU cap, or bad args)
   */
  enableCap(cap: EnableCap): void {
    this.#setStruct(kvm_enable_cap, ioctls.KVM_ENABLE_CAP, cap, 'cap');
  }

  /**
   * `KVM_GET_LAPIC`: the 1 KiB local APIC register page. Needs the in-kernel irqchip.
   * @example
   * ```ts
   * const { regs } = vcpu.getLapic();
   * const apicId = new DataView(regs.buffer, regs.byteOffset, regs.byteLength).getUint32(0x20, true) >>> 24;
   * ```
   * @throws {@link KvmError} EINVAL (no in-kernel irqchip)
   */
  getLapic(): KvmLapicState {
    return this.getStruct<KvmLapicState>(kvm_lapic_state, ioctls.KVM_GET_LAPIC);
  }

  /**
   * `KVM_SET_LAPIC`. Take the object from {@link getLapic} and change registers in `regs`.
   * @example
   * ```ts
   * const lapic = vcpu.getLapic();
   * new DataView(lapic.regs.buffer).setUint32(0x300, 2, true); // ICR low
   * vcpu.setLapic(lapic);
   * ```
   * @throws {@link KvmError} EINVAL (no in-kernel irqchip); `TypeError` for a bad `regs`
   */
  setLapic(lapic: KvmLapicState): void {
    this.#setStruct(kvm_lapic_state, ioctls.KVM_SET_LAPIC, lapic, 'lapic');
  }

  /**
   * `KVM_GET_MP_STATE`: `KVM_MP_STATE_RUNNABLE` (0), `_UNINITIALIZED` (1, an AP with the
   * in-kernel irqchip), `_HALTED` (3), …
   * @example
   * ```ts
   * import { constants } from 'kvm-rx';
   * const halted = vcpu.getMpState().mpState === constants.KVM_MP_STATE_HALTED; // waits for an interrupt
   * ```
   * @throws {@link KvmError}
   */
  getMpState(): KvmMpState {
    return this.getStruct<KvmMpState>(kvm_mp_state, ioctls.KVM_GET_MP_STATE);
  }

  /**
   * `KVM_SET_MP_STATE`.
   * @example `vcpu.setMpState({ mpState: constants.KVM_MP_STATE_RUNNABLE });`
   * @throws {@link KvmError} EINVAL (unknown state, or a state that needs the in-kernel irqchip)
   */
  setMpState(mpState: KvmMpState): void {
    this.#setStruct(kvm_mp_state, ioctls.KVM_SET_MP_STATE, mpState, 'mpState');
  }

  /**
   * `KVM_GET_XSAVE`: the legacy 4 KiB XSAVE area as 1024 u32 words (`region`).
   * @example `const xsave = vcpu.getXsave(); vcpu.setXsave(xsave);`
   * @throws {@link KvmError} EINVAL when the guest's XSAVE state does not fit 4 KiB (use {@link getXsave2})
   */
  getXsave(): KvmXsave {
    const x = this.getStruct<KvmXsave>(kvm_xsave, ioctls.KVM_GET_XSAVE);
    return { region: x.region, extra: [] };
  }

  /**
   * `KVM_SET_XSAVE` from a 4 KiB area. Safe where kvm-ioctls' `set_xsave` is `unsafe`: the buffer
   * passed is zero-padded to the size the kernel reads (`KVM_CAP_XSAVE2`), so the kernel never
   * reads past it.
   * @example `vcpu.setXsave(vcpu.getXsave());`
   * @throws {@link KvmError} EINVAL (features the guest does not have); `TypeError`/`RangeError` for a bad `region`
   */
  setXsave(xsave: Pick<KvmXsave, 'region'>): void {
    checkObject('xsave', xsave);
    const bytes = new Uint8Array(Math.max(kvm_xsave.size, this.#xsave2Size()));
    encodeStruct(kvm_xsave, { region: xsave.region }, dv(bytes), 0, 'xsave');
    this.ioctl(ioctls.KVM_SET_XSAVE, bytes);
  }

  /** The size in bytes of the XSAVE area the kernel uses (`KVM_CAP_XSAVE2`, at least 4096). */
  #xsave2Size(): number {
    return Math.max(kvm_xsave.size, this.vm.checkExtensionRaw(kvm.KVM_CAP_XSAVE2));
  }

  /**
   * `KVM_GET_XSAVE2`: the whole XSAVE area, whose size is `KVM_CAP_XSAVE2` (4096 or more, e.g.
   * with AMX). Without an argument a buffer of the right size is allocated. Safe where
   * kvm-ioctls' `get_xsave2` is `unsafe`: a buffer smaller than the kernel's size is rejected.
   * @example `const xsave = vcpu.getXsave2(); vcpu.setXsave2(xsave);`
   * @throws {@link KvmError}; `RangeError` (ERR_OUT_OF_RANGE) if `xsave` is smaller than `KVM_CAP_XSAVE2`
   */
  getXsave2(xsave?: Xsave): Xsave {
    const size = this.#xsave2Size();
    const out = xsave ?? new Xsave(size);
    if (!(out instanceof Xsave)) invalidType('xsave', 'an instance of Xsave', out);
    if (out.bytes.length < size) outOfRange('xsave.bytes.length', `>= ${size} (KVM_CAP_XSAVE2)`, out.bytes.length);
    this.ioctl(ioctls.KVM_GET_XSAVE2, out.bytes);
    return out;
  }

  /**
   * `KVM_SET_XSAVE` from a full-size {@link Xsave} (kvm-ioctls' `set_xsave2`).
   * @example `vcpu.setXsave2(vcpu.getXsave2());`
   * @throws {@link KvmError} EINVAL; `RangeError` if `xsave` is smaller than `KVM_CAP_XSAVE2`
   */
  setXsave2(xsave: Xsave): void {
    if (!(xsave instanceof Xsave)) invalidType('xsave', 'an instance of Xsave', xsave);
    const size = this.#xsave2Size();
    if (xsave.bytes.length < size) outOfRange('xsave.bytes.length', `>= ${size} (KVM_CAP_XSAVE2)`, xsave.bytes.length);
    this.ioctl(ioctls.KVM_SET_XSAVE, xsave.bytes);
  }

  /**
   * `KVM_GET_XCRS`: the extended control registers (XCR0).
   * @example `const xcr0 = vcpu.getXcrs().xcrs[0]!.value;`
   * @throws {@link KvmError}
   */
  getXcrs(): KvmXcrs {
    const x = this.getStruct<KvmXcrs>(kvm_xcrs, ioctls.KVM_GET_XCRS);
    return x;
  }

  /**
   * `KVM_SET_XCRS`.
   * @example `vcpu.setXcrs(vcpu.getXcrs());`
   * @throws {@link KvmError} EINVAL (an invalid XCR0: bit 0 clear, unsupported features, …)
   */
  setXcrs(xcrs: KvmXcrs): void {
    this.#setStruct(kvm_xcrs, ioctls.KVM_SET_XCRS, xcrs, 'xcrs');
  }

  /**
   * `KVM_GET_DEBUGREGS`: DR0–3, DR6, DR7.
   * @example `const { dr6, dr7 } = vcpu.getDebugRegs();`
   * @throws {@link KvmError}
   */
  getDebugRegs(): KvmDebugregs {
    return this.getStruct<KvmDebugregs>(kvm_debugregs, ioctls.KVM_GET_DEBUGREGS);
  }

  /**
   * `KVM_SET_DEBUGREGS`.
   * @example `vcpu.setDebugRegs({ ...vcpu.getDebugRegs(), db: [0x1000n, 0n, 0n, 0n] });`
   * @throws {@link KvmError} EINVAL (non-zero `flags`, or reserved DR6/DR7 bits set)
   */
  setDebugRegs(regs: KvmDebugregs): void {
    this.#setStruct(kvm_debugregs, ioctls.KVM_SET_DEBUGREGS, regs, 'regs');
  }

  /**
   * `KVM_GET_VCPU_EVENTS`: pending/injected exceptions, interrupts, NMI, SMI, SIPI vector.
   * @example `const { nmi } = vcpu.getVcpuEvents();`
   * @throws {@link KvmError}
   */
  getVcpuEvents(): KvmVcpuEvents {
    return this.getStruct<KvmVcpuEvents>(kvm_vcpu_events, ioctls.KVM_GET_VCPU_EVENTS);
  }

  /**
   * `KVM_SET_VCPU_EVENTS`. Only the parts named in `flags` (`KVM_VCPUEVENT_VALID_*`) besides the
   * exception/interrupt/NMI fields are applied.
   * @example `vcpu.setVcpuEvents(vcpu.getVcpuEvents());`
   * @throws {@link KvmError} EINVAL (unknown flags, bad vectors)
   */
  setVcpuEvents(events: KvmVcpuEvents): void {
    this.#setStruct(kvm_vcpu_events, ioctls.KVM_SET_VCPU_EVENTS, events, 'events');
  }

  /**
   * `KVM_SET_GUEST_DEBUG`: single-stepping and hardware breakpoints (`control` is
   * `KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | …`; `arch.debugreg` are DR0–7).
   * @example
   * ```ts
   * import { constants } from 'kvm-rx';
   * vcpu.setGuestDebug({ control: constants.KVM_GUESTDBG_ENABLE | constants.KVM_GUESTDBG_SINGLESTEP });
   * ```
   * @throws {@link KvmError} EINVAL (unknown control bits)
   */
  setGuestDebug(debug: { control: number; arch?: { debugreg: bigint[] } }): void {
    this.#setStruct(kvm_guest_debug, ioctls.KVM_SET_GUEST_DEBUG, debug, 'debug');
  }

  /**
   * `KVM_KVMCLOCK_CTRL`: tells the guest's kvmclock that the vCPU was paused (soft-lockup guard).
   * @example `vcpu.kvmclockCtrl();`
   * @throws {@link KvmError} EINVAL when the guest has not enabled kvmclock
   */
  kvmclockCtrl(): void {
    this.ioctl(ioctls.KVM_KVMCLOCK_CTRL);
  }

  /**
   * `KVM_GET_TSC_KHZ`: the guest TSC frequency in kHz. (kvm-ioctls reports a failure with errno
   * -1; here it is the real errno.)
   * @example `const khz = vcpu.getTscKhz();`
   * @throws {@link KvmError} EIO (frequency unknown)
   */
  getTscKhz(): number {
    return this.ioctl(ioctls.KVM_GET_TSC_KHZ);
  }

  /**
   * `KVM_SET_TSC_KHZ`. Without TSC scaling only a frequency close to the host's (or higher, by
   * catch-up) is accepted.
   * @example `vcpu.setTscKhz(vcpu.getTscKhz());`
   * @throws {@link KvmError} EPERM/EINVAL (frequency not supported); `RangeError` for a non-u32
   */
  setTscKhz(khz: number): void {
    checkU32('khz', khz);
    this.ioctl(ioctls.KVM_SET_TSC_KHZ, khz);
  }

  /**
   * `KVM_TRANSLATE`: translates a guest virtual address with the vCPU's current paging mode.
   * `valid` is 0 when the address is not mapped.
   * @example `const { physicalAddress, valid } = vcpu.translateGva(0x10000n);`
   * @throws {@link KvmError}; `RangeError` for a value outside u64
   */
  translateGva(gva: bigint | number): KvmTranslation {
    const buf = structBytes(kvm_translation, { linearAddress: checkU64('gva', gva) });
    this.ioctl(ioctls.KVM_TRANSLATE, buf);
    return decodeStruct<KvmTranslation>(kvm_translation, dv(buf));
  }

  /**
   * `KVM_SMI`: queues a system-management interrupt.
   * @example `vcpu.smi();`
   * @throws {@link KvmError} ENOTTY/EINVAL where SMM is not supported (`KVM_CAP_X86_SMM` = 0)
   */
  smi(): void {
    this.ioctl(ioctls.KVM_SMI);
  }

  /**
   * `KVM_NMI`: queues a non-maskable interrupt (without the in-kernel irqchip: the userspace LAPIC
   * model's LINT1).
   * @example `vcpu.nmi();`
   * @throws {@link KvmError} ENXIO (the in-kernel LAPIC is not enabled)
   */
  nmi(): void {
    this.ioctl(ioctls.KVM_NMI);
  }

  /**
   * `KVM_GET_NESTED_STATE` into `buffer`. Returns the state's size in bytes, or `undefined` when
   * only the 128-byte header came back (no nested guest), as kvm-ioctls' `Option<NonZeroUsize>`.
   * The buffer's `size` field is reset to its byte length first, so the kernel never writes past it.
   * @example
   * ```ts
   * import { writeFileSync } from 'node:fs';
   * import { KvmNestedStateBuffer } from 'kvm-rx';
   * const buf = new KvmNestedStateBuffer();
   * const size = vcpu.nestedState(buf);
   * if (size !== undefined) writeFileSync('nested-state.bin', buf.bytes.subarray(0, size));
   * ```
   * @throws {@link KvmError} EINVAL (`KVM_CAP_NESTED_STATE` = 0: no nested virtualization), E2BIG
   */
  nestedState(buffer: KvmNestedStateBuffer): number | undefined {
    if (!(buffer instanceof KvmNestedStateBuffer)) invalidType('buffer', 'an instance of KvmNestedStateBuffer', buffer);
    buffer.size = buffer.bytes.length;
    this.ioctl(ioctls.KVM_GET_NESTED_STATE, buffer.bytes);
    const size = buffer.size;
    return size === kvm_nested_state.size ? undefined : size;
  }

  /**
   * `KVM_SET_NESTED_STATE` from `buffer` (its `size` bytes).
   * @example
   * ```ts
   * import { readFileSync } from 'node:fs';
   * import { KvmNestedStateBuffer } from 'kvm-rx';
   * const buf = new KvmNestedStateBuffer();
   * buf.bytes.set(readFileSync('nested-state.bin')); // saved from nestedState(); its header holds the size
   * vcpu.setNestedState(buf);
   * ```
   * @throws {@link KvmError} EINVAL; `RangeError` if `buffer.size` exceeds its byte length
   */
  setNestedState(buffer: KvmNestedStateBuffer): void {
    if (!(buffer instanceof KvmNestedStateBuffer)) invalidType('buffer', 'an instance of KvmNestedStateBuffer', buffer);
    if (buffer.size > buffer.bytes.length || buffer.size < kvm_nested_state.size) {
      outOfRange('buffer.size', `>= ${kvm_nested_state.size} and <= ${buffer.bytes.length}`, buffer.size);
    }
    this.ioctl(ioctls.KVM_SET_NESTED_STATE, buffer.bytes);
  }

  // @section sync regs and coalesced ring (setSyncValidReg, setSyncDirtyReg, clearSyncValidReg, clearSyncDirtyReg, syncRegs, syncRegsMut, mapCoalescedMmioRing, coalescedMmioRead)

  #ring: { address: bigint; size: number; buffer: ArrayBuffer; view: DataView; words: Uint32Array } | undefined;
  #ringCleanup = false;

  #runFlags(at: number, reg: SyncReg, set: boolean): void {
    if (reg !== SyncReg.Register && reg !== SyncReg.SystemRegister && reg !== SyncReg.VcpuEvents) {
      invalidValue('reg', 'must be a SyncReg (1, 2 or 4)', reg);
    }
    this.checkOpen();
    const view = this.#run.asMutRef();
    const v = view.getBigUint64(at, true);
    view.setBigUint64(at, set ? v | BigInt(reg) : v & ~BigInt(reg), true);
  }

  /**
   * Sets a bit of `kvm_run.kvm_valid_regs`: after each `KVM_RUN` the kernel copies that register
   * set into `kvm_run.s.regs` (read it with {@link syncRegs}).
   * @example `vcpu.setSyncValidReg(SyncReg.Register);`
   * @throws `TypeError` (ERR_INVALID_ARG_VALUE) for a value that is not a {@link SyncReg}
   */
  setSyncValidReg(reg: SyncReg): void {
    this.#runFlags(RUN.kvmValidRegs, reg, true);
  }

  /**
   * Sets a bit of `kvm_run.kvm_dirty_regs`: on the next `KVM_RUN` the kernel loads that register
   * set from `kvm_run.s.regs` (and clears the bit).
   * @example `vcpu.setSyncDirtyReg(SyncReg.Register);`
   * @throws `TypeError` (ERR_INVALID_ARG_VALUE) for a value that is not a {@link SyncReg}
   */
  setSyncDirtyReg(reg: SyncReg): void {
    this.#runFlags(RUN.kvmDirtyRegs, reg, true);
  }

  /**
   * Clears a bit of `kvm_run.kvm_valid_regs`.
   * @example `vcpu.clearSyncValidReg(SyncReg.Register);`
   * @throws `TypeError` (ERR_INVALID_ARG_VALUE) for a value that is not a {@link SyncReg}
   */
  clearSyncValidReg(reg: SyncReg): void {
    this.#runFlags(RUN.kvmValidRegs, reg, false);
  }

  /**
   * Clears a bit of `kvm_run.kvm_dirty_regs`.
   * @example `vcpu.clearSyncDirtyReg(SyncReg.Register);`
   * @throws `TypeError` (ERR_INVALID_ARG_VALUE) for a value that is not a {@link SyncReg}
   */
  clearSyncDirtyReg(reg: SyncReg): void {
    this.#runFlags(RUN.kvmDirtyRegs, reg, false);
  }

  /**
   * Decodes `kvm_run.s.regs` (`kvm_sync_regs`: `regs`, `sregs`, `events`), a copy. Meaningful for
   * the sets enabled with {@link setSyncValidReg} once the vCPU has run.
   * @example `vcpu.setSyncValidReg(SyncReg.Register); vcpu.run(); const { rax } = vcpu.syncRegs().regs;`
   * @throws `KvmClosedError` once closed
   */
  syncRegs(): KvmSyncRegs {
    this.checkOpen();
    return decodeStruct<KvmSyncRegs>(kvm_sync_regs, this.#run.asMutRef(), RUN.syncRegs);
  }

  /**
   * kvm-ioctls' `sync_regs_mut`: read-modify-write of `kvm_run.s.regs`. JavaScript has no `&mut`
   * into the mapping, so `update` receives a decoded copy, mutates it, and the result is encoded
   * back into `kvm_run` (and returned). Mark what you changed with {@link setSyncDirtyReg} so the
   * kernel loads it on the next `KVM_RUN`. For a partial write use {@link setSyncRegs}.
   * @example
   * ```ts
   * vcpu.syncRegsMut((s) => { s.regs.rax = 0x8000n; });
   * vcpu.setSyncDirtyReg(SyncReg.Register);
   * ```
   * @throws `TypeError`/`RangeError` for bad values written by `update`; `KvmClosedError` once closed
   */
  syncRegsMut(update: (regs: KvmSyncRegs) => void): KvmSyncRegs {
    if (typeof update !== 'function') invalidType('update', 'of type function', update);
    const regs = this.syncRegs();
    update(regs);
    this.setSyncRegs(regs);
    return regs;
  }

  /**
   * Writes the given fields of `kvm_sync_regs` into `kvm_run.s.regs`; fields left out keep their
   * bytes. Nothing reaches the kernel until {@link setSyncDirtyReg} marks the set.
   * @example `vcpu.setSyncRegs({ regs: { rax: 0x8000n } }); vcpu.setSyncDirtyReg(SyncReg.Register);`
   * @throws `TypeError`/`RangeError` for unknown fields or bad values (nothing is written then)
   */
  setSyncRegs(regs: DeepPartial<KvmSyncRegs>): void {
    checkObject('regs', regs);
    this.checkOpen();
    // Encode into a copy first so a bad field leaves kvm_run untouched.
    const copy = this.#run.bytes.slice(RUN.syncRegs, RUN.syncRegs + kvm_sync_regs.size);
    encodeStruct(kvm_sync_regs, regs, dv(copy), 0, 'regs');
    this.#run.bytes.set(copy, RUN.syncRegs);
  }

  /**
   * Maps the coalesced MMIO ring (the page at `KVM_COALESCED_MMIO_PAGE_OFFSET * pageSize` of the
   * vCPU fd). Idempotent. Unmapped (its views detached) when the vCPU closes.
   * @example `vm.registerCoalescedMmio({ kind: 'mmio', addr: 0x1000n }, 8); vcpu.mapCoalescedMmioRing();`
   * @throws {@link KvmError} from `mmap`
   */
  mapCoalescedMmioRing(): void {
    this.checkOpen();
    if (this.#ring !== undefined) return;
    const size = this.backend.pageSize;
    const address = this.backend.mmap(
      size,
      { shared: true, anonymous: false },
      this.asRawFd(),
      kvm.KVM_COALESCED_MMIO_PAGE_OFFSET * size,
    );
    let buffer: ArrayBuffer;
    try {
      buffer = this.backend.view(address, size);
    } catch (e) {
      this.backend.munmap(address, size);
      throw e;
    }
    this.#ring = { address, size, buffer, view: new DataView(buffer), words: new Uint32Array(buffer, 0, 2) };
    if (!this.#ringCleanup) {
      this.#ringCleanup = true;
      this.onClosed(() => this.#unmapRing());
    }
  }

  #unmapRing(): void {
    const ring = this.#ring;
    if (ring === undefined) return;
    this.#ring = undefined;
    this.backend.detach(ring.buffer);
    this.backend.munmap(ring.address, ring.size);
  }

  /**
   * Takes the oldest entry off the coalesced MMIO ring (and advances `first`), or returns
   * `undefined` when it is empty. Entries are the writes the kernel absorbed for zones registered
   * with `VmFd#registerCoalescedMmio`.
   * @example
   * ```ts
   * // @ts-setup: declare const bus: { write(addr: bigint, data: Uint8Array): void }; // the VMM's MMIO dispatch
   * for (let e = vcpu.coalescedMmioRead(); e !== undefined; e = vcpu.coalescedMmioRead()) {
   *   bus.write(e.physAddr, e.data.subarray(0, e.len));
   * }
   * ```
   * @throws {@link KvmError} EIO when the ring is not mapped (as kvm-ioctls)
   */
  coalescedMmioRead(): KvmCoalescedMmio | undefined {
    this.checkOpen();
    const ring = this.#ring;
    if (ring === undefined) {
      throw new KvmError(errnoOf('EIO'), 'mmap', {
        detail: 'the coalesced MMIO ring is not mapped (call mapCoalescedMmioRing)',
      });
    }
    const max = Math.floor((ring.size - kvm_coalesced_mmio_ring.size) / kvm_coalesced_mmio.size);
    const first = Atomics.load(ring.words, 0);
    const last = Atomics.load(ring.words, 1);
    if (first === last) return undefined;
    if (first >= max) {
      throw new KvmError(errnoOf('EIO'), 'mmap', { detail: `corrupt coalesced MMIO ring (first ${first})` });
    }
    const entry = decodeStruct<KvmCoalescedMmio>(
      kvm_coalesced_mmio,
      ring.view,
      kvm_coalesced_mmio_ring.size + first * kvm_coalesced_mmio.size,
    );
    Atomics.store(ring.words, 0, (first + 1) % max);
    return entry;
  }

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
   * @example
   * ```ts
   * import { arm64 } from 'kvm-rx';
   * vcpu.vcpuFinalize(arm64.KVM_ARM_VCPU_SVE);
   * ```
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
      if (e instanceof KvmError && e.code === 'E2BIG')
        list.capacity = Math.min(famCount('RegList', buf), KVM_MAX_REG_LIST_ENTRIES);
      throw e;
    }
    list.loadFrom(buf);
  }

  /**
   * `KVM_SET_ONE_REG`: writes one register from the first `regSize(id)` bytes of `data`
   * (little-endian). aarch64 and riscv64 (experimental here).
   * @returns the register size in bytes
   * @example
   * ```ts
   * import { arm64 } from 'kvm-rx';
   * const pc = new Uint8Array(8);
   * new DataView(pc.buffer).setBigUint64(0, 0x4008_0000n, true);
   * vcpu.setOneReg(arm64.ARM64_REG_PC, pc); // 8
   * ```
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
   * @example
   * ```ts
   * import { arm64 } from 'kvm-rx';
   * const pc = new DataView(vcpu.getOneReg(arm64.ARM64_REG_PC).buffer).getBigUint64(0, true);
   * ```
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
      throw new KvmError(errnoOf('EINVAL'), 'ioctl', {
        request,
        detail: `data has ${data.length} bytes, register 0x${v.toString(16)} needs ${size}`,
      });
    }
    return { size };
  }

  /**
   * `KVM_SET_DEVICE_ATTR` on the vCPU fd (arm64: PMU, timer IRQs, PV time; x86: TSC offset).
   * @example
   * ```ts
   * import { arm64 } from 'kvm-rx';
   * const ipa = 0x9000_0000n; // guest-physical address of this vCPU's 64-byte stolen-time record
   * vcpu.setDeviceAttr({
   *   group: arm64.KVM_ARM_VCPU_PVTIME_CTRL,
   *   attr: arm64.KVM_ARM_VCPU_PVTIME_IPA,
   *   value: new BigUint64Array([ipa]),
   * });
   * ```
   * @throws {@link KvmError} ENXIO (unknown group/attribute), EFAULT (bad `addr`), EINVAL, EBUSY
   */
  setDeviceAttr(attr: DeviceAttr): void {
    const { bytes, keep } = deviceAttrBytes(this.backend, attr);
    this.ioctl(ioctls.KVM_SET_DEVICE_ATTR, bytes);
    // eslint-disable-next-line @typescript-eslint/no-meaningless-void-operator -- keeps the value buffer referenced until the kernel read it
    void keep;
  }

  /**
   * `KVM_HAS_DEVICE_ATTR` on the vCPU fd: succeeds when the attribute exists.
   * @example
   * ```ts
   * import { arm64 } from 'kvm-rx';
   * vcpu.hasDeviceAttr({ group: arm64.KVM_ARM_VCPU_PMU_V3_CTRL, attr: arm64.KVM_ARM_VCPU_PMU_V3_INIT });
   * ```
   * @throws {@link KvmError} ENXIO when the attribute does not exist
   */
  hasDeviceAttr(attr: DeviceAttr): void {
    const { bytes } = deviceAttrBytes(this.backend, attr);
    this.ioctl(ioctls.KVM_HAS_DEVICE_ATTR, bytes);
  }
}
