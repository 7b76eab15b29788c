/**
 * What only the real kernel can tell: CPUID after the first KVM_RUN, the kernel accepting 257
 * CPUID entries where kvm-ioctls refuses locally, and the arm64-only methods on an x86 host
 * (each must fail with a clean KvmError, or do what x86 does with that ioctl number).
 */
import { ARM64_REG_PC, KVM_ARM_TARGET_GENERIC_V8, KVM_ARM_VCPU_SVE } from '../../src/abi/arm64';
import { ioctls } from '../../src/abi/kvm-constants';
import { CpuId, famBuffer, famCount, RegList } from '../../src/wrappers/fam';
import { Kvm } from '../../src/wrappers/kvm';
import { describeKvm, expectKvmError } from '../helpers/kvm';
import { realModeGuest } from '../helpers/real-mode-guest';

describeKvm('cpuid/msr on the real kernel', () => {
  let kvm: Kvm;
  const owned: Array<{ close(): void }> = [];
  beforeEach(() => {
    kvm = new Kvm();
  });
  afterEach(() => {
    kvm.close();
    for (const o of owned.splice(0).reverse()) o.close();
  });

  it('accepts nent 257 for KVM_GET_SUPPORTED_CPUID (clamping it), where getSupportedCpuid(257) is ENOMEM locally', () => {
    const buf = famBuffer('CpuId', 257);
    expect(kvm.backend.ioctl(kvm.asRawFd(), ioctls.KVM_GET_SUPPORTED_CPUID, buf)).toBe(0);
    expect(famCount('CpuId', buf)).toBe(kvm.getSupportedCpuid(256).length);
    expectKvmError(() => kvm.getSupportedCpuid(257), 'ENOMEM', 'KVM_GET_SUPPORTED_CPUID');
  });

  it('KVM_SET_CPUID2 with more than 256 leaves is E2BIG from the kernel', () => {
    const vcpu = kvm.createVm().createVcpu(0);
    expectKvmError(
      () => vcpu.backend.ioctl(vcpu.asRawFd(), ioctls.KVM_SET_CPUID2, famBuffer('CpuId', 257)),
      'E2BIG',
      'KVM_SET_CPUID2',
    );
  });

  it('setCpuid2 after the first KVM_RUN: identical leaves are accepted, different ones are EINVAL', () => {
    const guest = realModeGuest([0xf4]); // 0x1000: hlt
    owned.push(guest);
    const { vcpu } = guest;
    vcpu.setCpuid2(kvm.getSupportedCpuid(256));
    expect(vcpu.run().kind).toBe('Hlt');
    const stored = vcpu.getCpuid2(256);
    vcpu.setCpuid2(stored); // identical to what the vCPU holds
    const changed = new CpuId(stored.entries.map((e) => (e.function === 0 ? { ...e, eax: e.eax - 1 } : e)));
    expectKvmError(() => vcpu.setCpuid2(changed), 'EINVAL', 'KVM_SET_CPUID2');
  });

  describe('arm64-only methods on x86_64', () => {
    it('Kvm: the arm caps answer 0, and an IPA-sized VM type is EINVAL', () => {
      expect([kvm.getHostIpaLimit(), kvm.getGuestDebugHwBps(), kvm.getGuestDebugHwWps()]).toEqual([0, 0, 0]);
      expectKvmError(() => kvm.createVmWithIpaSize(40), 'EINVAL', 'KVM_CREATE_VM');
    });

    it('VmFd: KVM_ARM_PREFERRED_TARGET and VM device attributes are ENOTTY', () => {
      const vm = kvm.createVm();
      expectKvmError(() => vm.getPreferredTarget(), 'ENOTTY');
      expectKvmError(() => vm.hasDeviceAttr({ group: 0, attr: 0 }), 'ENOTTY', 'KVM_HAS_DEVICE_ATTR');
      expectKvmError(
        () => vm.setDeviceAttr({ group: 0, attr: 0, addr: new BigUint64Array(1) }),
        'ENOTTY',
        'KVM_SET_DEVICE_ATTR',
      );
    });

    it('VcpuFd: init/finalize/one-reg are EINVAL (x86 answers unknown vCPU ioctls with EINVAL)', () => {
      const vcpu = kvm.createVm().createVcpu(0);
      expectKvmError(() => vcpu.vcpuInit({ target: KVM_ARM_TARGET_GENERIC_V8, features: [] }), 'EINVAL');
      expectKvmError(() => vcpu.vcpuFinalize(KVM_ARM_VCPU_SVE), 'EINVAL');
      expectKvmError(() => vcpu.getOneReg(ARM64_REG_PC), 'EINVAL');
      expectKvmError(() => vcpu.setOneReg(ARM64_REG_PC, new Uint8Array(8)), 'EINVAL');
      // the local length check still comes first
      expectKvmError(() => vcpu.getOneReg(ARM64_REG_PC, new Uint8Array(7)), 'EINVAL', 'KVM_GET_ONE_REG');
    });

    it('VcpuFd: KVM_GET_REG_LIST exists on x86 6.18 and lists no registers', () => {
      const vcpu = kvm.createVm().createVcpu(0);
      const list = new RegList(500);
      let err: unknown;
      try {
        vcpu.getRegList(list);
      } catch (e) {
        err = e;
      }
      // measured on Linux 6.18: success with n = 0; older x86 kernels answer EINVAL
      if (err === undefined) expect(list.length).toBe(0);
      else
        expect((err as { name: string; code: string }).name + ':' + (err as { code: string }).code).toBe(
          'KvmError:EINVAL',
        );
    });

    it('VcpuFd: vCPU device attributes are x86 ones (group 0 = TSC control exists, group 1 is ENXIO)', () => {
      const vcpu = kvm.createVm().createVcpu(0);
      vcpu.hasDeviceAttr({ group: 0, attr: 0 }); // KVM_VCPU_TSC_CTRL / KVM_VCPU_TSC_OFFSET
      expectKvmError(() => vcpu.hasDeviceAttr({ group: 1, attr: 0 }), 'ENXIO', 'KVM_HAS_DEVICE_ATTR');
      expectKvmError(
        () => vcpu.setDeviceAttr({ group: 1, attr: 0, addr: new Int32Array(1) }),
        'ENXIO',
        'KVM_SET_DEVICE_ATTR',
      );
    });
  });
});
