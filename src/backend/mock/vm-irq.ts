/**
 * Mock VM ioctls: x86 platform devices (irqchip, PIT, kvmclock, TSS/identity map, MSR filter),
 * interrupts and events (irqfd, ioeventfd, GSI routing, MSI, IRQ line), devices and guest_memfd.
 * Each error is the one Linux 6.18 returned for the same input (measured on this project's host).
 *
 * @module
 */
import { decodeStruct, dv, offsetOf, structBytes } from '../../abi/codec';
import { KvmError } from '../../abi/errors';
import { ioctls, kvm } from '../../abi/kvm-constants';
import {
  kvm_clock_data,
  kvm_create_device,
  kvm_create_guest_memfd,
  kvm_ioeventfd,
  kvm_irq_level,
  kvm_irq_routing,
  kvm_irq_routing_entry,
  kvm_irqchip,
  kvm_irqfd,
  kvm_memory_attributes,
  kvm_msi,
  kvm_msr_filter,
  kvm_pit_state2,
  kvm_userspace_memory_region,
  kvm_userspace_memory_region2,
  type KvmClockData,
  type KvmCreateDevice,
  type KvmCreateGuestMemfd,
  type KvmIoeventfd,
  type KvmIrqLevel,
  type KvmIrqRoutingEntry,
  type KvmIrqfd,
  type KvmMemoryAttributes,
  type KvmMsi,
  type KvmMsrFilter,
  type KvmUserspaceMemoryRegion2,
} from '../../abi/layouts';
import type { IoctlArg } from '../types';
import { checkExtension } from './system';
import { eventfdSignal } from './eventfd';
import { argInt, fail, leValue, type MockContext, type MockFile, type MockIoctl, type MockVm } from './state';

type VmFile = Extract<MockFile, { kind: 'vm' }>;
type EventFdFile = Extract<MockFile, { kind: 'eventfd' }>;

/** What the mock keeps in `vm.extra` for these ioctls (keys below). */
interface Irqchip {
  chips: Uint8Array[];
  lines: Map<number, boolean>;
}
interface Irqfd {
  evt: EventFdFile;
  gsi: number;
  resample?: EventFdFile;
}
interface Ioevent {
  evt: EventFdFile;
  pio: boolean;
  addr: bigint;
  len: number;
  wildcard: boolean;
  datamatch: bigint;
}

const MAX_IRQ_ROUTES = 4096;

function irqchipOf(vm: MockVm): Irqchip | undefined {
  return vm.extra.get('irqchip') as Irqchip | undefined;
}

function list<T>(vm: MockVm, key: string): T[] {
  let l = vm.extra.get(key) as T[] | undefined;
  if (l === undefined) vm.extra.set(key, (l = []));
  return l;
}

/** The eventfd behind `fd`, with the kernel's errors (EBADF: not open, EINVAL: not an eventfd). */
function eventfdOf(ctx: MockContext, fd: number, request: string): EventFdFile {
  const f = ctx.file(fd);
  if (f === undefined) return fail('EBADF', request);
  if (f.kind !== 'eventfd') return fail('EINVAL', request, 'not an eventfd');
  return f;
}

/** The kernel's reset state of the PICs and IOAPIC after KVM_CREATE_IRQCHIP. */
function newIrqchip(): Irqchip {
  const chips = [0, 1, 2].map(() => new Uint8Array(kvm_irqchip.size - 8));
  const pic = offsetOf(kvm_irqchip, 'chip.pic.elcr_mask') - 8;
  chips[0][pic] = 0xf8;
  chips[1][pic] = 0xde;
  const io = dv(chips[2]);
  io.setBigUint64(offsetOf(kvm_irqchip, 'chip.ioapic.base_address') - 8, 0xfec0_0000n, true);
  const tbl = offsetOf(kvm_irqchip, 'chip.ioapic.redirtbl') - 8;
  for (let i = 0; i < kvm.KVM_IOAPIC_NUM_PINS; i++) io.setBigUint64(tbl + i * 8, 0x1_0000n, true); // masked
  return { chips, lines: new Map() };
}

/** kvmclock in ns: time since VM creation plus what KVM_SET_CLOCK added. */
function clockNow(vm: MockVm): bigint {
  const created = (vm.extra.get('createdAt') as bigint | undefined) ?? 0n;
  const offset = (vm.extra.get('clockOffset') as bigint | undefined) ?? 0n;
  return process.hrtime.bigint() - created + offset;
}

function routingEntryValid(e: KvmIrqRoutingEntry): boolean {
  if (e.gsi >= MAX_IRQ_ROUTES) return false;
  if (e.flags !== 0 && (e.type !== kvm.KVM_IRQ_ROUTING_MSI || e.flags & ~kvm.KVM_MSI_VALID_DEVID)) return false;
  if (e.type === kvm.KVM_IRQ_ROUTING_IRQCHIP) {
    const { irqchip, pin } = e.u.irqchip;
    if (irqchip === kvm.KVM_IRQCHIP_PIC_MASTER || irqchip === kvm.KVM_IRQCHIP_PIC_SLAVE) return pin < 8;
    if (irqchip === kvm.KVM_IRQCHIP_IOAPIC) return pin < kvm.KVM_IOAPIC_NUM_PINS;
    return false;
  }
  return e.type === kvm.KVM_IRQ_ROUTING_MSI;
}

function ioeventfd(ctx: MockContext, vm: MockVm, arg: IoctlArg): number {
  const R = 'KVM_IOEVENTFD';
  const a = decodeStruct<KvmIoeventfd>(kvm_ioeventfd, dv(ctx.bytes(arg, R, kvm_ioeventfd.size)));
  if (a.flags & ~kvm.KVM_IOEVENTFD_VALID_FLAG_MASK) fail('EINVAL', R, 'unknown flags');
  const pio = (a.flags & kvm.KVM_IOEVENTFD_FLAG_PIO) !== 0;
  const wildcard = (a.flags & kvm.KVM_IOEVENTFD_FLAG_DATAMATCH) === 0;
  const list_ = list<Ioevent>(vm, 'ioeventfds');
  if (a.flags & kvm.KVM_IOEVENTFD_FLAG_DEASSIGN) {
    const evt = eventfdOf(ctx, a.fd, R);
    const i = list_.findIndex(
      (p) =>
        p.pio === pio &&
        p.evt === evt &&
        p.addr === a.addr &&
        p.len === a.len &&
        p.wildcard === wildcard &&
        (wildcard || p.datamatch === a.datamatch),
    );
    if (i < 0) fail('ENOENT', R, 'no such ioeventfd');
    list_.splice(i, 1);
    return 0;
  }
  if (![0, 1, 2, 4, 8].includes(a.len)) fail('EINVAL', R, 'length must be 0, 1, 2, 4 or 8');
  if (a.addr + BigInt(a.len) > 0xffff_ffff_ffff_ffffn) fail('EINVAL', R, 'address wraps');
  if (a.len === 0 && !wildcard) fail('EINVAL', R, 'datamatch needs a length');
  const evt = eventfdOf(ctx, a.fd, R);
  const clash = list_.some(
    (p) =>
      p.pio === pio &&
      p.addr === a.addr &&
      (p.len === 0 || a.len === 0 || (p.len === a.len && (p.wildcard || wildcard || p.datamatch === a.datamatch))),
  );
  if (clash) fail('EEXIST', R, 'an overlapping ioeventfd exists');
  list_.push({ evt, pio, addr: a.addr, len: a.len, wildcard, datamatch: wildcard ? 0n : a.datamatch });
  return 0;
}

/**
 * If an ioeventfd matches the guest write (same bus and address; its length 0 or the access size;
 * no datamatch, or the written value equal to it), signals its eventfd and returns true: the kernel
 * takes such a write without exiting to userspace.
 */
export function signalIoevent(vm: MockVm, w: { pio: boolean; addr: bigint; data: Uint8Array }): boolean {
  const value = leValue(w.data);
  const hit = list<Ioevent>(vm, 'ioeventfds').find(
    (p) =>
      p.pio === w.pio &&
      p.addr === w.addr &&
      (p.len === 0 || p.len === w.data.length) &&
      (p.wildcard || p.datamatch === value),
  );
  if (hit === undefined) return false;
  eventfdSignal(hit.evt);
  return true;
}

function irqfd(ctx: MockContext, vm: MockVm, arg: IoctlArg): number {
  const R = 'KVM_IRQFD';
  const a = decodeStruct<KvmIrqfd>(kvm_irqfd, dv(ctx.bytes(arg, R, kvm_irqfd.size)));
  if (a.flags & ~(kvm.KVM_IRQFD_FLAG_DEASSIGN | kvm.KVM_IRQFD_FLAG_RESAMPLE)) fail('EINVAL', R, 'unknown flags');
  const l = list<Irqfd>(vm, 'irqfds');
  if (a.flags & kvm.KVM_IRQFD_FLAG_DEASSIGN) {
    const evt = eventfdOf(ctx, a.fd, R);
    const i = l.findIndex((x) => x.evt === evt && x.gsi === a.gsi);
    if (i >= 0) l.splice(i, 1);
    return 0; // the kernel does not report a missing irqfd
  }
  if (!irqchipOf(vm)) fail('EINVAL', R, 'no in-kernel irqchip');
  const evt = eventfdOf(ctx, a.fd, R);
  const resample = a.flags & kvm.KVM_IRQFD_FLAG_RESAMPLE ? eventfdOf(ctx, a.resamplefd, R) : undefined;
  if (l.some((x) => x.evt === evt)) fail('EBUSY', R, 'this eventfd already drives a GSI');
  l.push(resample ? { evt, gsi: a.gsi, resample } : { evt, gsi: a.gsi });
  return 0;
}

/** KVM_SET_USER_MEMORY_REGION2: the guest_memfd checks, then the v1 slot rules on the common prefix. */
function userMemoryRegion2(ctx: MockContext, f: VmFile, arg: IoctlArg): number {
  const R = 'KVM_SET_USER_MEMORY_REGION2';
  const bytes = ctx.bytes(arg, R, kvm_userspace_memory_region2.size);
  const r = decodeStruct<KvmUserspaceMemoryRegion2>(kvm_userspace_memory_region2, dv(bytes));
  const page = BigInt(ctx.config.pageSize);
  const bindings = list<{ slot: number; gmem: MockFile; offset: bigint; size: bigint }>(f.vm, 'gmemBindings');
  const useGmem = (r.flags & kvm.KVM_MEM_GUEST_MEMFD) !== 0;
  if (useGmem && r.memorySize !== 0n) {
    const g = ctx.file(r.guestMemfd);
    if (!g || g.kind !== 'other' || g.name !== 'guest_memfd' || g.extra.get('vm') !== f.vm)
      fail('EINVAL', R, 'not a guest_memfd of this VM');
    const size = g.extra.get('size') as bigint;
    if (r.guestMemfdOffset % page !== 0n || r.guestMemfdOffset + r.memorySize > size)
      fail('EINVAL', R, 'range outside the guest_memfd');
    const end = r.guestMemfdOffset + r.memorySize;
    if (
      bindings.some(
        (b) => b.gmem === g && b.slot !== r.slot && b.offset < end && r.guestMemfdOffset < b.offset + b.size,
      )
    ) {
      fail('EINVAL', R, 'guest_memfd range already bound');
    }
  }
  const v1 = structBytes(kvm_userspace_memory_region, {
    slot: r.slot,
    flags: r.flags & ~kvm.KVM_MEM_GUEST_MEMFD,
    guestPhysAddr: r.guestPhysAddr,
    memorySize: r.memorySize,
    userspaceAddr: r.userspaceAddr,
  });
  try {
    vmIrqIoctls.v1(ctx, f, v1);
  } catch (e) {
    if (e instanceof KvmError) fail(e.code, R, e.message);
    throw e;
  }
  const i = bindings.findIndex((b) => b.slot === r.slot);
  if (i >= 0 && r.memorySize === 0n) bindings.splice(i, 1);
  const s = f.vm.slots.get(r.slot);
  if (s && useGmem) {
    s.flags |= kvm.KVM_MEM_GUEST_MEMFD;
    if (i < 0)
      bindings.push({ slot: r.slot, gmem: ctx.file(r.guestMemfd)!, offset: r.guestMemfdOffset, size: r.memorySize });
  }
  return 0;
}

/** Set by `vm.ts`: the v1 memory-slot handler that v2 delegates to. */
export const vmIrqIoctls: { v1: MockIoctl<VmFile> } = { v1: () => 0 };

/** @section x86 platform */
export const x86PlatformIoctls: Record<number, MockIoctl<VmFile>> = {
  [ioctls.KVM_SET_TSS_ADDR]: (_ctx, _f, arg) => {
    if (argInt(arg) > 0xffff_ffffn - 3n * 4096n + 1n)
      fail('EINVAL', 'KVM_SET_TSS_ADDR', 'the 3 pages must end below 4 GiB');
    return 0;
  },
  [ioctls.KVM_SET_IDENTITY_MAP_ADDR]: (ctx, { vm }, arg) => {
    const R = 'KVM_SET_IDENTITY_MAP_ADDR';
    if (vm.vcpus.size > 0) fail('EINVAL', R, 'a vCPU exists');
    vm.extra.set('identityMapAddr', dv(ctx.bytes(arg, R, 8)).getBigUint64(0, true));
    return 0;
  },
  [ioctls.KVM_CREATE_IRQCHIP]: (_ctx, { vm }) => {
    if (irqchipOf(vm)) fail('EEXIST', 'KVM_CREATE_IRQCHIP');
    if (vm.vcpus.size > 0) fail('EINVAL', 'KVM_CREATE_IRQCHIP', 'a vCPU exists');
    vm.extra.set('irqchip', newIrqchip());
    return 0;
  },
  [ioctls.KVM_GET_IRQCHIP]: (ctx, { vm }, arg) => {
    const R = 'KVM_GET_IRQCHIP';
    const b = ctx.bytes(arg, R, kvm_irqchip.size);
    const chip = irqchipOf(vm);
    if (!chip) fail('ENXIO', R, 'no in-kernel irqchip');
    const id = dv(b).getUint32(0, true);
    if (id > 2) fail('EINVAL', R, 'bad chip id');
    b.set(chip.chips[id], 8);
    return 0;
  },
  [ioctls.KVM_SET_IRQCHIP]: (ctx, { vm }, arg) => {
    const R = 'KVM_SET_IRQCHIP';
    const b = ctx.bytes(arg, R, kvm_irqchip.size);
    const chip = irqchipOf(vm);
    if (!chip) fail('ENXIO', R, 'no in-kernel irqchip');
    const id = dv(b).getUint32(0, true);
    if (id > 2) fail('EINVAL', R, 'bad chip id');
    const size = id === 2 ? offsetOf(kvm_irqchip, 'chip.ioapic.redirtbl') - 8 + 8 * kvm.KVM_IOAPIC_NUM_PINS : 16;
    chip.chips[id].fill(0).set(b.subarray(8, 8 + size));
    return 0;
  },
  [ioctls.KVM_CREATE_PIT2]: (ctx, { vm }, arg) => {
    const R = 'KVM_CREATE_PIT2';
    ctx.bytes(arg, R, 64);
    if (vm.extra.has('pit')) fail('EEXIST', R);
    if (!irqchipOf(vm)) fail('ENOENT', R, 'the PIT needs the in-kernel PIC');
    const ch = (gate: number) => ({ count: 65536, mode: 255, gate, countLoadTime: process.hrtime.bigint() });
    vm.extra.set('pit', structBytes(kvm_pit_state2, { channels: [ch(1), ch(1), ch(0)], flags: 0 }));
    return 0;
  },
  [ioctls.KVM_GET_PIT2]: (ctx, { vm }, arg) => {
    const out = ctx.bytes(arg, 'KVM_GET_PIT2', kvm_pit_state2.size);
    const pit = vm.extra.get('pit') as Uint8Array | undefined;
    if (!pit) fail('ENXIO', 'KVM_GET_PIT2', 'no PIT');
    out.set(pit);
    return 0;
  },
  [ioctls.KVM_SET_PIT2]: (ctx, { vm }, arg) => {
    const input = ctx.bytes(arg, 'KVM_SET_PIT2', kvm_pit_state2.size);
    if (!vm.extra.has('pit')) fail('ENXIO', 'KVM_SET_PIT2', 'no PIT');
    vm.extra.set('pit', input.slice(0, kvm_pit_state2.size));
    return 0;
  },
  [ioctls.KVM_GET_CLOCK]: (ctx, { vm }, arg) => {
    const out = ctx.bytes(arg, 'KVM_GET_CLOCK', kvm_clock_data.size);
    out.set(structBytes(kvm_clock_data, { clock: clockNow(vm), flags: 0 }));
    return 0;
  },
  [ioctls.KVM_SET_CLOCK]: (ctx, { vm }, arg) => {
    const d = decodeStruct<KvmClockData>(kvm_clock_data, dv(ctx.bytes(arg, 'KVM_SET_CLOCK', kvm_clock_data.size)));
    const valid = kvm.KVM_CLOCK_TSC_STABLE | kvm.KVM_CLOCK_REALTIME | kvm.KVM_CLOCK_HOST_TSC;
    if (d.flags & ~valid) fail('EINVAL', 'KVM_SET_CLOCK', 'unknown flags');
    const offset = (vm.extra.get('clockOffset') as bigint | undefined) ?? 0n;
    vm.extra.set('clockOffset', offset + d.clock - clockNow(vm));
    return 0;
  },
  [ioctls.KVM_X86_SET_MSR_FILTER]: (ctx, { vm }, arg) => {
    const R = 'KVM_X86_SET_MSR_FILTER';
    const f = decodeStruct<KvmMsrFilter>(kvm_msr_filter, dv(ctx.bytes(arg, R, kvm_msr_filter.size)));
    if (f.flags & ~kvm.KVM_MSR_FILTER_DEFAULT_DENY) fail('EINVAL', R, 'unknown flags');
    const empty = f.ranges.every((r) => r.nmsrs === 0);
    if (empty && f.flags & kvm.KVM_MSR_FILTER_DEFAULT_DENY) fail('EINVAL', R, 'DENY with no ranges');
    const ranges = f.ranges
      .filter((r) => r.nmsrs !== 0)
      .map((r) => {
        if (r.flags & ~(kvm.KVM_MSR_FILTER_READ | kvm.KVM_MSR_FILTER_WRITE) || r.flags === 0)
          fail('EINVAL', R, 'bad range flags');
        const size = Math.ceil(r.nmsrs / 64) * 8;
        if (size > kvm.KVM_MSR_FILTER_MAX_BITMAP_SIZE) fail('EINVAL', R, 'bitmap too large');
        return { flags: r.flags, base: r.base, nmsrs: r.nmsrs, bitmap: ctx.userMemory(r.bitmap, size, R).slice() };
      });
    vm.extra.set('msrFilter', { defaultDeny: (f.flags & 1) !== 0, ranges });
    return 0;
  },
};

/** @section interrupts and events */
export const interruptIoctls: Record<number, MockIoctl<VmFile>> = {
  [ioctls.KVM_IRQ_LINE]: (ctx, { vm }, arg) => {
    const l = decodeStruct<KvmIrqLevel>(kvm_irq_level, dv(ctx.bytes(arg, 'KVM_IRQ_LINE', kvm_irq_level.size)));
    const chip = irqchipOf(vm);
    if (!chip) fail('ENXIO', 'KVM_IRQ_LINE', 'no in-kernel irqchip');
    chip.lines.set(l.irq, l.level !== 0);
    return 0;
  },
  [ioctls.KVM_SIGNAL_MSI]: (ctx, { vm }, arg) => {
    const R = 'KVM_SIGNAL_MSI';
    const m = decodeStruct<KvmMsi>(kvm_msi, dv(ctx.bytes(arg, R, kvm_msi.size)));
    if (!irqchipOf(vm) || m.flags & ~kvm.KVM_MSI_VALID_DEVID) fail('EINVAL', R);
    const dest = (m.addressLo >>> 12) & 0xff;
    // No vCPU matched: the kernel returns -1 raw (EPERM). A matched vCPU's local APIC is still
    // software-disabled in the mock, so nothing accepts the interrupt: 0.
    if (![...vm.vcpus.keys()].some((id) => id === dest || dest === 0xff)) fail('EPERM', R, 'no vCPU accepted the MSI');
    return 0;
  },
  [ioctls.KVM_SET_GSI_ROUTING]: (ctx, { vm }, arg) => {
    const R = 'KVM_SET_GSI_ROUTING';
    const head = ctx.bytes(arg, R, kvm_irq_routing.size);
    const nr = dv(head).getUint32(0, true);
    const flags = dv(head).getUint32(4, true);
    if (!irqchipOf(vm)) fail('EINVAL', R, 'no in-kernel irqchip');
    if (nr > MAX_IRQ_ROUTES || flags !== 0) fail('EINVAL', R);
    const bytes = ctx.bytes(arg, R, kvm_irq_routing.size + nr * kvm_irq_routing_entry.size);
    const entries: KvmIrqRoutingEntry[] = [];
    for (let i = 0; i < nr; i++) {
      const e = decodeStruct<KvmIrqRoutingEntry>(
        kvm_irq_routing_entry,
        dv(bytes),
        kvm_irq_routing.size + i * kvm_irq_routing_entry.size,
      );
      if (!routingEntryValid(e)) fail('EINVAL', R, `bad entry ${i}`);
      const clash = entries.some(
        (x) =>
          x.gsi === e.gsi &&
          (x.type !== kvm.KVM_IRQ_ROUTING_IRQCHIP ||
            e.type !== kvm.KVM_IRQ_ROUTING_IRQCHIP ||
            x.u.irqchip.irqchip === e.u.irqchip.irqchip),
      );
      if (clash) fail('EINVAL', R, `GSI ${e.gsi} mapped twice`);
      entries.push(e);
    }
    vm.extra.set('gsiRouting', entries);
    return 0;
  },
  [ioctls.KVM_IRQFD]: (ctx, { vm }, arg) => irqfd(ctx, vm, arg),
  [ioctls.KVM_IOEVENTFD]: (ctx, { vm }, arg) => ioeventfd(ctx, vm, arg),
};

/** @section devices and memory */
export const deviceMemoryIoctls: Record<number, MockIoctl<VmFile>> = {
  [ioctls.KVM_CREATE_DEVICE]: (ctx, { vm }, arg) => {
    const R = 'KVM_CREATE_DEVICE';
    const b = ctx.bytes(arg, R, kvm_create_device.size);
    const d = decodeStruct<KvmCreateDevice>(kvm_create_device, dv(b));
    // x86 has only the VFIO pseudo-device.
    if (d.type !== kvm.KVM_DEV_TYPE_VFIO) fail('ENODEV', R, 'device type not supported');
    if (d.flags & kvm.KVM_CREATE_DEVICE_TEST) return 0; // fd left as given
    if (vm.extra.has('vfioDevice')) fail('EBUSY', R, 'only one VFIO device per VM');
    const fd = ctx.install({ kind: 'device', vm, type: d.type, extra: new Map() });
    vm.extra.set('vfioDevice', fd);
    dv(b).setUint32(offsetOf(kvm_create_device, 'fd'), fd, true);
    return 0;
  },
  [ioctls.KVM_SET_USER_MEMORY_REGION2]: (ctx, f, arg) => userMemoryRegion2(ctx, f, arg),
  [ioctls.KVM_CREATE_GUEST_MEMFD]: (ctx, { vm }, arg) => {
    const R = 'KVM_CREATE_GUEST_MEMFD';
    const g = decodeStruct<KvmCreateGuestMemfd>(
      kvm_create_guest_memfd,
      dv(ctx.bytes(arg, R, kvm_create_guest_memfd.size)),
    );
    if (checkExtension(ctx, BigInt(kvm.KVM_CAP_GUEST_MEMFD)) === 0) fail('ENOTTY', R);
    // GUEST_MEMFD_FLAG_MMAP (1) and GUEST_MEMFD_FLAG_INIT_SHARED (2) are accepted here.
    if (g.flags & ~3n) fail('EINVAL', R, 'unknown flags');
    if (g.size === 0n || g.size % BigInt(ctx.config.pageSize) !== 0n)
      fail('EINVAL', R, 'size must be a non-zero page multiple');
    return ctx.install({
      kind: 'other',
      name: 'guest_memfd',
      extra: new Map<string, unknown>([
        ['vm', vm],
        ['size', g.size],
        ['flags', g.flags],
      ]),
    });
  },
  [ioctls.KVM_SET_MEMORY_ATTRIBUTES]: (ctx, { vm }, arg) => {
    const R = 'KVM_SET_MEMORY_ATTRIBUTES';
    const supported = checkExtension(ctx, BigInt(kvm.KVM_CAP_MEMORY_ATTRIBUTES));
    // A default VM has no memory attributes: the kernel answers ENOTTY (measured).
    if (supported === 0) fail('ENOTTY', R);
    const a = decodeStruct<KvmMemoryAttributes>(
      kvm_memory_attributes,
      dv(ctx.bytes(arg, R, kvm_memory_attributes.size)),
    );
    const page = BigInt(ctx.config.pageSize);
    if (
      a.flags !== 0n ||
      a.attributes & ~BigInt(supported) ||
      a.size === 0n ||
      a.address % page !== 0n ||
      a.size % page !== 0n
    )
      fail('EINVAL', R);
    list<KvmMemoryAttributes>(vm, 'memoryAttributes').push(a);
    return 0;
  },
  // No SEV or TDX on this host: the kernel has no handler for these on a default VM.
  [ioctls.KVM_MEMORY_ENCRYPT_OP]: () => fail('ENOTTY', 'KVM_MEMORY_ENCRYPT_OP', 'no SEV/TDX'),
  [ioctls.KVM_MEMORY_ENCRYPT_REG_REGION]: () => fail('ENOTTY', 'KVM_MEMORY_ENCRYPT_REG_REGION', 'no SEV'),
  [ioctls.KVM_MEMORY_ENCRYPT_UNREG_REGION]: () => fail('ENOTTY', 'KVM_MEMORY_ENCRYPT_UNREG_REGION', 'no SEV'),
};

/** Helpers for tests: the ioeventfds/irqfds a mock VM holds. */
export function mockVmEvents(vm: MockVm): { ioeventfds: number; irqfds: Array<{ gsi: number }> } {
  return {
    ioeventfds: list<Ioevent>(vm, 'ioeventfds').length,
    irqfds: list<Irqfd>(vm, 'irqfds').map((x) => ({ gsi: x.gsi })),
  };
}
