/**
 * `VmFd`: a virtual machine.
 *
 * @module
 */
import { arm64Ioctls, kvm_vcpu_init, type KvmVcpuInit } from '../abi/arm64';
import { KvmError, errnoOf } from '../abi/errors';
import { decodeStruct, dv, structBytes } from '../abi/codec';
import { ioctls } from '../abi/kvm-constants';
import { kvm_dirty_log, kvm_userspace_memory_region } from '../abi/layouts';
import { checkInt, checkObject, checkU32, checkU64, invalidValue } from '../abi/validate';
import type { IoctlBackend } from '../backend/types';
import type { Cap } from './cap';
import { deviceAttrBytes, type DeviceAttr } from './device-attr';
import { FdOwner } from './fd';
import { GuestMemory, GuestMemoryMap } from './guest-memory';
import { VcpuFd } from './vcpu-fd';

/** Argument of {@link VmFd.setUserMemoryRegion}: `kvm_userspace_memory_region` with a mapping instead of a pointer. */
export interface UserMemoryRegion {
  /** Slot id (bits 16+ select the address space). */
  slot: number;
  /** `KVM_MEM_LOG_DIRTY_PAGES`, `KVM_MEM_READONLY` (default 0). */
  flags?: number;
  /** Guest physical address of the slot. */
  guestPhysAddr: bigint | number;
  /** The host memory; omit it (and set `memorySize: 0`) to delete the slot. */
  memory?: GuestMemory;
  /** Offset into `memory` (default 0; page aligned). */
  memoryOffset?: number;
  /** Bytes; default: the rest of `memory`. 0 deletes the slot. */
  memorySize?: number;
}

interface SlotRecord {
  guestPhysAddr: bigint;
  release: () => void;
}

/**
 * A VM (kvm-ioctls' `VmFd`). Closing it closes its vCPUs and devices first; its memory slots go
 * with the VM, and their mappings become free to close.
 *
 * @example
 * ```ts
 * using vm = kvm.createVm();
 * using mem = GuestMemory.anonymous(0x4000);
 * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x1000n, memory: mem });
 * using vcpu = vm.createVcpu(0);
 * ```
 */
export class VmFd extends FdOwner {
  protected readonly label = 'VmFd';
  readonly #runSize: number;
  #slots = new Map<number, SlotRecord>();
  /** The guest-physical address space made of this VM's memory slots. */
  readonly guestMemory = new GuestMemoryMap();

  /** @internal Use `Kvm#createVm()`. */
  constructor(backend: IoctlBackend, fd: number, runSize: number) {
    super(backend, fd);
    this.#runSize = runSize;
    this.onClosed(() => {
      for (const s of this.#slots.values()) s.release();
      this.#slots.clear();
    });
  }

  /**
   * The size of each vCPU's `kvm_run` mapping (`run_size`).
   * @example `vm.runSize() === kvm.getVcpuMmapSize()`
   */
  runSize(): number {
    this.checkOpen();
    return this.#runSize;
  }

  /**
   * `KVM_SET_USER_MEMORY_REGION`: adds, moves, re-flags or (with `memorySize: 0`) deletes a slot.
   * Takes a {@link GuestMemory} (or a range of one), never a raw address.
   *
   * @example
   * ```ts
   * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x1000n, memory: mem, flags: KVM_MEM_LOG_DIRTY_PAGES });
   * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x1000n, memorySize: 0 }); // delete
   * ```
   * @throws {@link KvmError} EEXIST (overlaps another slot), EINVAL (unaligned, bad slot, bad flags,
   *   resizing a slot, deleting a missing slot)
   * @throws `TypeError`/`RangeError` for malformed arguments or a range outside the mapping
   */
  setUserMemoryRegion(region: UserMemoryRegion): void {
    checkObject('region', region);
    const slot = checkU32('region.slot', region.slot);
    const flags = region.flags === undefined ? 0 : checkU32('region.flags', region.flags);
    const gpa = checkU64('region.guestPhysAddr', region.guestPhysAddr);
    let size: number;
    let hostAddr = 0n;
    const mem = region.memory;
    let offset = 0;
    if (mem === undefined) {
      size = region.memorySize === undefined ? 0 : checkInt('region.memorySize', region.memorySize, 0, 0);
      if (size !== 0) invalidValue('region.memory', 'is required unless memorySize is 0');
    } else {
      if (!(mem instanceof GuestMemory)) invalidValue('region.memory', 'must be a GuestMemory', mem);
      offset = region.memoryOffset === undefined ? 0 : checkInt('region.memoryOffset', region.memoryOffset, 0, mem.size);
      size = region.memorySize === undefined ? mem.size - offset : checkInt('region.memorySize', region.memorySize, 0, mem.size - offset);
      if (mem.backend !== this.backend) invalidValue('region.memory', 'belongs to another backend');
      hostAddr = mem.hostAddress + BigInt(offset);
    }
    const bytes = structBytes(kvm_userspace_memory_region, {
      slot, flags, guestPhysAddr: gpa, memorySize: BigInt(size), userspaceAddr: hostAddr,
    });
    this.ioctl(ioctls.KVM_SET_USER_MEMORY_REGION, bytes);
    const old = this.#slots.get(slot);
    if (old !== undefined) {
      old.release();
      this.guestMemory.remove(old.guestPhysAddr);
      this.#slots.delete(slot);
    }
    if (size > 0 && mem !== undefined) {
      const releaseMem = mem.retain(`VmFd slot ${slot}`);
      this.guestMemory.add({ guestPhysAddr: gpa, memory: mem, offset, size });
      this.#slots.set(slot, { guestPhysAddr: gpa, release: releaseMem });
    }
  }

  /**
   * `KVM_CREATE_VCPU` and the mmap of its `kvm_run`.
   * @example `using vcpu = vm.createVcpu(0);`
   * @throws {@link KvmError} EEXIST (id in use), EINVAL (id >= `getMaxVcpuId()`), ENOMEM
   */
  createVcpu(id: number | bigint): VcpuFd {
    const n = typeof id === 'bigint' ? checkU64('id', id) : BigInt(checkInt('id', id, 0, Number.MAX_SAFE_INTEGER));
    if (n > 0xffff_ffffn) throw new KvmError(errnoOf('EINVAL'), 'ioctl', { request: 'KVM_CREATE_VCPU', detail: 'vCPU id does not fit in 32 bits' });
    const fd = this.ioctl(ioctls.KVM_CREATE_VCPU, n);
    return this.#adoptVcpu(fd, Number(n));
  }

  /**
   * Wraps an existing vCPU fd (`create_vcpu_from_rawfd`), mapping its `kvm_run`.
   * @example `const v = vm.createVcpuFromRawfd(backend.dup(vcpu.asRawFd()));`
   */
  createVcpuFromRawfd(fd: number): VcpuFd {
    checkInt('fd', fd, 0, 0x7fff_ffff);
    this.checkOpen();
    return this.#adoptVcpu(fd, -1);
  }

  #adoptVcpu(fd: number, id: number): VcpuFd {
    let vcpu: VcpuFd;
    try {
      vcpu = new VcpuFd(this.backend, fd, this.#runSize, id, this);
    } catch (e) {
      this.backend.close(fd);
      throw e;
    }
    const release = this.adopt(vcpu);
    vcpu.onClosed(release);
    return vcpu;
  }

  /**
   * `KVM_GET_DIRTY_LOG`: the dirty-page bitmap of a slot (bit n = page n written since the last
   * call; reading clears it). One 64-bit word per 64 pages.
   *
   * @example
   * ```ts
   * const bitmap = vm.getDirtyLog(0, 0x4000);
   * const dirty = bitmap.reduce((n, w) => n + popcount(w), 0);
   * ```
   * @throws {@link KvmError} ENOENT (no such slot, or the slot does not log), EINVAL (bad slot id)
   */
  getDirtyLog(slot: number, memorySize: number): BigUint64Array {
    checkU32('slot', slot);
    checkInt('memorySize', memorySize, 0, Number.MAX_SAFE_INTEGER);
    const pages = Math.ceil(memorySize / this.backend.pageSize);
    const bitmap = new BigUint64Array(Math.max(1, Math.ceil(pages / 64)));
    const arg = structBytes(kvm_dirty_log, { slot, dirtyBitmap: this.backend.addressOf(bitmap) });
    this.ioctl(ioctls.KVM_GET_DIRTY_LOG, arg);
    return Math.ceil(pages / 64) === 0 ? new BigUint64Array(0) : bitmap;
  }

  /**
   * `KVM_CHECK_EXTENSION` on the VM fd (per-VM answer), raw.
   * @example `vm.checkExtensionRaw(Cap.MaxVcpus)`
   */
  checkExtensionRaw(cap: number | bigint): number {
    const c = checkU64('cap', cap);
    if (c > 0xffff_ffffn) invalidValue('cap', 'must fit in 32 bits', cap);
    return this.ioctl(ioctls.KVM_CHECK_EXTENSION, c);
  }

  /** `KVM_CHECK_EXTENSION` on the VM fd, typed. @example `vm.checkExtensionInt(Cap.NrMemslots)` */
  checkExtensionInt(cap: Cap): number {
    return this.checkExtensionRaw(checkInt('cap', cap, 0, 0xffff_ffff));
  }

  /** Whether the VM supports a capability. @example `vm.checkExtension(Cap.Irqchip)` */
  checkExtension(cap: Cap): boolean {
    return this.checkExtensionInt(cap) > 0;
  }

  // @section x86 platform (setTssAddress, setIdentityMapAddress, createIrqChip, getIrqchip, setIrqchip, createPit2, getPit2, setPit2, getClock, setClock, setMsrFilter, enableCap)

  // @section interrupts and events (signalMsi, setGsiRouting, registerIoevent, unregisterIoevent, registerIrqfd, registerIrqfdWithResample, unregisterIrqfd, setIrqLine, registerCoalescedMmio, unregisterCoalescedMmio)

  // @section devices and memory (createDevice, setUserMemoryRegion2, createGuestMemfd, setMemoryAttributes, encryptOp, encryptOpSev, registerEncMemoryRegion, unregisterEncMemoryRegion)

  // @section arm64 (getPreferredTarget, setDeviceAttr, hasDeviceAttr)

  /**
   * `KVM_ARM_PREFERRED_TARGET`: the `kvm_vcpu_init` to pass to `VcpuFd#vcpuInit` for this host's
   * CPU (target set, features zero). aarch64 only (experimental).
   * @example `const init = vm.getPreferredTarget(); init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2; vcpu.vcpuInit(init);`
   * @throws {@link KvmError} ENODEV (no preferred target); ENOTTY on x86
   */
  getPreferredTarget(): KvmVcpuInit {
    const buf = new Uint8Array(kvm_vcpu_init.size);
    this.ioctl(arm64Ioctls.KVM_ARM_PREFERRED_TARGET, buf);
    return decodeStruct<KvmVcpuInit>(kvm_vcpu_init, dv(buf));
  }

  /**
   * `KVM_SET_DEVICE_ATTR` on the VM fd (arm64: the SMCCC filter, `KVM_ARM_VM_SMCCC_CTRL`).
   * kvm-ioctls 0.24, aarch64 (experimental here).
   * @example `vm.setDeviceAttr({ group: KVM_ARM_VM_SMCCC_CTRL, attr: KVM_ARM_VM_SMCCC_FILTER, addr: filterBytes });`
   * @throws {@link KvmError} ENXIO (unknown attribute), EFAULT (bad `addr`), EEXIST, EBUSY; ENOTTY on x86
   */
  setDeviceAttr(attr: DeviceAttr): void {
    const { bytes, keep } = deviceAttrBytes(this.backend, attr);
    this.ioctl(ioctls.KVM_SET_DEVICE_ATTR, bytes);
    void keep;
  }

  /**
   * `KVM_HAS_DEVICE_ATTR` on the VM fd: succeeds when the attribute exists.
   * @example `vm.hasDeviceAttr({ group: KVM_ARM_VM_SMCCC_CTRL, attr: KVM_ARM_VM_SMCCC_FILTER })`
   * @throws {@link KvmError} ENXIO when it does not; ENOTTY on x86
   */
  hasDeviceAttr(attr: DeviceAttr): void {
    const { bytes } = deviceAttrBytes(this.backend, attr);
    this.ioctl(ioctls.KVM_HAS_DEVICE_ATTR, bytes);
  }
}
