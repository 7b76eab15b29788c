/**
 * The core constructors and helpers of the seed commit, on the mock and on the real kernel:
 * other device paths, raw fds and their adoption, typed capability checks, VM types, run size,
 * `immediate_exit`, and a second kvm_run mapping.
 */
import { sys } from '../../src/abi/kvm-constants';
import { MockBackend, hlt } from '../../src/backend/mock/index';
import type { IoctlBackend } from '../../src/backend/types';
import { Cap } from '../../src/wrappers/cap';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import { KvmRunWrapper } from '../../src/wrappers/kvm-run';
import { contractBackends, expectCode, expectKvmError } from '../helpers/kvm';
import { enterRealMode } from '../../src/testing/real-mode';

describe.each(contractBackends())('core contract: %s', (_name, make) => {
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

  it('Kvm.newWithPath opens /dev/kvm and fails with ENOENT (open) for a missing path', () => {
    const k = Kvm.newWithPath('/dev/kvm', { backend });
    expect(k.getApiVersion()).toBe(12);
    k.close();
    let err: unknown;
    try {
      Kvm.newWithPath('/dev/kvm-rx-does-not-exist', { backend });
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({
      name: 'KvmError',
      code: 'ENOENT',
      syscall: 'open',
      path: '/dev/kvm-rx-does-not-exist',
    });
    expectCode(() => Kvm.newWithPath(42 as unknown as string, { backend }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
  });

  it('Kvm.openWithCloexecAt sets O_CLOEXEC only when asked', () => {
    const withFlag = Kvm.openWithCloexecAt('/dev/kvm', true, { backend });
    const without = Kvm.openWithCloexecAt('/dev/kvm', false, { backend });
    try {
      expect(backend.getFdFlags(withFlag) & sys.FD_CLOEXEC).toBe(sys.FD_CLOEXEC);
      expect(backend.getFdFlags(without) & sys.FD_CLOEXEC).toBe(0);
    } finally {
      backend.close(withFlag);
      backend.close(without);
    }
    expectCode(
      () => Kvm.openWithCloexecAt('/dev/kvm', 1 as unknown as boolean, { backend }),
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
    );
  });

  it('checkExtensionInt gives the raw answer on the system and the VM fd', () => {
    const vm = kvm.createVm();
    expect(kvm.checkExtensionInt(Cap.MaxVcpus)).toBe(kvm.checkExtensionRaw(Cap.MaxVcpus));
    expect(kvm.checkExtensionInt(Cap.MaxVcpus)).toBeGreaterThanOrEqual(1);
    expect(vm.checkExtensionInt(Cap.NrMemslots)).toBe(vm.checkExtensionRaw(Cap.NrMemslots));
    expect(vm.checkExtensionInt(Cap.NrMemslots)).toBeGreaterThanOrEqual(32);
    expect(vm.checkExtensionInt(Cap.UserMemory)).toBeGreaterThan(0);
    expectCode(() => kvm.checkExtensionInt(-1 as Cap), 'RangeError', 'ERR_OUT_OF_RANGE');
  });

  it('createVmWithType(0) makes a default VM; an unknown type is EINVAL', () => {
    const vm = kvm.createVmWithType(0n);
    expect(vm.createVcpu(0).id).toBe(0);
    expect(kvm.createVmWithType(0).closed).toBe(false);
    expectKvmError(() => kvm.createVmWithType(0xffn), 'EINVAL', 'KVM_CREATE_VM');
    expectCode(() => kvm.createVmWithType(-1), 'RangeError', 'ERR_OUT_OF_RANGE');
  });

  it('runSize is the vCPU mmap size', () => {
    expect(kvm.createVm().runSize()).toBe(kvm.getVcpuMmapSize());
  });

  it('createVmfdFromRawfd and createVcpuFromRawfd adopt dup()ed fds of the same VM and vCPU', () => {
    const vm = kvm.createVm();
    const vcpu = vm.createVcpu(0);
    vcpu.setRegs({ ...vcpu.getRegs(), rax: 0xabcdn });
    const vm2 = kvm.createVmfdFromRawfd(backend.dup(vm.asRawFd()));
    // the same VM: vCPU id 0 is taken there too
    expectKvmError(() => vm2.createVcpu(0), 'EEXIST', 'KVM_CREATE_VCPU');
    expect(vm2.runSize()).toBe(vm.runSize());
    const vcpu2 = vm.createVcpuFromRawfd(backend.dup(vcpu.asRawFd()));
    expect(vcpu2.id).toBe(-1);
    expect(vcpu2.getRegs().rax).toBe(0xabcdn); // the same vCPU
    vcpu2.close();
    expect(vcpu.getRegs().rax).toBe(0xabcdn); // closing the copy left the original open
    vm2.close();
    expect(vm.createVcpu(1).id).toBe(1);
    expectCode(() => kvm.createVmfdFromRawfd(-1), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => vm.createVcpuFromRawfd(-1), 'RangeError', 'ERR_OUT_OF_RANGE');
  });

  it('setKvmImmediateExit(1) makes KVM_RUN return EINTR until it is written back to 0', () => {
    const mem = GuestMemory.anonymous(backend.pageSize, { backend });
    owned.push(mem);
    mem.write(0, Uint8Array.of(0xf4)); // hlt
    const vm = kvm.createVm();
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x1000n, memory: mem });
    if (backend instanceof MockBackend) backend.vcpu(0).script([hlt()]);
    const vcpu = vm.createVcpu(0);
    enterRealMode(vcpu, { rip: 0x1000n });
    expect(vcpu.getKvmRun().immediateExit).toBe(0);
    vcpu.setKvmImmediateExit(1);
    expect(vcpu.getKvmRun().immediateExit).toBe(1);
    expectKvmError(() => vcpu.run(), 'EINTR', 'KVM_RUN');
    expectKvmError(() => vcpu.run(), 'EINTR', 'KVM_RUN'); // the kernel does not clear it
    expect(vcpu.getKvmRun().immediateExit).toBe(1);
    vcpu.setKvmImmediateExit(0);
    expect(vcpu.run().kind).toBe('Hlt');
    expectCode(() => vcpu.setKvmImmediateExit(256), 'RangeError', 'ERR_OUT_OF_RANGE');
    vm.close();
  });

  it('KvmRunWrapper.mmapFromFd maps the same kvm_run a second time', () => {
    const vcpu = kvm.createVm().createVcpu(0);
    const size = kvm.getVcpuMmapSize();
    const second = KvmRunWrapper.mmapFromFd(backend, vcpu.asRawFd(), size);
    try {
      expect(second.size).toBe(size);
      expect(second.address).not.toBe(vcpu.getKvmRun().address);
      vcpu.setKvmImmediateExit(1);
      expect(second.immediateExit).toBe(1); // MAP_SHARED: one page, two views
      second.immediateExit = 0;
      expect(vcpu.getKvmRun().immediateExit).toBe(0);
    } finally {
      second.close();
    }
    expect(vcpu.getKvmRun().immediateExit).toBe(0); // the vCPU's own mapping is untouched
    expectCode(() => KvmRunWrapper.mmapFromFd(backend, vcpu.asRawFd(), 0), 'RangeError', 'ERR_OUT_OF_RANGE');
  });
});
