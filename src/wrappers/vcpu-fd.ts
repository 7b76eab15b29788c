/**
 * `VcpuFd`: a virtual CPU.
 *
 * @module
 */
import { KvmError } from '../abi/errors';
import { decodeStruct, dv, structBytes } from '../abi/codec';
import { ioctls, kvm } from '../abi/kvm-constants';
import { kvm_regs, kvm_sregs, type KvmRegs, type KvmSregs } from '../abi/layouts';
import { checkInt } from '../abi/validate';
import type { IoctlArg, IoctlBackend } from '../backend/types';
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
  #owner: string | undefined;

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
   * @internal While a worker thread runs this vCPU, ioctls from this thread would block on the
   * kernel's vCPU mutex (and so freeze the event loop): they throw `ERR_KVM_VCPU_RUNNING` instead.
   */
  setOwner(owner: string | undefined): void {
    this.#owner = owner;
  }

  /** Whether a runtime currently runs this vCPU on another thread. */
  get running(): boolean {
    return this.#owner !== undefined;
  }

  protected override ioctl(request: number, arg?: IoctlArg): number {
    if (this.#owner !== undefined) {
      this.checkOpen();
      const err = new Error(`${this.label} is running in ${this.#owner}; use the pipeline's ctx.vcpu, or stop the run first`);
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

  // @section x86 state (getFpu, setFpu, setCpuid2, getCpuid2, enableCap, getLapic, setLapic, getMsrs, setMsrs, getMpState, setMpState, getXsave, getXsave2, setXsave, setXsave2, getXcrs, setXcrs, getDebugRegs, setDebugRegs, getVcpuEvents, setVcpuEvents, setGuestDebug, kvmclockCtrl, getTscKhz, setTscKhz, translateGva, smi, nmi, nestedState, setNestedState)

  // @section sync regs and coalesced ring (setSyncValidReg, setSyncDirtyReg, clearSyncValidReg, clearSyncDirtyReg, syncRegs, syncRegsMut, mapCoalescedMmioRing, coalescedMmioRead)

  // @section arm64 (vcpuInit, vcpuFinalize, getRegList, setOneReg, getOneReg, setDeviceAttr, hasDeviceAttr)
}
