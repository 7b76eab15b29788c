/**
 * Mock ioctls on VM fds: memory slots, vCPU creation, dirty logging.
 *
 * @module
 */
import { decodeStruct, dv, structBytes } from '../../abi/codec';
import { ioctls, kvm } from '../../abi/kvm-constants';
import { kvm_dirty_log, kvm_regs, kvm_sregs, kvm_userspace_memory_region, type KvmDirtyLog, type KvmUserspaceMemoryRegion } from '../../abi/layouts';
import { checkExtension } from './system';
import { deviceMemoryIoctls, interruptIoctls, vmIrqIoctls, x86PlatformIoctls } from './vm-irq';
import { argInt, fail, type MockContext, type MockFile, type MockIoctl, type MockVcpu, type MockVm } from './state';

type VmFile = Extract<MockFile, { kind: 'vm' }>;

const seg = (base: bigint, selector: number, type: number, s: number) => ({
  base, limit: 0xffff, selector, type, present: 1, dpl: 0, db: 0, s, l: 0, g: 0, avl: 0, unusable: 0,
});

/** A vCPU in its reset state, as the host kernel reports it (real mode at f000:fff0). */
export function newVcpu(ctx: MockContext, vm: MockVm, id: number): MockVcpu {
  const state = new Map<string, Uint8Array>();
  state.set('kvm_regs', structBytes(kvm_regs, { rdx: 0x600n, rip: 0xfff0n, rflags: 2n }));
  state.set(
    'kvm_sregs',
    structBytes(kvm_sregs, {
      cs: seg(0xffff0000n, 0xf000, 11, 1), ds: seg(0n, 0, 3, 1), es: seg(0n, 0, 3, 1), fs: seg(0n, 0, 3, 1),
      gs: seg(0n, 0, 3, 1), ss: seg(0n, 0, 3, 1), tr: seg(0n, 0, 11, 0), ldt: seg(0n, 0, 2, 0),
      gdt: { base: 0n, limit: 0xffff }, idt: { base: 0n, limit: 0xffff },
      cr0: 0x60000010n, apicBase: vm.vcpus.size === 0 ? 0xfee00900n : 0xfee00800n,
    }),
  );
  return {
    id, fd: -1, vm, state, run: new ArrayBuffer(ctx.config.vcpuMmapSize), script: [], pending: undefined,
    answers: [], runs: 0, extra: new Map(),
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
    const r = decodeStruct<KvmUserspaceMemoryRegion>(kvm_userspace_memory_region, dv(ctx.bytes(arg, R, kvm_userspace_memory_region.size)));
    const page = BigInt(ctx.config.pageSize);
    const valid = kvm.KVM_MEM_LOG_DIRTY_PAGES | kvm.KVM_MEM_READONLY;
    if (r.flags & ~valid) fail('EINVAL', R, 'unknown flags');
    if ((r.slot & 0xffff) >= ctx.config.nrMemslots || r.slot >> 16 >= ctx.config.addressSpaces) fail('EINVAL', R, 'bad slot');
    if (r.memorySize % page !== 0n || r.guestPhysAddr % page !== 0n || r.userspaceAddr % page !== 0n) fail('EINVAL', R, 'unaligned');
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
      if (r.guestPhysAddr < s.guestPhysAddr + s.memorySize && s.guestPhysAddr < r.guestPhysAddr + r.memorySize) fail('EEXIST', R);
    }
    vm.slots.set(r.slot, {
      slot: r.slot, flags: r.flags, guestPhysAddr: r.guestPhysAddr, memorySize: r.memorySize,
      userspaceAddr: r.userspaceAddr, dirty: old && old.flags & kvm.KVM_MEM_LOG_DIRTY_PAGES && r.flags & kvm.KVM_MEM_LOG_DIRTY_PAGES ? old.dirty : new Set(),
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
    for (const p of s.dirty) out[p >> 3]! |= 1 << (p & 7);
    s.dirty.clear();
    return 0;
  },
  // @section x86 platform
  ...x86PlatformIoctls,
  // @section interrupts and events
  ...interruptIoctls,
  // @section devices and memory
  ...deviceMemoryIoctls,
};
vmIrqIoctls.v1 = vmIoctls[ioctls.KVM_SET_USER_MEMORY_REGION]!;
