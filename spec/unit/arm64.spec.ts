/**
 * The experimental arm64 methods on the mock kernel with `arch: 'aarch64'` (no arm64 host here):
 * request encodings, register ids, local checks, and the kernel protocols the mock models
 * (IPA-sized VMs, init before register access, E2BIG with `n` written back, SVE finalize).
 */
import {
  ARM64_REG_PC,
  ARM64_REG_PSTATE,
  ARM64_REG_SP,
  arm64Ioctls,
  arm64SysReg,
  arm64XReg,
  KVM_ARM_TARGET_GENERIC_V8,
  KVM_ARM_VCPU_PSCI_0_2,
  KVM_ARM_VCPU_PVTIME_CTRL,
  KVM_ARM_VCPU_PVTIME_IPA,
  KVM_ARM_VCPU_SVE,
  KVM_ARM_VCPU_TIMER_CTRL,
  KVM_ARM_VCPU_TIMER_IRQ_VTIMER,
  KVM_ARM_VM_SMCCC_CTRL,
  KVM_ARM_VM_SMCCC_FILTER,
  KVM_REG_ARM_PSCI_VERSION,
  KVM_REG_SIZE_U32,
  kvm_vcpu_init,
  regSize,
} from '../../src/abi/arm64';
import { ioctls, kvm as K } from '../../src/abi/kvm-constants';
import { MockBackend } from '../../src/backend/mock/index';
import { RegList } from '../../src/wrappers/fam';
import { Kvm } from '../../src/wrappers/kvm';
import type { VcpuFd } from '../../src/wrappers/vcpu-fd';
import type { VmFd } from '../../src/wrappers/vm-fd';
import { expectCode, expectKvmError } from '../helpers/kvm';

const u64le = (v: bigint) => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
};
const readU64 = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset).getBigUint64(0, true);

describe('arm64 ABI (no host needed)', () => {
  it('encodes the arm64 request numbers with _IOC (and agrees with the generic ones in the x86 table)', () => {
    expect(kvm_vcpu_init.size).toBe(32);
    expect(arm64Ioctls.KVM_ARM_VCPU_INIT).toBe(0x4020aeae);
    expect(arm64Ioctls.KVM_ARM_PREFERRED_TARGET).toBe(0x8020aeaf);
    expect(arm64Ioctls.KVM_ARM_VCPU_FINALIZE).toBe(ioctls.KVM_ARM_VCPU_FINALIZE);
    expect(arm64Ioctls.KVM_GET_REG_LIST).toBe(ioctls.KVM_GET_REG_LIST);
    expect(arm64Ioctls.KVM_GET_ONE_REG).toBe(ioctls.KVM_GET_ONE_REG);
    expect(arm64Ioctls.KVM_SET_ONE_REG).toBe(ioctls.KVM_SET_ONE_REG);
  });

  it('builds the register ids of the arm64 uapi (core, sysreg, firmware)', () => {
    expect(arm64XReg(0)).toBe(0x6030_0000_0010_0000n);
    expect(arm64XReg(30)).toBe(0x6030_0000_0010_003cn);
    expect(ARM64_REG_SP).toBe(0x6030_0000_0010_003en);
    expect(ARM64_REG_PC).toBe(0x6030_0000_0010_0040n); // kvm-ioctls' core_reg_base + 2 * 32
    expect(ARM64_REG_PSTATE).toBe(0x6030_0000_0010_0042n);
    expect(arm64SysReg(3, 0, 0, 0, 5)).toBe(0x6030_0000_0013_c005n); // MPIDR_EL1
    expect(KVM_REG_ARM_PSCI_VERSION).toBe(0x6030_0000_0014_0000n);
    expect(() => arm64XReg(31)).toThrow(RangeError);
  });

  it('regSize decodes the size field (kvm-ioctls reg_size)', () => {
    expect(regSize(ARM64_REG_PC)).toBe(8);
    expect(regSize(0x6020_0000_0010_0000n)).toBe(4);
    expect(regSize(0x6040_0000_0010_0054n)).toBe(16);
    expect(regSize(0n)).toBe(1);
    expect(regSize(K.KVM_REG_SIZE_U2048)).toBe(256);
    expectCode(() => regSize(-1n), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => regSize('1' as never), 'TypeError', 'ERR_INVALID_ARG_TYPE');
  });
});

describe('arm64 methods on the aarch64 mock', () => {
  let backend: MockBackend;
  let kvm: Kvm;
  let vm: VmFd;
  let vcpu: VcpuFd;
  beforeEach(() => {
    backend = new MockBackend({ arch: 'aarch64' });
    kvm = new Kvm({ backend });
    vm = kvm.createVm();
    vcpu = vm.createVcpu(0);
  });
  afterEach(() => kvm.close());
  const calls = (request: string) => backend.calls.filter((c) => c.request === request).length;

  it('Kvm: IPA limit and hardware debug counts come from KVM_CHECK_EXTENSION', () => {
    expect(kvm.getHostIpaLimit()).toBe(48);
    expect(kvm.getGuestDebugHwBps()).toBe(6);
    expect(kvm.getGuestDebugHwWps()).toBe(4);
    using x86 = new Kvm({ backend: new MockBackend() });
    expect([x86.getHostIpaLimit(), x86.getGuestDebugHwBps(), x86.getGuestDebugHwWps()]).toEqual([0, 0, 0]);
  });

  it('createVmWithIpaSize accepts 32..limit and rejects 31 and limit + 1 (EINVAL)', () => {
    expect(kvm.createVmWithIpaSize(40).runSize()).toBe(kvm.getVcpuMmapSize());
    expect(kvm.createVmWithIpaSize(48)).toBeDefined();
    expectKvmError(() => kvm.createVmWithIpaSize(31), 'EINVAL', 'KVM_CREATE_VM');
    expectKvmError(() => kvm.createVmWithIpaSize(kvm.getHostIpaLimit() + 1), 'EINVAL', 'KVM_CREATE_VM');
    // only the low 8 bits are the IPA size: 0x128 & 0xff = 40
    expect(kvm.createVmWithIpaSize(0x128)).toBeDefined();
    expect(backend.vms.at(-1)!.type).toBe(40n);
    expectCode(() => kvm.createVmWithIpaSize(-1), 'RangeError', 'ERR_OUT_OF_RANGE');
  });

  it('getPreferredTarget returns the generic v8 target with no features', () => {
    expect(vm.getPreferredTarget()).toEqual({ target: KVM_ARM_TARGET_GENERIC_V8, features: [0, 0, 0, 0, 0, 0, 0] });
  });

  it('register access before vcpuInit fails with ENOEXEC; vcpuInit checks target and features', () => {
    expectKvmError(() => vcpu.getRegList(new RegList(500)), 'ENOEXEC');
    expectKvmError(() => vcpu.getOneReg(ARM64_REG_PC), 'ENOEXEC');
    expectKvmError(() => vcpu.vcpuFinalize(KVM_ARM_VCPU_SVE), 'ENOEXEC');
    expectKvmError(() => vcpu.vcpuInit({ target: 99, features: [] }), 'EINVAL');
    expectKvmError(() => vcpu.vcpuInit({ target: KVM_ARM_TARGET_GENERIC_V8, features: [1 << 20] }), 'EINVAL');
    expectCode(
      () => vcpu.vcpuInit({ target: 5, features: [0, 0, 0, 0, 0, 0, 0, 0] }),
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
    );
    const init = vm.getPreferredTarget();
    init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    vcpu.vcpuInit(init);
    expect(readU64(vcpu.getOneReg(KVM_REG_ARM_PSCI_VERSION))).toBe(0x10001n);
  });

  it('getRegList: E2BIG with the needed count stored in list.capacity, then the retry succeeds', () => {
    vcpu.vcpuInit(vm.getPreferredTarget());
    const list = new RegList(1);
    expectKvmError(() => vcpu.getRegList(list), 'E2BIG', 'KVM_GET_REG_LIST');
    expect(list.capacity).toBeGreaterThan(1);
    expect(list.length).toBe(0);
    const needed = list.capacity;
    vcpu.getRegList(list);
    expect(list.length).toBe(needed);
    expect(list.entries).toEqual(expect.arrayContaining([arm64XReg(0), ARM64_REG_SP, ARM64_REG_PC, ARM64_REG_PSTATE]));
    // every listed register is readable with a buffer of its regSize
    for (const id of list.entries) expect(vcpu.getOneReg(id)).toHaveLength(regSize(id));
    expectCode(() => vcpu.getRegList([] as never), 'TypeError', 'ERR_INVALID_ARG_TYPE');
  });

  it('setOneReg/getOneReg round-trip and return regSize; short buffers are EINVAL before any ioctl', () => {
    vcpu.vcpuInit(vm.getPreferredTarget());
    expect(vcpu.setOneReg(ARM64_REG_PC, u64le(0x4008_0000n))).toBe(8);
    const out = new Uint8Array(8);
    expect(vcpu.getOneReg(ARM64_REG_PC, out)).toBe(8);
    expect(readU64(out)).toBe(0x4008_0000n);
    expect(readU64(vcpu.getOneReg(ARM64_REG_PSTATE))).toBe(0x3c5n);
    const before = calls('KVM_GET_ONE_REG') + calls('KVM_SET_ONE_REG');
    expectKvmError(() => vcpu.getOneReg(ARM64_REG_PC, new Uint8Array(7)), 'EINVAL', 'KVM_GET_ONE_REG');
    expectKvmError(() => vcpu.setOneReg(ARM64_REG_PC, new Uint8Array(7)), 'EINVAL', 'KVM_SET_ONE_REG');
    expect(calls('KVM_GET_ONE_REG') + calls('KVM_SET_ONE_REG')).toBe(before);
    // a longer buffer is fine: only regSize bytes are used
    expect(vcpu.setOneReg(arm64XReg(1), u64le(7n).slice(0, 8))).toBe(8);
    expect(vcpu.getOneReg(arm64XReg(1), new Uint8Array(16))).toBe(8);
  });

  it('the kernel rejects id 0 and wrong sizes (EINVAL) and unknown registers (ENOENT)', () => {
    vcpu.vcpuInit(vm.getPreferredTarget());
    expectKvmError(() => vcpu.getOneReg(0n), 'EINVAL');
    const pcAs32 = (ARM64_REG_PC & ~0x00f0_0000_0000_0000n) | KVM_REG_SIZE_U32;
    expectKvmError(() => vcpu.getOneReg(pcAs32), 'EINVAL');
    expectKvmError(() => vcpu.getOneReg(arm64SysReg(3, 7, 15, 15, 7)), 'ENOENT');
    expectCode(() => vcpu.getOneReg(-1n), 'RangeError', 'ERR_OUT_OF_RANGE');
  });

  it('vcpuFinalize(SVE): EINVAL without the SVE feature; with it, register access is EPERM until finalized, then EPERM again', () => {
    vcpu.vcpuInit(vm.getPreferredTarget());
    expectKvmError(() => vcpu.vcpuFinalize(KVM_ARM_VCPU_SVE), 'EINVAL');
    const v1 = vm.createVcpu(1);
    v1.vcpuInit({ target: KVM_ARM_TARGET_GENERIC_V8, features: [1 << KVM_ARM_VCPU_SVE] });
    expectKvmError(() => v1.getRegList(new RegList(500)), 'EPERM');
    expectKvmError(() => v1.vcpuFinalize(99), 'EINVAL');
    v1.vcpuFinalize(KVM_ARM_VCPU_SVE);
    expectKvmError(() => v1.vcpuFinalize(KVM_ARM_VCPU_SVE), 'EPERM');
    const list = new RegList(500);
    v1.getRegList(list);
    expect(list.length).toBeGreaterThan(0);
    // features cannot change on a second init
    expectKvmError(() => v1.vcpuInit({ target: KVM_ARM_TARGET_GENERIC_V8, features: [0] }), 'EINVAL');
  });

  it('vCPU device attributes: timer IRQ and PV time; ENXIO for unknown, EFAULT for a bad addr', () => {
    vcpu.vcpuInit(vm.getPreferredTarget());
    vcpu.hasDeviceAttr({ group: KVM_ARM_VCPU_TIMER_CTRL, attr: KVM_ARM_VCPU_TIMER_IRQ_VTIMER });
    expectKvmError(() => vcpu.hasDeviceAttr({ group: 9, attr: 0 }), 'ENXIO', 'KVM_HAS_DEVICE_ATTR');
    vcpu.setDeviceAttr({
      group: KVM_ARM_VCPU_TIMER_CTRL,
      attr: KVM_ARM_VCPU_TIMER_IRQ_VTIMER,
      addr: new Int32Array([27]),
    });
    expectKvmError(
      () => vcpu.setDeviceAttr({ group: KVM_ARM_VCPU_TIMER_CTRL, attr: 0, addr: new Int32Array([5]) }),
      'EINVAL',
    );
    vcpu.setDeviceAttr({
      group: KVM_ARM_VCPU_PVTIME_CTRL,
      attr: KVM_ARM_VCPU_PVTIME_IPA,
      addr: new BigUint64Array([0x9000_0000n]),
    });
    expectKvmError(
      () => vcpu.setDeviceAttr({ group: KVM_ARM_VCPU_PVTIME_CTRL, attr: 0, addr: new BigUint64Array([0x9000_0000n]) }),
      'EEXIST',
    );
    expectKvmError(
      () => vcpu.setDeviceAttr({ group: KVM_ARM_VCPU_TIMER_CTRL, attr: 1, addr: 0x1234n }),
      'EFAULT',
      'KVM_SET_DEVICE_ATTR',
    );
    expectCode(() => vcpu.setDeviceAttr({ group: -1, attr: 0 }), 'RangeError', 'ERR_OUT_OF_RANGE');
  });

  it('VM device attributes: the SMCCC filter exists, overlapping ranges are EEXIST, others ENXIO', () => {
    const attr = { group: KVM_ARM_VM_SMCCC_CTRL, attr: KVM_ARM_VM_SMCCC_FILTER };
    vm.hasDeviceAttr(attr);
    expectKvmError(() => vm.hasDeviceAttr({ group: 1, attr: 0 }), 'ENXIO', 'KVM_HAS_DEVICE_ATTR');
    // struct kvm_smccc_filter { u32 base; u32 nr_functions; u8 action; u8 pad[15] }
    const filter = (base: number, nr: number, action: number) => {
      const b = new Uint8Array(24);
      const d = new DataView(b.buffer);
      d.setUint32(0, base, true);
      d.setUint32(4, nr, true);
      d.setUint8(8, action);
      return b;
    };
    vm.setDeviceAttr({ ...attr, addr: filter(0x8400_0000, 0x20, 1) });
    expectKvmError(() => vm.setDeviceAttr({ ...attr, addr: filter(0x8400_0010, 1, 1) }), 'EEXIST');
    expectKvmError(() => vm.setDeviceAttr({ ...attr, addr: filter(0xc400_0000, 1, 7) }), 'EINVAL');
  });

  it('the arm64-only ioctls do not exist on the x86 mock (ENOTTY; the real x86 kernel: see cpuid-msr.kvm.spec.ts)', () => {
    using x86 = new Kvm({ backend: new MockBackend() });
    const v = x86.createVm();
    expectKvmError(() => v.getPreferredTarget(), 'ENOTTY');
    expectKvmError(() => v.createVcpu(0).vcpuInit({ target: 5, features: [] }), 'ENOTTY');
  });
});
