/**
 * One contract, two backends: every case runs against the mock and against the real kernel, so
 * the mock cannot drift from KVM's behaviour (serialport's testBinding pattern).
 */
import type { IoctlBackend } from '../../src/backend/types';
import { Cap } from '../../src/wrappers/cap';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import { contractBackends, expectCode, expectKvmError } from '../helpers/kvm';

describe.each(contractBackends())('backend contract: %s', (_name, make) => {
  let backend: IoctlBackend;
  let kvm: Kvm;
  const owned: Array<{ close(): void }> = [];
  beforeEach(() => {
    backend = make();
    kvm = new Kvm({ backend });
  });
  afterEach(() => {
    kvm.close();
    for (const o of owned.splice(0).reverse()) o.close();
  });
  const mem = (size: number) => {
    const m = GuestMemory.anonymous(size, { backend });
    owned.push(m);
    return m;
  };

  it('reports API version 12 and the basic capabilities', () => {
    expect(kvm.getApiVersion()).toBe(12);
    expect(kvm.checkExtension(Cap.UserMemory)).toBe(true);
    expect(kvm.checkExtensionRaw(696969)).toBe(0);
    expect(kvm.getVcpuMmapSize()).toBeGreaterThanOrEqual(backend.pageSize);
    expect(kvm.getNrMemslots()).toBeGreaterThanOrEqual(32);
    expect(kvm.getMaxVcpus()).toBeGreaterThanOrEqual(kvm.getNrVcpus());
    expect(kvm.getMaxVcpuId()).toBeGreaterThanOrEqual(kvm.getMaxVcpus());
  });

  it('rejects a duplicate vCPU id with EEXIST and an id >= max with EINVAL', () => {
    const vm = kvm.createVm();
    vm.createVcpu(0);
    expectKvmError(() => vm.createVcpu(0), 'EEXIST', 'KVM_CREATE_VCPU');
    expectKvmError(() => vm.createVcpu(kvm.getMaxVcpuId()), 'EINVAL', 'KVM_CREATE_VCPU');
    expect(vm.createVcpu(kvm.getMaxVcpuId() - 1).id).toBe(kvm.getMaxVcpuId() - 1);
  });

  it('gives memory slots the kernel errors', () => {
    const vm = kvm.createVm();
    const a = mem(0x4000);
    const b = mem(0x4000);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10000n, memory: a });
    expectKvmError(
      () => vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0x12000n, memory: b }),
      'EEXIST',
      'KVM_SET_USER_MEMORY_REGION',
    );
    expectKvmError(() => vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0x20800n, memory: b }), 'EINVAL');
    expectKvmError(
      () => vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0x20000n, memory: b, flags: 0x80 }),
      'EINVAL',
    );
    expectKvmError(
      () => vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10000n, memory: a, memorySize: 0x2000 }),
      'EINVAL',
    );
    expectKvmError(() => vm.setUserMemoryRegion({ slot: 5, guestPhysAddr: 0n, memorySize: 0 }), 'EINVAL');
    expectKvmError(
      () => vm.setUserMemoryRegion({ slot: kvm.getNrMemslots(), guestPhysAddr: 0x40000n, memory: b }),
      'EINVAL',
    );
    vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0x20000n, memory: b });
    // toggling only LOG_DIRTY_PAGES on an existing slot is allowed
    vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0x20000n, memory: b, flags: 1 });
    vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0x20000n, memorySize: 0 });
    vm.close();
  });

  it('deletes a slot only with an explicit memorySize: 0; a region without memory is a TypeError', () => {
    const vm = kvm.createVm();
    const a = mem(0x4000);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10000n, memory: a });
    for (const call of [
      () => vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10000n }),
      () => vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0x10000n }),
    ]) {
      expect(call).toThrow(
        expect.objectContaining({
          name: 'TypeError',
          code: 'ERR_INVALID_ARG_VALUE',
          message: 'region.memory is required (pass memorySize: 0 to delete the slot)',
        }),
      );
    }
    // the refused calls deleted nothing: the slot still backs its range
    expect(vm.guestMemory.find(0x10000n)?.region.memory).toBe(a);
    expectCode(
      () => vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10000n, memorySize: 0x1000 }),
      'RangeError',
      'ERR_OUT_OF_RANGE',
    );
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10000n, memorySize: 0 });
    expect(vm.guestMemory.find(0x10000n)).toBeUndefined();
    // Deleting a slot that does not exist (never created, or already deleted): the kernel (probed on
    // Linux 6.18: `!old || !old->npages` in kvm_set_memory_region) answers EINVAL, and so does the mock.
    expectKvmError(
      () => vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10000n, memorySize: 0 }),
      'EINVAL',
      'KVM_SET_USER_MEMORY_REGION',
    );
    expectKvmError(
      () => vm.setUserMemoryRegion({ slot: 7, guestPhysAddr: 0x80000n, memorySize: 0 }),
      'EINVAL',
      'KVM_SET_USER_MEMORY_REGION',
    );
    expectKvmError(
      () => vm.setUserMemoryRegion2({ slot: 7, guestPhysAddr: 0x80000n, memorySize: 0 }),
      'EINVAL',
      'KVM_SET_USER_MEMORY_REGION2',
    );
    // a deleted slot id can be used again
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x40000n, memory: a });
    expect(vm.guestMemory.find(0x40000n)?.region.memory).toBe(a);
    vm.close();
  });

  it('answers KVM_GET_DIRTY_LOG with ENOENT for a slot without logging and EINVAL for a bad id', () => {
    const vm = kvm.createVm();
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10000n, memory: mem(0x4000) });
    expectKvmError(() => vm.getDirtyLog(0, 0x4000), 'ENOENT', 'KVM_GET_DIRTY_LOG');
    expectKvmError(() => vm.getDirtyLog(3, 0x4000), 'ENOENT', 'KVM_GET_DIRTY_LOG');
    expectKvmError(() => vm.getDirtyLog(40000, 0x4000), 'EINVAL', 'KVM_GET_DIRTY_LOG');
    vm.close();
  });

  it('starts a vCPU in real mode at f000:fff0 and round-trips registers', () => {
    const vm = kvm.createVm();
    const vcpu = vm.createVcpu(0);
    const sregs = vcpu.getSregs();
    expect({ base: sregs.cs.base, selector: sregs.cs.selector }).toEqual({ base: 0xffff0000n, selector: 0xf000 });
    expect(vcpu.getRegs().rip).toBe(0xfff0n);
    vcpu.setRegs({ ...vcpu.getRegs(), rax: 0x1122334455667788n, rip: 0x1000n, rflags: 2n });
    expect(vcpu.getRegs()).toMatchObject({ rax: 0x1122334455667788n, rip: 0x1000n, rflags: 2n });
    sregs.cs.base = 0n;
    sregs.cs.selector = 0;
    vcpu.setSregs(sregs);
    expect(vcpu.getSregs().cs).toMatchObject({ base: 0n, selector: 0 });
    vm.close();
  });

  it('throws ERR_KVM_CLOSED on use after close and EBADF for an fd that is not open', () => {
    const vm = kvm.createVm();
    const vcpu = vm.createVcpu(0);
    vm.close();
    expectCode(() => vcpu.getRegs(), 'KvmClosedError', 'ERR_KVM_CLOSED');
    expectCode(() => vm.createVcpu(1), 'KvmClosedError', 'ERR_KVM_CLOSED');
    // An fd number that was just closed (so nothing owns it now) gives EBADF, as kvm-ioctls' bad-fd tests.
    const probe = Kvm.openWithCloexec(true, { backend });
    backend.close(probe);
    const bad = Kvm.fromRawFd(probe, { backend });
    expectKvmError(() => bad.getApiVersion(), 'EBADF', 'KVM_GET_API_VERSION');
    expectKvmError(() => bad.createVm(), 'EBADF');
  });
});
