/**
 * Mock ioctls on VM fds: memory slots, vCPU creation, dirty logging.
 *
 * @module
 */
import { decodeStruct, dv, structBytes } from '../../abi/codec';
import { ioctls, kvm } from '../../abi/kvm-constants';
import {
  kvm_coalesced_mmio,
  kvm_coalesced_mmio_ring,
  kvm_coalesced_mmio_zone,
  kvm_dirty_log,
  kvm_enable_cap,
  kvm_regs,
  kvm_run,
  kvm_sregs,
  kvm_userspace_memory_region,
  type KvmCoalescedMmioZone,
  type KvmDirtyLog,
  type KvmEnableCap,
  type KvmUserspaceMemoryRegion,
} from '../../abi/layouts';
import { offsetOf } from '../../abi/codec';
import { checkExtension } from './system';
import { deviceMemoryIoctls, interruptIoctls, vmIrqIoctls, x86PlatformIoctls } from './vm-irq';
import { argInt, fail, type MockContext, type MockFile, type MockIoctl, type MockVcpu, type MockVm } from './state';

type VmFile = Extract<MockFile, { kind: 'vm' }>;

const seg = (base: bigint, selector: number, type: number, s: number) => ({
  base,
  limit: 0xffff,
  selector,
  type,
  present: 1,
  dpl: 0,
  db: 0,
  s,
  l: 0,
  g: 0,
  avl: 0,
  unusable: 0,
});

/** A vCPU in its reset state, as the host kernel reports it (real mode at f000:fff0). */
export function newVcpu(ctx: MockContext, vm: MockVm, id: number): MockVcpu {
  const state = new Map<string, Uint8Array>();
  state.set('kvm_regs', structBytes(kvm_regs, { rdx: 0x600n, rip: 0xfff0n, rflags: 2n }));
  state.set(
    'kvm_sregs',
    structBytes(kvm_sregs, {
      cs: seg(0xffff0000n, 0xf000, 11, 1),
      ds: seg(0n, 0, 3, 1),
      es: seg(0n, 0, 3, 1),
      fs: seg(0n, 0, 3, 1),
      gs: seg(0n, 0, 3, 1),
      ss: seg(0n, 0, 3, 1),
      tr: seg(0n, 0, 11, 0),
      ldt: seg(0n, 0, 2, 0),
      gdt: { base: 0n, limit: 0xffff },
      idt: { base: 0n, limit: 0xffff },
      cr0: 0x60000010n,
      apicBase: vm.vcpus.size === 0 ? 0xfee00900n : 0xfee00800n,
    }),
  );
  return {
    id,
    fd: -1,
    vm,
    state,
    run: new ArrayBuffer(ctx.config.vcpuMmapSize),
    script: [],
    pending: undefined,
    answers: [],
    runs: 0,
    extra: new Map(),
  };
}

/** Marks the pages of `[gpa, gpa+len)` dirty in every logging slot that holds them. */
export function markDirty(vm: MockVm, gpa: bigint, len: number, pageSize: number): void {
  for (const s of vm.slots.values()) {
    const end = s.guestPhysAddr + s.memorySize;
    for (let a = gpa; a < gpa + BigInt(len); a += BigInt(pageSize)) {
      if (a >= s.guestPhysAddr && a < end && s.flags & kvm.KVM_MEM_LOG_DIRTY_PAGES) {
        s.dirty.add(Number((a - s.guestPhysAddr) / BigInt(pageSize)));
      }
    }
  }
}

/** Writes guest memory through the VM's slots, as a guest store would (marks pages dirty). */
export function guestWrite(ctx: MockContext, vm: MockVm, gpa: bigint, data: Uint8Array): void {
  for (let i = 0; i < data.length; i++) {
    const a = gpa + BigInt(i);
    const s = [...vm.slots.values()].find((x) => a >= x.guestPhysAddr && a < x.guestPhysAddr + x.memorySize);
    if (!s) fail('EFAULT', 'KVM_RUN', `guest write outside memory at 0x${a.toString(16)}`);
    ctx.userMemory(s.userspaceAddr + (a - s.guestPhysAddr), 1, 'KVM_RUN')[0] = data[i]!;
  }
  markDirty(vm, gpa, data.length, ctx.config.pageSize);
}

export const vmIoctls: Record<number, MockIoctl<VmFile>> = {
  [ioctls.KVM_CHECK_EXTENSION]: (ctx, _f, arg) => checkExtension(ctx, argInt(arg)),

  [ioctls.KVM_SET_USER_MEMORY_REGION]: (ctx, { vm }, arg) => {
    const R = 'KVM_SET_USER_MEMORY_REGION';
    const r = decodeStruct<KvmUserspaceMemoryRegion>(
      kvm_userspace_memory_region,
      dv(ctx.bytes(arg, R, kvm_userspace_memory_region.size)),
    );
    const page = BigInt(ctx.config.pageSize);
    const valid = kvm.KVM_MEM_LOG_DIRTY_PAGES | kvm.KVM_MEM_READONLY;
    if (r.flags & ~valid) fail('EINVAL', R, 'unknown flags');
    if ((r.slot & 0xffff) >= ctx.config.nrMemslots || r.slot >> 16 >= ctx.config.addressSpaces)
      fail('EINVAL', R, 'bad slot');
    if (r.memorySize % page !== 0n || r.guestPhysAddr % page !== 0n || r.userspaceAddr % page !== 0n)
      fail('EINVAL', R, 'unaligned');
    if (r.guestPhysAddr + r.memorySize > 1n << 64n) fail('EINVAL', R, 'wraps');
    const old = vm.slots.get(r.slot);
    if (r.memorySize === 0n) {
      if (!old) fail('EINVAL', R, 'deleting a slot that does not exist');
      vm.slots.delete(r.slot);
      return 0;
    }
    if (old && old.memorySize !== r.memorySize) fail('EINVAL', R, 'resizing a slot');
    const as = r.slot >> 16;
    for (const s of vm.slots.values()) {
      if (s.slot === r.slot || s.slot >> 16 !== as) continue;
      if (r.guestPhysAddr < s.guestPhysAddr + s.memorySize && s.guestPhysAddr < r.guestPhysAddr + r.memorySize)
        fail('EEXIST', R);
    }
    vm.slots.set(r.slot, {
      slot: r.slot,
      flags: r.flags,
      guestPhysAddr: r.guestPhysAddr,
      memorySize: r.memorySize,
      userspaceAddr: r.userspaceAddr,
      dirty:
        old && old.flags & kvm.KVM_MEM_LOG_DIRTY_PAGES && r.flags & kvm.KVM_MEM_LOG_DIRTY_PAGES ? old.dirty : new Set(),
    });
    return 0;
  },

  [ioctls.KVM_CREATE_VCPU]: (ctx, { vm }, arg) => {
    const id = argInt(arg);
    if (id >= BigInt(ctx.config.maxVcpuId) || vm.vcpus.size >= ctx.config.maxVcpus) fail('EINVAL', 'KVM_CREATE_VCPU');
    if (vm.vcpus.has(Number(id))) fail('EEXIST', 'KVM_CREATE_VCPU');
    const vcpu = newVcpu(ctx, vm, Number(id));
    vm.vcpus.set(vcpu.id, vcpu);
    vcpu.fd = ctx.install({ kind: 'vcpu', vcpu });
    return vcpu.fd;
  },

  [ioctls.KVM_GET_DIRTY_LOG]: (ctx, { vm }, arg) => {
    const R = 'KVM_GET_DIRTY_LOG';
    const bytes = ctx.bytes(arg, R, kvm_dirty_log.size);
    const d = decodeStruct<KvmDirtyLog>(kvm_dirty_log, dv(bytes));
    if ((d.slot & 0xffff) >= ctx.config.nrMemslots || d.slot >> 16 >= ctx.config.addressSpaces) fail('EINVAL', R);
    const s = vm.slots.get(d.slot);
    if (!s || !(s.flags & kvm.KVM_MEM_LOG_DIRTY_PAGES)) fail('ENOENT', R);
    const pages = Number(s.memorySize / BigInt(ctx.config.pageSize));
    const words = Math.ceil(pages / 64);
    const out = ctx.userMemory(d.dirtyBitmap, words * 8, R);
    out.fill(0);
    for (const p of s.dirty) out[p >> 3] |= 1 << (p & 7);
    s.dirty.clear();
    return 0;
  },
  // @section vm caps and coalesced
  ...vmCapsAndCoalescedIoctls(),
  // @section x86 platform
  ...x86PlatformIoctls,
  // @section interrupts and events
  ...interruptIoctls,
  // @section devices and memory
  ...deviceMemoryIoctls,
};
vmIrqIoctls.v1 = vmIoctls[ioctls.KVM_SET_USER_MEMORY_REGION]!;

// @section vm caps and coalesced (mock)

/**
 * Whether the VM has an in-kernel irqchip (`vm.extra` key `'irqchip'`: set by KVM_CREATE_IRQCHIP,
 * or `'split'` by KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)).
 */
export function hasIrqchip(vm: MockVm): boolean {
  return vm.extra.has('irqchip');
}

/** A registered coalesced zone. */
interface Zone {
  addr: bigint;
  size: number;
  pio: number;
}

function zones(vm: MockVm): Zone[] {
  let z = vm.extra.get('coalescedZones') as Zone[] | undefined;
  if (!z) {
    z = [];
    vm.extra.set('coalescedZones', z);
  }
  return z;
}

/** The VM's coalesced MMIO ring page (one per VM, mapped through any vCPU fd). */
export function coalescedRing(vm: MockVm, pageSize: number): ArrayBuffer {
  let ring = vm.extra.get('coalescedRing') as ArrayBuffer | undefined;
  if (!ring) {
    ring = new ArrayBuffer(pageSize);
    vm.extra.set('coalescedRing', ring);
  }
  return ring;
}

const RUN_O = (p: string) => offsetOf(kvm_run, p);

/** A guest write the kernel may take without exiting: an `out` (one, not `rep`) or an MMIO write. */
export interface GuestWriteExit {
  pio: boolean;
  addr: bigint;
  data: Uint8Array;
}

/** The write in the exit just written into kvm_run, or `undefined` for any other exit. */
export function guestWriteExit(view: DataView, bytes: Uint8Array): GuestWriteExit | undefined {
  const reason = view.getUint32(RUN_O('exit_reason'), true);
  if (
    reason === kvm.KVM_EXIT_IO &&
    view.getUint8(RUN_O('io.direction')) === kvm.KVM_EXIT_IO_OUT &&
    view.getUint32(RUN_O('io.count'), true) === 1
  ) {
    const size = view.getUint8(RUN_O('io.size'));
    const off = Number(view.getBigUint64(RUN_O('io.data_offset'), true));
    return { pio: true, addr: BigInt(view.getUint16(RUN_O('io.port'), true)), data: bytes.slice(off, off + size) };
  }
  if (reason === kvm.KVM_EXIT_MMIO && view.getUint8(RUN_O('mmio.is_write')) !== 0) {
    const len = Math.min(8, view.getUint32(RUN_O('mmio.len'), true));
    return {
      pio: false,
      addr: view.getBigUint64(RUN_O('mmio.phys_addr'), true),
      data: bytes.slice(RUN_O('mmio.data'), RUN_O('mmio.data') + len),
    };
  }
  return undefined;
}

/**
 * If `w` lands inside a registered coalesced zone, appends it to the ring (as the kernel does
 * instead of exiting) and returns true. A full ring exits.
 */
export function coalesceWrite(ctx: MockContext, vm: MockVm, w: GuestWriteExit): boolean {
  const { addr, data } = w;
  const pio = w.pio ? 1 : 0;
  const len = data.length;
  if (!zones(vm).some((z) => z.pio === pio && addr >= z.addr && addr + BigInt(len) <= z.addr + BigInt(z.size)))
    return false;
  const ring = new DataView(coalescedRing(vm, ctx.config.pageSize));
  const max = Math.floor((ring.byteLength - kvm_coalesced_mmio_ring.size) / kvm_coalesced_mmio.size);
  const first = ring.getUint32(0, true);
  const last = ring.getUint32(4, true);
  if ((last + 1) % max === first) return false; // full: the write exits to userspace
  const at = kvm_coalesced_mmio_ring.size + last * kvm_coalesced_mmio.size;
  new Uint8Array(ring.buffer, at, kvm_coalesced_mmio.size).set(
    structBytes(kvm_coalesced_mmio, { physAddr: addr, len, pio, data }),
  );
  ring.setUint32(4, (last + 1) % max, true);
  return true;
}

function vmCapsAndCoalescedIoctls(): Record<number, MockIoctl<VmFile>> {
  const zoneOf = (ctx: MockContext, arg: unknown, R: string): KvmCoalescedMmioZone => {
    const z = decodeStruct<KvmCoalescedMmioZone>(
      kvm_coalesced_mmio_zone,
      dv(ctx.bytes(arg as never, R, kvm_coalesced_mmio_zone.size)),
    );
    if (z.pio !== 0 && z.pio !== 1) fail('EINVAL', R, 'pio must be 0 or 1');
    return z;
  };
  return {
    [ioctls.KVM_ENABLE_CAP]: (ctx, { vm }, arg) => {
      const R = 'KVM_ENABLE_CAP';
      const c = decodeStruct<KvmEnableCap>(kvm_enable_cap, dv(ctx.bytes(arg, R, kvm_enable_cap.size)));
      if (c.flags !== 0 || !ctx.config.caps[c.cap]) fail('EINVAL', R);
      switch (c.cap) {
        case kvm.KVM_CAP_SPLIT_IRQCHIP:
          if (c.args[0] > BigInt(kvm.KVM_IOAPIC_NUM_PINS)) fail('EINVAL', R);
          if (hasIrqchip(vm)) fail('EEXIST', R);
          if (vm.vcpus.size > 0) fail('EINVAL', R);
          vm.extra.set('irqchip', 'split');
          return 0;
        case kvm.KVM_CAP_X86_USER_SPACE_MSR:
          if (c.args[0] & ~7n) fail('EINVAL', R);
          vm.extra.set('userSpaceMsr', Number(c.args[0]));
          return 0;
        case kvm.KVM_CAP_EXIT_HYPERCALL:
          if (c.args[0] & ~BigInt(ctx.config.caps[c.cap])) fail('EINVAL', R);
          vm.extra.set('exitHypercall', c.args[0]);
          return 0;
        default:
          return fail('EINVAL', R, `the mock cannot enable cap ${c.cap}`);
      }
    },
    [ioctls.KVM_REGISTER_COALESCED_MMIO]: (ctx, { vm }, arg) => {
      const z = zoneOf(ctx, arg, 'KVM_REGISTER_COALESCED_MMIO');
      zones(vm).push({ addr: z.addr, size: z.size, pio: z.pio });
      return 0;
    },
    [ioctls.KVM_UNREGISTER_COALESCED_MMIO]: (ctx, { vm }, arg) => {
      const z = zoneOf(ctx, arg, 'KVM_UNREGISTER_COALESCED_MMIO');
      const list = zones(vm);
      // Removes every zone of the same kind inside the range; nothing registered is not an error.
      const keep = list.filter(
        (x) => !(x.pio === z.pio && x.addr >= z.addr && x.addr + BigInt(x.size) <= z.addr + BigInt(z.size)),
      );
      list.splice(0, list.length, ...keep);
      return 0;
    },
  };
}
