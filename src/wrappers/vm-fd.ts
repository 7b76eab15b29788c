/**
 * `VmFd`: a virtual machine.
 *
 * @module
 */
import { arm64Ioctls, kvm_vcpu_init, type KvmVcpuInit } from '../abi/arm64';
import { KvmError, KvmTypeError, errnoOf } from '../abi/errors';
import { decodeStruct, dv, structBytes } from '../abi/codec';
import { ioctls } from '../abi/kvm-constants';
import { kvm_coalesced_mmio_zone, kvm_dirty_log, kvm_enable_cap, kvm_userspace_memory_region } from '../abi/layouts';
import { checkInt, checkObject, checkU32, checkU64, invalidValue } from '../abi/validate';
// @section imports: x86 platform, interrupts and events, devices and memory
import { kvm } from '../abi/kvm-constants';
import {
  kvm_clock_data,
  kvm_create_device,
  kvm_create_guest_memfd,
  kvm_enc_region,
  kvm_ioeventfd,
  kvm_irq_level,
  kvm_irq_routing,
  kvm_irq_routing_entry,
  kvm_irqchip,
  kvm_irqfd,
  kvm_memory_attributes,
  kvm_msi,
  kvm_msr_filter,
  kvm_pit_config,
  kvm_pit_state2,
  kvm_sev_cmd,
  kvm_userspace_memory_region2,
  type KvmClockData,
  type KvmCreateDevice,
  type KvmEncRegion,
  type KvmIrqchip,
  type KvmMemoryAttributes,
  type KvmMsi,
  type KvmMsrFilter,
  type KvmPitConfig,
  type KvmPitState2,
  type KvmSevCmd,
} from '../abi/layouts';
import { checkBool, checkBytes, invalidType } from '../abi/validate';
import { DeviceFd } from './device-fd';
import { EventFd } from './event-fd';
import { GuestMemfd } from './guest-memfd';
import { checkIoEventAddress, datamatchFields, type IoEventAddress, type IoEventDatamatch } from './io-event';
import {
  routingEntryBytes,
  type CreateDeviceInput,
  type IrqRoutingEntry,
  type IrqchipInput,
  type MsrFilterDefaultAction,
  type MsrFilterRange,
  type UserMemoryRegion2,
} from './vm-args';
import type { IoctlBackend } from '../backend/types';
import { capNumber, type Cap } from './cap';
import { deviceAttrBytes, type DeviceAttr } from './device-attr';
import { FdOwner } from './fd';
import { GuestMemory, GuestMemoryMap } from './guest-memory';
import { VcpuFd, type EnableCap } from './vcpu-fd';

/** Argument of {@link VmFd.setUserMemoryRegion}: `kvm_userspace_memory_region` with a mapping instead of a pointer. */
export interface UserMemoryRegion {
  /** Slot id (bits 16+ select the address space). */
  slot: number;
  /** `KVM_MEM_LOG_DIRTY_PAGES`, `KVM_MEM_READONLY` (default 0). */
  flags?: number;
  /** Guest physical address of the slot. */
  guestPhysAddr: bigint | number;
  /**
   * The host memory. Required, except to delete the slot: then omit it and pass `memorySize: 0`
   * (a region with neither is a TypeError, never a silent delete).
   */
  memory?: GuestMemory;
  /** Offset into `memory` (default 0; page aligned). */
  memoryOffset?: number;
  /** Bytes; default: the rest of `memory`. 0 (explicitly, without `memory`) deletes the slot. */
  memorySize?: number;
}

/**
 * A coalesced zone's address: port I/O or MMIO. Structurally the same as `IoEventAddress`, so one
 * can be passed where the other is expected.
 */
export interface CoalescedAddress {
  kind: 'pio' | 'mmio';
  addr: bigint;
}

interface SlotRecord {
  guestPhysAddr: bigint;
  /** Bytes: the kernel's dirty bitmap for the slot covers this many (one bit per page). */
  size: number;
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
      for (const s of this.#slots.values()) {
        s.release();
        this.guestMemory.remove(s.guestPhysAddr);
      }
      this.#slots.clear();
    });
  }

  /**
   * @internal A VmFd over an fd another VmFd owns (the worker runtime's view of a VM): closing it
   * leaves the fd open.
   */
  static borrow(backend: IoctlBackend, fd: number, runSize: number): VmFd {
    const vm = new VmFd(backend, fd, runSize);
    vm.borrow();
    return vm;
  }

  /** @internal Wraps a vCPU fd owned elsewhere (see {@link VmFd.borrow}); closing it leaves the fd open. */
  borrowVcpu(fd: number, id: number): VcpuFd {
    this.checkOpen();
    const vcpu = VcpuFd.borrowed(this.backend, fd, this.#runSize, id, this);
    const release = this.adopt(vcpu);
    vcpu.onClosed(release);
    return vcpu;
  }

  /** @internal The mappings behind this VM's memory slots. */
  slotMemories(): GuestMemory[] {
    this.checkOpen();
    return [...new Set(this.guestMemory.regions.map((r) => r.memory))];
  }

  /** The memory slots as `{ slot, guestPhysAddr, hostAddress, size }` (for worker-side views). */
  memorySlots(): Array<{ slot: number; guestPhysAddr: bigint; hostAddress: bigint; size: number }> {
    this.checkOpen();
    const out: Array<{ slot: number; guestPhysAddr: bigint; hostAddress: bigint; size: number }> = [];
    for (const [slot, rec] of this.#slots) {
      const hit = this.guestMemory.find(rec.guestPhysAddr);
      if (hit === undefined) continue;
      out.push({
        slot,
        guestPhysAddr: rec.guestPhysAddr,
        hostAddress: hit.region.memory.hostAddress + BigInt(hit.region.offset),
        size: hit.region.size,
      });
    }
    return out;
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
   * @throws `TypeError` ERR_INVALID_ARG_VALUE when `memory` is missing and `memorySize` is not an
   *   explicit 0 ("region.memory is required (pass memorySize: 0 to delete the slot)")
   * @throws `TypeError`/`RangeError` for malformed arguments or a range outside the mapping
   */
  setUserMemoryRegion(region: UserMemoryRegion): void {
    const { slot, flags, gpa, size, hostAddr, mem, offset } = this.#checkRegion(region);
    const bytes = structBytes(kvm_userspace_memory_region, {
      slot,
      flags,
      guestPhysAddr: gpa,
      memorySize: BigInt(size),
      userspaceAddr: hostAddr,
    });
    this.ioctl(ioctls.KVM_SET_USER_MEMORY_REGION, bytes);
    this.#recordSlot(slot, gpa, mem, offset, size);
  }

  /** Checks the fields shared by `setUserMemoryRegion` and `setUserMemoryRegion2`. */
  #checkRegion(region: UserMemoryRegion) {
    checkObject('region', region);
    const slot = checkU32('region.slot', region.slot);
    const flags = region.flags === undefined ? 0 : checkU32('region.flags', region.flags);
    const gpa = checkU64('region.guestPhysAddr', region.guestPhysAddr);
    let size: number;
    let hostAddr = 0n;
    const mem = region.memory;
    let offset = 0;
    if (mem === undefined) {
      // Deleting is explicit: without memory, only `memorySize: 0` is accepted.
      if (region.memorySize === undefined)
        throw new KvmTypeError(
          'ERR_INVALID_ARG_VALUE',
          'region.memory is required (pass memorySize: 0 to delete the slot)',
        );
      size = checkInt('region.memorySize', region.memorySize, 0, 0);
    } else {
      if (!(mem instanceof GuestMemory)) invalidValue('region.memory', 'must be a GuestMemory', mem);
      offset =
        region.memoryOffset === undefined ? 0 : checkInt('region.memoryOffset', region.memoryOffset, 0, mem.size);
      size =
        region.memorySize === undefined
          ? mem.size - offset
          : checkInt('region.memorySize', region.memorySize, 0, mem.size - offset);
      if (mem.backend !== this.backend) invalidValue('region.memory', 'belongs to another backend');
      hostAddr = mem.hostAddress + BigInt(offset);
    }
    return { slot, flags, gpa, size, hostAddr, mem, offset };
  }

  /** After the kernel accepted a slot: releases the old mapping, records and retains the new one. */
  #recordSlot(slot: number, gpa: bigint, mem: GuestMemory | undefined, offset: number, size: number): void {
    const old = this.#slots.get(slot);
    if (old !== undefined) {
      old.release();
      this.guestMemory.remove(old.guestPhysAddr);
      this.#slots.delete(slot);
    }
    if (size > 0 && mem !== undefined) {
      const releaseMem = mem.retain(`VmFd slot ${slot}`);
      this.guestMemory.add({ guestPhysAddr: gpa, memory: mem, offset, size });
      this.#slots.set(slot, { guestPhysAddr: gpa, size, release: releaseMem });
    }
  }

  /**
   * `KVM_CREATE_VCPU` and the mmap of its `kvm_run`.
   * @example `using vcpu = vm.createVcpu(0);`
   * @throws {@link KvmError} EEXIST (id in use), EINVAL (id >= `getMaxVcpuId()`), ENOMEM
   */
  createVcpu(id: number | bigint): VcpuFd {
    const n = typeof id === 'bigint' ? checkU64('id', id) : BigInt(checkInt('id', id, 0, Number.MAX_SAFE_INTEGER));
    if (n > 0xffff_ffffn)
      throw new KvmError(errnoOf('EINVAL'), 'ioctl', {
        request: 'KVM_CREATE_VCPU',
        detail: 'vCPU id does not fit in 32 bits',
      });
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
   * call; reading clears it). One 64-bit word per 64 pages. When the slot is larger than
   * `memorySize`, the bitmap covers the whole slot (the kernel always writes all of it).
   *
   * @example
   * ```ts
   * const popcount = (w: bigint): number => [...w.toString(2)].filter((b) => b === '1').length;
   * const bitmap = vm.getDirtyLog(0, 0x4000);
   * const dirty = bitmap.reduce((n, w) => n + popcount(w), 0); // pages written since the last call
   * ```
   * @throws {@link KvmError} ENOENT (no such slot, or the slot does not log), EINVAL (bad slot id)
   */
  getDirtyLog(slot: number, memorySize: number): BigUint64Array {
    checkU32('slot', slot);
    // 2^52: the widest guest-physical address space (and a bitmap that can still be allocated).
    checkInt('memorySize', memorySize, 0, 2 ** 52);
    const pages = Math.ceil(memorySize / this.backend.pageSize);
    // The kernel writes a bitmap as large as the slot it knows, whatever memorySize says: never
    // hand it a smaller buffer (it would write past its end into the JavaScript heap).
    const known = this.#slots.get(slot);
    const slotWords = known === undefined ? 0 : Math.ceil(Math.ceil(known.size / this.backend.pageSize) / 64);
    const bitmap = new BigUint64Array(Math.max(1, Math.ceil(pages / 64), slotWords));
    const arg = structBytes(kvm_dirty_log, { slot, dirtyBitmap: this.backend.addressOf(bitmap) });
    this.ioctl(ioctls.KVM_GET_DIRTY_LOG, arg);
    return Math.ceil(pages / 64) === 0 ? new BigUint64Array(0) : bitmap;
  }

  /**
   * `KVM_CHECK_EXTENSION` on the VM fd (per-VM answer), raw.
   * @example `vm.checkExtensionRaw(Cap.MaxVcpus)`
   */
  checkExtensionRaw(cap: number | bigint): number {
    return this.ioctl(ioctls.KVM_CHECK_EXTENSION, capNumber(cap));
  }

  /** `KVM_CHECK_EXTENSION` on the VM fd, typed. @example `vm.checkExtensionInt(Cap.NrMemslots)` */
  checkExtensionInt(cap: Cap): number {
    return this.checkExtensionRaw(checkInt('cap', cap, 0, 0xffff_ffff));
  }

  /** Whether the VM supports a capability. @example `vm.checkExtension(Cap.Irqchip)` */
  checkExtension(cap: Cap): boolean {
    return this.checkExtensionInt(cap) > 0;
  }

  // @section vm caps and coalesced (enableCap, registerCoalescedMmio, unregisterCoalescedMmio)

  /**
   * `KVM_ENABLE_CAP` on the VM fd: VM-wide capabilities such as `KVM_CAP_SPLIT_IRQCHIP`
   * (`args[0]` = IOAPIC pins), `KVM_CAP_X86_USER_SPACE_MSR` (`args[0]` = `KVM_MSR_EXIT_REASON_*`
   * mask), `KVM_CAP_EXIT_HYPERCALL` (`args[0]` = hypercall bitmap).
   * @example `vm.enableCap({ cap: constants.KVM_CAP_X86_USER_SPACE_MSR, args: [2n] });`
   * @throws {@link KvmError} EINVAL (unknown cap, bad args, or too late, e.g. after vCPUs exist)
   * @throws `TypeError`/`RangeError` for malformed arguments
   */
  enableCap(cap: EnableCap): void {
    checkObject('cap', cap);
    this.checkOpen();
    this.ioctl(ioctls.KVM_ENABLE_CAP, structBytes(kvm_enable_cap, cap, 'cap'));
  }

  #coalescedZone(addr: CoalescedAddress, size: number): Uint8Array {
    checkObject('addr', addr);
    if (addr.kind !== 'pio' && addr.kind !== 'mmio') invalidValue('addr.kind', "must be 'pio' or 'mmio'", addr.kind);
    const a = checkU64('addr.addr', addr.addr);
    checkU32('size', size);
    this.checkOpen();
    return structBytes(kvm_coalesced_mmio_zone, { addr: a, size, pio: addr.kind === 'pio' ? 1 : 0 });
  }

  /**
   * `KVM_REGISTER_COALESCED_MMIO`: guest writes to `[addr, addr + size)` (port I/O when
   * `kind: 'pio'`, which sets `zone.pio = 1`) no longer exit; they queue in each vCPU's coalesced
   * ring (`VcpuFd#mapCoalescedMmioRing`, `VcpuFd#coalescedMmioRead`).
   * @example `vm.registerCoalescedMmio({ kind: 'pio', addr: 0x2cn }, 1);`
   * @throws {@link KvmError} EINVAL (bad zone), ENOSPC (too many I/O bus devices)
   * @throws `TypeError`/`RangeError` for malformed arguments
   */
  registerCoalescedMmio(addr: CoalescedAddress, size: number): void {
    this.ioctl(ioctls.KVM_REGISTER_COALESCED_MMIO, this.#coalescedZone(addr, size));
  }

  /**
   * `KVM_UNREGISTER_COALESCED_MMIO`: removes every zone inside `[addr, addr + size)`. Removing a
   * zone that is not registered succeeds.
   * @example `vm.unregisterCoalescedMmio({ kind: 'pio', addr: 0x2cn }, 1);`
   * @throws {@link KvmError}; `TypeError`/`RangeError` for malformed arguments
   */
  unregisterCoalescedMmio(addr: CoalescedAddress, size: number): void {
    this.ioctl(ioctls.KVM_UNREGISTER_COALESCED_MMIO, this.#coalescedZone(addr, size));
  }

  // @section x86 platform (setTssAddress, setIdentityMapAddress, createIrqChip, getIrqchip, setIrqchip, createPit2, getPit2, setPit2, getClock, setClock, setMsrFilter, enableCap)

  /**
   * `KVM_SET_TSS_ADDR`: the guest-physical address of a 3-page region for the real-mode TSS (Intel).
   * @example `vm.setTssAddress(0xfffb_d000);`
   * @throws {@link KvmError} EINVAL (address above 4 GiB, or the kernel refuses it)
   */
  setTssAddress(address: bigint | number): void {
    const a = checkU64('address', address);
    this.ioctl(ioctls.KVM_SET_TSS_ADDR, a);
  }

  /**
   * `KVM_SET_IDENTITY_MAP_ADDR`: the guest-physical address of the 1-page EPT identity map.
   * Must be called before the first vCPU is created.
   * @example `vm.setIdentityMapAddress(0xfffb_c000n);`
   * @throws {@link KvmError} EINVAL (a vCPU exists already)
   */
  setIdentityMapAddress(address: bigint | number): void {
    const a = checkU64('address', address);
    this.ioctl(ioctls.KVM_SET_IDENTITY_MAP_ADDR, new BigUint64Array([a]));
  }

  /**
   * `KVM_CREATE_IRQCHIP`: the in-kernel PIC pair and IOAPIC (and a local APIC per vCPU created
   * afterwards). Must come before the first vCPU.
   * @example `vm.createIrqChip();`
   * @throws {@link KvmError} EEXIST (already created), EINVAL (a vCPU exists already)
   */
  createIrqChip(): void {
    this.ioctl(ioctls.KVM_CREATE_IRQCHIP);
  }

  /**
   * `KVM_GET_IRQCHIP`: the state of one in-kernel interrupt controller. `chip.pic` is meaningful
   * for `KVM_IRQCHIP_PIC_MASTER` (0) and `KVM_IRQCHIP_PIC_SLAVE` (1), `chip.ioapic` for
   * `KVM_IRQCHIP_IOAPIC` (2).
   * @example `const master = vm.getIrqchip(constants.KVM_IRQCHIP_PIC_MASTER).chip.pic;`
   * @throws {@link KvmError} ENXIO (no irqchip), EINVAL (bad chip id)
   */
  getIrqchip(chipId: number): KvmIrqchip {
    const id = checkU32('chipId', chipId);
    const buf = structBytes(kvm_irqchip, { chipId: id });
    this.ioctl(ioctls.KVM_GET_IRQCHIP, buf);
    return decodeStruct<KvmIrqchip>(kvm_irqchip, dv(buf));
  }

  /**
   * `KVM_SET_IRQCHIP`. Only the union member that matches `chipId` is encoded (`chip.pic` for 0
   * and 1, `chip.ioapic` for 2; `chip.dummy` as raw bytes otherwise), so an object from
   * {@link getIrqchip} can be edited and passed back. In an IOAPIC redirection entry, `bits` wins
   * over `fields` when both are present.
   * @example
   * ```ts
   * const c = vm.getIrqchip(0);
   * c.chip.pic.irqBase = 10;
   * vm.setIrqchip(c);
   * ```
   * @throws {@link KvmError} ENXIO (no irqchip), EINVAL (bad chip id); `TypeError`/`RangeError`
   */
  setIrqchip(irqchip: IrqchipInput): void {
    checkObject('irqchip', irqchip);
    const chipId = checkU32('irqchip.chipId', irqchip.chipId);
    const chip = checkObject<IrqchipInput['chip']>('irqchip.chip', irqchip.chip);
    let member: Record<string, unknown>;
    if ((chipId === kvm.KVM_IRQCHIP_PIC_MASTER || chipId === kvm.KVM_IRQCHIP_PIC_SLAVE) && chip.pic !== undefined) {
      member = { pic: chip.pic };
    } else if (chipId === kvm.KVM_IRQCHIP_IOAPIC && chip.ioapic !== undefined) {
      const io = checkObject<Record<string, unknown>>('irqchip.chip.ioapic', chip.ioapic);
      const tbl = io.redirtbl;
      member = {
        ioapic: Array.isArray(tbl)
          ? {
              ...io,
              redirtbl: tbl.map((e: { bits?: unknown; fields?: unknown }) =>
                e !== null && typeof e === 'object' && e.bits !== undefined ? { bits: e.bits } : e,
              ),
            }
          : io,
      };
    } else if (chip.dummy !== undefined) {
      member = { dummy: chip.dummy };
    } else {
      invalidValue(
        'irqchip.chip',
        `needs ${chipId === kvm.KVM_IRQCHIP_IOAPIC ? 'ioapic' : chipId <= 1 ? 'pic' : 'dummy'} for chip id ${chipId}`,
      );
    }
    this.ioctl(ioctls.KVM_SET_IRQCHIP, structBytes(kvm_irqchip, { chipId, chip: member }, 'irqchip'));
  }

  /**
   * `KVM_CREATE_PIT2`: the in-kernel i8254 timer. Needs the in-kernel irqchip.
   * @example `vm.createPit2({ flags: 0 });`
   * @throws {@link KvmError} EEXIST (already created), ENOENT (no irqchip)
   */
  createPit2(config: Partial<KvmPitConfig> = {}): void {
    this.ioctl(ioctls.KVM_CREATE_PIT2, structBytes(kvm_pit_config, checkObject('config', config), 'config'));
  }

  /**
   * `KVM_GET_PIT2`: the PIT's three channels and flags.
   * @example `const pit = vm.getPit2();`
   * @throws {@link KvmError} ENXIO (no PIT)
   */
  getPit2(): KvmPitState2 {
    return this.getStruct<KvmPitState2>(kvm_pit_state2, ioctls.KVM_GET_PIT2);
  }

  /**
   * `KVM_SET_PIT2`.
   * @example `vm.setPit2(vm.getPit2());`
   * @throws {@link KvmError} ENXIO (no PIT); `TypeError`/`RangeError` for bad fields
   */
  setPit2(state: KvmPitState2): void {
    checkObject('state', state);
    this.ioctl(ioctls.KVM_SET_PIT2, structBytes(kvm_pit_state2, state, 'state'));
  }

  /**
   * `KVM_GET_CLOCK`: the kvmclock value (ns) and, with `flags`, the realtime / host TSC it was read at.
   * @example `const { clock } = vm.getClock();`
   * @throws {@link KvmError}
   */
  getClock(): KvmClockData {
    return this.getStruct<KvmClockData>(kvm_clock_data, ioctls.KVM_GET_CLOCK);
  }

  /**
   * `KVM_SET_CLOCK`: sets the kvmclock (ns).
   * @example `vm.setClock({ clock: 10n });`
   * @throws {@link KvmError} EINVAL (unknown flags)
   */
  setClock(data: Partial<KvmClockData>): void {
    checkObject('data', data);
    this.ioctl(ioctls.KVM_SET_CLOCK, structBytes(kvm_clock_data, data, 'data'));
  }

  /**
   * `KVM_X86_SET_MSR_FILTER` (kvm-ioctls' `set_msr_filter`): MSRs in `ranges` whose bitmap bit is
   * 0 are denied for the range's accesses (`READ`/`WRITE`); others follow `defaultAction`. As
   * kvm-ioctls, more than 16 ranges, or a bitmap shorter than `ceil(msrCount / 8)` bytes, fail
   * with EINVAL before any ioctl. Each bitmap is copied (padded to whole 64-bit words, which the
   * kernel reads).
   * @example
   * ```ts
   * vm.setMsrFilter(MsrFilterDefaultAction.DENY, [
   *   { flags: MsrFilterRangeFlags.READ | MsrFilterRangeFlags.WRITE, base: 0x10, msrCount: 1, bitmap: Uint8Array.of(1) },
   * ]);
   * ```
   * @throws {@link KvmError} EINVAL (local checks; DENY without ranges; bad flags), EFAULT
   */
  setMsrFilter(defaultAction: MsrFilterDefaultAction, ranges: ReadonlyArray<MsrFilterRange>): void {
    const action = checkU32('defaultAction', defaultAction);
    if (!Array.isArray(ranges)) invalidType('ranges', 'an array', ranges);
    const R = 'KVM_X86_SET_MSR_FILTER';
    if (ranges.length > kvm.KVM_MSR_FILTER_MAX_RANGES) {
      throw new KvmError(errnoOf('EINVAL'), 'ioctl', {
        request: R,
        detail: `at most ${kvm.KVM_MSR_FILTER_MAX_RANGES} ranges`,
      });
    }
    const keep: Uint8Array[] = [];
    const raw = ranges.map((r: MsrFilterRange, i: number) => {
      const n = `ranges[${i}]`;
      checkObject(n, r);
      const flags = checkU32(`${n}.flags`, r.flags);
      const base = checkU32(`${n}.base`, r.base);
      const count = checkU32(`${n}.msrCount`, r.msrCount);
      const bitmap = checkBytes(`${n}.bitmap`, r.bitmap);
      if (bitmap.length < Math.ceil(count / 8)) {
        throw new KvmError(errnoOf('EINVAL'), 'ioctl', {
          request: R,
          detail: `${n}.bitmap is shorter than ceil(msrCount / 8) bytes`,
        });
      }
      const copy = new Uint8Array(Math.max(8, Math.ceil(bitmap.length / 8) * 8));
      copy.set(bitmap);
      keep.push(copy);
      return { flags, base, nmsrs: count, bitmap: this.backend.addressOf(copy) };
    });
    this.checkOpen();
    this.ioctl(ioctls.KVM_X86_SET_MSR_FILTER, structBytes(kvm_msr_filter, { flags: action, ranges: raw }));
    keep.length = 0;
  }

  /**
   * `KVM_X86_SET_MSR_FILTER` with a raw `kvm_msr_filter` (kvm-ioctls' unsafe
   * `set_msr_filter_unchecked`): no local checks; each range's `bitmap` is a user address that
   * must point at `ceil(nmsrs / 64) * 8` readable bytes (get it with `vm.backend.addressOf()` and
   * keep the array alive until this returns).
   * @example `vm.setMsrFilterUnchecked({ flags: 0, ranges: [] });`
   * @throws {@link KvmError} EINVAL, EFAULT
   */
  setMsrFilterUnchecked(filter: KvmMsrFilter): void {
    checkObject('filter', filter);
    this.ioctl(ioctls.KVM_X86_SET_MSR_FILTER, structBytes(kvm_msr_filter, filter, 'filter'));
  }

  // @section interrupts and events (signalMsi, setGsiRouting, registerIoevent, unregisterIoevent, registerIrqfd, registerIrqfdWithResample, unregisterIrqfd, setIrqLine, registerCoalescedMmio, unregisterCoalescedMmio)

  /**
   * `KVM_SIGNAL_MSI`: injects a message-signalled interrupt. Returns the kernel's count: > 0
   * delivered, 0 blocked by the guest.
   * @example `vm.signalMsi({ addressLo: 0xfee0_0000, data: 0x30 });`
   * @throws {@link KvmError} EINVAL (no irqchip, bad flags), EPERM (no vCPU accepted it)
   */
  signalMsi(msi: Partial<KvmMsi>): number {
    checkObject('msi', msi);
    return this.ioctl(ioctls.KVM_SIGNAL_MSI, structBytes(kvm_msi, msi, 'msi'));
  }

  /**
   * `KVM_SET_GSI_ROUTING`: replaces the whole GSI routing table (`struct kvm_irq_routing` with its
   * flexible array of entries). Only the `u` member matching each entry's `type` is encoded
   * (`irqchip` for `KVM_IRQ_ROUTING_IRQCHIP`, `msi` for `KVM_IRQ_ROUTING_MSI`, …).
   * @example
   * ```ts
   * vm.setGsiRouting([
   *   { gsi: 4, type: constants.KVM_IRQ_ROUTING_IRQCHIP, u: { irqchip: { irqchip: 2, pin: 4 } } },
   *   { gsi: 24, type: constants.KVM_IRQ_ROUTING_MSI, u: { msi: { addressLo: 0xfee0_0000, data: 0x41 } } },
   * ]);
   * ```
   * @throws {@link KvmError} EINVAL (no irqchip, bad entry, duplicate GSI, more than 4096 entries)
   */
  setGsiRouting(entries: ReadonlyArray<IrqRoutingEntry>): void {
    if (!Array.isArray(entries)) invalidType('entries', 'an array', entries);
    const size = kvm_irq_routing.size + entries.length * kvm_irq_routing_entry.size;
    const buf = new Uint8Array(size);
    buf.set(structBytes(kvm_irq_routing, { nr: entries.length, flags: 0 }));
    entries.forEach((e: IrqRoutingEntry, i: number) =>
      buf.set(routingEntryBytes(e, `entries[${i}]`), kvm_irq_routing.size + i * kvm_irq_routing_entry.size),
    );
    this.ioctl(ioctls.KVM_SET_GSI_ROUTING, buf);
  }

  #ioeventfd(fd: EventFd, addr: IoEventAddress, datamatch: IoEventDatamatch, deassign: boolean): void {
    const evt = this.#eventFd('fd', fd);
    const a = checkIoEventAddress('addr', addr);
    const { len, datamatch: value } = datamatchFields(datamatch);
    let flags = deassign ? kvm.KVM_IOEVENTFD_FLAG_DEASSIGN : 0;
    if (a.kind === 'pio') flags |= kvm.KVM_IOEVENTFD_FLAG_PIO;
    if (len > 0) flags |= kvm.KVM_IOEVENTFD_FLAG_DATAMATCH;
    this.checkOpen();
    this.ioctl(
      ioctls.KVM_IOEVENTFD,
      structBytes(kvm_ioeventfd, { datamatch: value, addr: a.addr, len, fd: evt, flags }),
    );
  }

  #eventFd(name: string, fd: unknown): number {
    if (!(fd instanceof EventFd)) invalidType(name, 'an instance of EventFd', fd);
    if (fd.backend !== this.backend) invalidValue(name, 'belongs to another backend');
    return fd.asRawFd();
  }

  /**
   * `KVM_IOEVENTFD`: signals `fd` when the guest writes to `addr` (with `datamatch`: only writes
   * of that width and value; with {@link NoDatamatch}: any write), instead of exiting to userspace.
   * @example
   * ```ts
   * vm.registerIoevent(evt, IoEventAddress.pio(0xf4), NoDatamatch);
   * vm.registerIoevent(evt, IoEventAddress.mmio(0x1000n), { value: 0x1337, length: 2 });
   * ```
   * @throws {@link KvmError} EEXIST (an overlapping registration on that address), EINVAL, EBADF
   * @throws `RangeError` for a datamatch value that does not fit its width
   */
  registerIoevent(fd: EventFd, addr: IoEventAddress, datamatch: IoEventDatamatch): void {
    this.#ioeventfd(fd, addr, datamatch, false);
  }

  /**
   * `KVM_IOEVENTFD` with `KVM_IOEVENTFD_FLAG_DEASSIGN`: must match a registration exactly (same
   * eventfd, address, bus, width and value).
   * @example `vm.unregisterIoevent(evt, IoEventAddress.pio(0xf4), NoDatamatch);`
   * @throws {@link KvmError} ENOENT (no such registration)
   */
  unregisterIoevent(fd: EventFd, addr: IoEventAddress, datamatch: IoEventDatamatch): void {
    this.#ioeventfd(fd, addr, datamatch, true);
  }

  #irqfd(fd: EventFd, gsi: number, flags: number, resample?: EventFd): void {
    const evt = this.#eventFd('fd', fd);
    const rs = resample === undefined ? 0 : this.#eventFd('resamplefd', resample);
    const g = checkU32('gsi', gsi);
    this.checkOpen();
    this.ioctl(ioctls.KVM_IRQFD, structBytes(kvm_irqfd, { fd: evt, gsi: g, flags, resamplefd: rs }));
  }

  /**
   * `KVM_IRQFD`: a write to `fd` raises `gsi` (edge). Needs the in-kernel irqchip.
   * @example `vm.registerIrqfd(evt, 4); evt.write(1n);`
   * @throws {@link KvmError} EINVAL (no irqchip), EBUSY (this eventfd already drives a GSI), EBADF
   */
  registerIrqfd(fd: EventFd, gsi: number): void {
    this.#irqfd(fd, gsi, 0);
  }

  /**
   * `KVM_IRQFD` with `KVM_IRQFD_FLAG_RESAMPLE`: level-triggered; the kernel signals `resamplefd`
   * when the guest EOIs, so the device can re-assert. Needs the full in-kernel irqchip.
   * @example
   * ```ts
   * import { EventFd } from 'kvm-rx';
   * using resample = new EventFd(); // the kernel writes it when the guest EOIs GSI 5
   * vm.registerIrqfdWithResample(evt, resample, 5);
   * ```
   * @throws {@link KvmError} EINVAL (no or split irqchip), EBUSY, EBADF
   */
  registerIrqfdWithResample(fd: EventFd, resamplefd: EventFd, gsi: number): void {
    this.#irqfd(fd, gsi, kvm.KVM_IRQFD_FLAG_RESAMPLE, resamplefd);
  }

  /**
   * `KVM_IRQFD` with `KVM_IRQFD_FLAG_DEASSIGN`. Succeeds (does nothing) when no such irqfd exists,
   * as the kernel does.
   * @example `vm.unregisterIrqfd(evt, 4);`
   * @throws {@link KvmError} EBADF
   */
  unregisterIrqfd(fd: EventFd, gsi: number): void {
    this.#irqfd(fd, gsi, kvm.KVM_IRQFD_FLAG_DEASSIGN);
  }

  /**
   * `KVM_IRQ_LINE`: sets the level of an interrupt line of the in-kernel irqchip.
   * @example `vm.setIrqLine(4, true); vm.setIrqLine(4, false);`
   * @throws {@link KvmError} ENXIO (no irqchip)
   */
  setIrqLine(irq: number, active: boolean): void {
    const i = checkU32('irq', irq);
    const level = checkBool('active', active) ? 1 : 0;
    this.ioctl(ioctls.KVM_IRQ_LINE, structBytes(kvm_irq_level, { irq: i, level }));
  }

  // @section devices and memory (createDevice, setUserMemoryRegion2, createGuestMemfd, setMemoryAttributes, encryptOp, encryptOpSev, registerEncMemoryRegion, unregisterEncMemoryRegion)

  /**
   * `KVM_CREATE_DEVICE`. The kernel writes the new fd into the struct; as in kvm-ioctls, `device.fd`
   * is updated. With `KVM_CREATE_DEVICE_TEST` in `flags` the kernel only checks that the type is
   * supported and creates nothing: the result is then `undefined` (never a DeviceFd on fd 0).
   * The VM closes its devices.
   * @example
   * ```ts
   * vm.createDevice({ type: constants.KVM_DEV_TYPE_VFIO, flags: constants.KVM_CREATE_DEVICE_TEST }); // undefined: supported
   * const vfio = vm.createDevice({ type: constants.KVM_DEV_TYPE_VFIO })!;
   * ```
   * @throws {@link KvmError} ENODEV (type not supported), EBUSY (only one of that type), EEXIST
   */
  createDevice(device: CreateDeviceInput): DeviceFd | undefined {
    checkObject('device', device);
    const type = checkU32('device.type', device.type);
    const flags = device.flags === undefined ? 0 : checkU32('device.flags', device.flags);
    const buf = structBytes(kvm_create_device, { type, flags, fd: 0 });
    this.ioctl(ioctls.KVM_CREATE_DEVICE, buf);
    if (flags & kvm.KVM_CREATE_DEVICE_TEST) return undefined;
    const fd = decodeStruct<KvmCreateDevice>(kvm_create_device, dv(buf)).fd;
    device.fd = fd;
    let dev: DeviceFd;
    try {
      dev = new DeviceFd(this.backend, fd, type);
    } catch (e) {
      this.backend.close(fd);
      throw e;
    }
    const release = this.adopt(dev);
    dev.onClosed(release);
    return dev;
  }

  /**
   * `KVM_SET_USER_MEMORY_REGION2`: as {@link setUserMemoryRegion}, plus a guest_memfd backing
   * (with `KVM_MEM_GUEST_MEMFD` in `flags`) at `guestMemfdOffset`.
   * @example
   * ```ts
   * const gmem = vm.createGuestMemfd({ size: 0x4000n });
   * vm.setUserMemoryRegion2({ slot: 1, flags: KVM_MEM_GUEST_MEMFD, guestPhysAddr: 0x20000n, memory: mem, guestMemfd: gmem });
   * ```
   * @throws {@link KvmError} as setUserMemoryRegion, and EINVAL (bad guest_memfd, offset past its
   *   end, range already bound to another slot); ENOTTY on kernels before 6.8
   */
  setUserMemoryRegion2(region: UserMemoryRegion2): void {
    const { slot, flags, gpa, size, hostAddr, mem, offset } = this.#checkRegion(region);
    let gmemFd = 0;
    const g = region.guestMemfd;
    if (g !== undefined) {
      if (!(g instanceof GuestMemfd)) invalidType('region.guestMemfd', 'an instance of GuestMemfd', g);
      if (g.backend !== this.backend) invalidValue('region.guestMemfd', 'belongs to another backend');
      gmemFd = g.asRawFd();
    }
    const gmemOffset =
      region.guestMemfdOffset === undefined ? 0n : checkU64('region.guestMemfdOffset', region.guestMemfdOffset);
    const bytes = structBytes(kvm_userspace_memory_region2, {
      slot,
      flags,
      guestPhysAddr: gpa,
      memorySize: BigInt(size),
      userspaceAddr: hostAddr,
      guestMemfdOffset: gmemOffset,
      guestMemfd: gmemFd,
    });
    this.ioctl(ioctls.KVM_SET_USER_MEMORY_REGION2, bytes);
    this.#recordSlot(slot, gpa, mem, offset, size);
  }

  /**
   * `KVM_CREATE_GUEST_MEMFD`: guest-private memory of `size` bytes (a page multiple). kvm-ioctls
   * returns the raw fd; here it is an owned {@link GuestMemfd} that the VM closes.
   * @example `const gmem = vm.createGuestMemfd({ size: 0x10000n });`
   * @throws {@link KvmError} EINVAL (size 0 or unaligned, unsupported flags), ENOTTY (no guest_memfd)
   */
  createGuestMemfd(gmem: { size: bigint | number; flags?: bigint | number }): GuestMemfd {
    checkObject('gmem', gmem);
    const size = checkU64('gmem.size', gmem.size);
    const flags = gmem.flags === undefined ? 0n : checkU64('gmem.flags', gmem.flags);
    const fd = this.ioctl(ioctls.KVM_CREATE_GUEST_MEMFD, structBytes(kvm_create_guest_memfd, { size, flags }));
    const g = new GuestMemfd(this.backend, fd, size, flags);
    const release = this.adopt(g);
    g.onClosed(release);
    return g;
  }

  /**
   * `KVM_SET_MEMORY_ATTRIBUTES`: marks a guest-physical range private (`KVM_MEMORY_ATTRIBUTE_PRIVATE`)
   * or shared (0).
   * @example `vm.setMemoryAttributes({ address: 0x20000n, size: 0x1000n, attributes: BigInt(constants.KVM_MEMORY_ATTRIBUTE_PRIVATE) });`
   * @throws {@link KvmError} ENOTTY (this VM type has no memory attributes), EINVAL, EFAULT
   */
  setMemoryAttributes(attributes: Partial<KvmMemoryAttributes>): void {
    checkObject('attributes', attributes);
    this.ioctl(ioctls.KVM_SET_MEMORY_ATTRIBUTES, structBytes(kvm_memory_attributes, attributes, 'attributes'));
  }

  /**
   * `KVM_MEMORY_ENCRYPT_OP` with an opaque command buffer (kvm-ioctls' unsafe `encrypt_op`): the
   * kernel reads and writes `op`'s bytes, and any pointers inside them.
   * @example
   * ```ts
   * import { openSync } from 'node:fs';
   * import { kvm_sev_cmd } from 'kvm-rx';
   * const sevFd = openSync('/dev/sev', 'r+');
   * const op = new Uint8Array(kvm_sev_cmd.size); // a struct kvm_sev_cmd
   * const view = new DataView(op.buffer);
   * view.setUint32(kvm_sev_cmd.fields.id.offset, 0, true); // KVM_SEV_INIT
   * view.setUint32(kvm_sev_cmd.fields.sevFd.offset, sevFd, true);
   * vm.encryptOp(op);
   * const error = view.getUint32(kvm_sev_cmd.fields.error.offset, true); // the SEV firmware error
   * ```
   * @throws {@link KvmError} ENOTTY (no SEV/TDX on this host), EINVAL, EFAULT
   */
  encryptOp(op: ArrayBufferView): number {
    if (!ArrayBuffer.isView(op)) invalidType('op', 'a TypedArray or DataView', op);
    return this.ioctl(ioctls.KVM_MEMORY_ENCRYPT_OP, op);
  }

  /**
   * `KVM_MEMORY_ENCRYPT_OP` with a `kvm_sev_cmd` (`encrypt_op_sev`). Returns the command as the
   * kernel left it (`error` holds the SEV firmware error).
   * @example
   * ```ts
   * import { openSync } from 'node:fs';
   * const sevFd = openSync('/dev/sev', 'r+');
   * const { error } = vm.encryptOpSev({ id: 0, sevFd }); // id 0: KVM_SEV_INIT
   * ```
   * @throws {@link KvmError} ENOTTY (no SEV on this host), EINVAL, EFAULT
   */
  encryptOpSev(cmd: Partial<KvmSevCmd>): KvmSevCmd {
    checkObject('cmd', cmd);
    const buf = structBytes(kvm_sev_cmd, cmd, 'cmd');
    this.ioctl(ioctls.KVM_MEMORY_ENCRYPT_OP, buf);
    return decodeStruct<KvmSevCmd>(kvm_sev_cmd, dv(buf));
  }

  /**
   * `KVM_MEMORY_ENCRYPT_REG_REGION`: pins a host range used as encrypted guest memory (SEV).
   * @example `vm.registerEncMemoryRegion({ addr: mem.hostAddress, size: BigInt(mem.size) });`
   * @throws {@link KvmError} ENOTTY (no SEV on this host), EINVAL
   */
  registerEncMemoryRegion(region: KvmEncRegion): void {
    checkObject('region', region);
    this.ioctl(ioctls.KVM_MEMORY_ENCRYPT_REG_REGION, structBytes(kvm_enc_region, region, 'region'));
  }

  /**
   * `KVM_MEMORY_ENCRYPT_UNREG_REGION`.
   * @example `vm.unregisterEncMemoryRegion({ addr: mem.hostAddress, size: BigInt(mem.size) });`
   * @throws {@link KvmError} ENOTTY (no SEV on this host), EINVAL
   */
  unregisterEncMemoryRegion(region: KvmEncRegion): void {
    checkObject('region', region);
    this.ioctl(ioctls.KVM_MEMORY_ENCRYPT_UNREG_REGION, structBytes(kvm_enc_region, region, 'region'));
  }

  // @section arm64 (getPreferredTarget, setDeviceAttr, hasDeviceAttr)

  /**
   * `KVM_ARM_PREFERRED_TARGET`: the `kvm_vcpu_init` to pass to `VcpuFd#vcpuInit` for this host's
   * CPU (target set, features zero). aarch64 only (experimental).
   * @example
   * ```ts
   * import { arm64 } from 'kvm-rx';
   * const init = vm.getPreferredTarget();
   * init.features[0] |= 1 << arm64.KVM_ARM_VCPU_PSCI_0_2;
   * vcpu.vcpuInit(init);
   * ```
   * @throws {@link KvmError} ENODEV (no preferred target); ENOTTY on x86
   */
  getPreferredTarget(): KvmVcpuInit {
    return this.getStruct<KvmVcpuInit>(kvm_vcpu_init, arm64Ioctls.KVM_ARM_PREFERRED_TARGET);
  }

  /**
   * `KVM_SET_DEVICE_ATTR` on the VM fd (arm64: the SMCCC filter, `KVM_ARM_VM_SMCCC_CTRL`).
   * kvm-ioctls 0.24, aarch64 (experimental here).
   * @example
   * ```ts
   * import { arm64 } from 'kvm-rx';
   * // struct kvm_smccc_filter { u32 base; u32 nr_functions; u8 action; u8 pad[15] }
   * const filter = new DataView(new ArrayBuffer(24));
   * filter.setUint32(0, 0xc200_0000, true); // base: the SMC64 SiP service calls
   * filter.setUint32(4, 0x1_0000, true); // nr_functions
   * filter.setUint8(8, 2); // action: KVM_SMCCC_FILTER_FWD_TO_USER
   * vm.setDeviceAttr({ group: arm64.KVM_ARM_VM_SMCCC_CTRL, attr: arm64.KVM_ARM_VM_SMCCC_FILTER, value: filter });
   * ```
   * @throws {@link KvmError} ENXIO (unknown attribute), EFAULT (bad `addr`), EEXIST, EBUSY; ENOTTY on x86
   */
  setDeviceAttr(attr: DeviceAttr): void {
    const { bytes, keep } = deviceAttrBytes(this.backend, attr);
    this.ioctl(ioctls.KVM_SET_DEVICE_ATTR, bytes);
    // eslint-disable-next-line @typescript-eslint/no-meaningless-void-operator -- keeps the value buffer referenced until the kernel read it
    void keep;
  }

  /**
   * `KVM_HAS_DEVICE_ATTR` on the VM fd: succeeds when the attribute exists.
   * @example
   * ```ts
   * import { arm64 } from 'kvm-rx';
   * vm.hasDeviceAttr({ group: arm64.KVM_ARM_VM_SMCCC_CTRL, attr: arm64.KVM_ARM_VM_SMCCC_FILTER });
   * ```
   * @throws {@link KvmError} ENXIO when it does not; ENOTTY on x86
   */
  hasDeviceAttr(attr: DeviceAttr): void {
    const { bytes } = deviceAttrBytes(this.backend, attr);
    this.ioctl(ioctls.KVM_HAS_DEVICE_ATTR, bytes);
  }
}
