/**
 * The `_IOC` encoder against the addon's table: every x86 request number the C compiler computed
 * from <linux/kvm.h> must be reproduced from its direction, type, number and size, and for a set
 * of requests the size must be the generated struct layout's (an independent check of the fields).
 */
import { _IO, _IOC, _IOR, _IOW, _IOWR, IOC_READ, IOC_WRITE, iocFields, KVMIO } from '../../src/abi/ioc';
import { ioctls } from '../../src/abi/kvm-constants';
import * as L from '../../src/abi/layouts';
import { loadAddon } from '../../src/backend/native';
import { expectCode } from '../helpers/kvm';

const encoders = [
  _IO,
  (t: number, n: number, s: number) => _IOW(t, n, s),
  (t: number, n: number, s: number) => _IOR(t, n, s),
  (t: number, n: number, s: number) => _IOWR(t, n, s),
];

describe('_IOC encoder', () => {
  const addon = loadAddon().abi().ioctls;

  it('reproduces every request number of the addon table with _IO/_IOR/_IOW/_IOWR', () => {
    const names = Object.keys(addon);
    expect(names.length).toBeGreaterThan(100);
    for (const name of names) {
      const value = addon[name];
      const f = iocFields(value);
      expect([name, f.type]).toEqual([name, KVMIO]);
      const encoded = f.dir === 0 ? _IO(f.type, f.nr) : encoders[f.dir](f.type, f.nr, f.size);
      expect([name, encoded]).toEqual([name, value]);
      expect([name, _IOC(f.dir, f.type, f.nr, f.size)]).toEqual([name, ioctls[name as keyof typeof ioctls]]);
    }
  });

  it('matches the header definitions written out with the generated struct sizes', () => {
    const table: Array<[keyof typeof ioctls, number]> = [
      ['KVM_RUN', _IO(KVMIO, 0x80)],
      ['KVM_CREATE_VCPU', _IO(KVMIO, 0x41)],
      ['KVM_GET_REGS', _IOR(KVMIO, 0x81, L.kvm_regs.size)],
      ['KVM_SET_REGS', _IOW(KVMIO, 0x82, L.kvm_regs.size)],
      ['KVM_GET_SREGS', _IOR(KVMIO, 0x83, L.kvm_sregs.size)],
      ['KVM_SET_USER_MEMORY_REGION', _IOW(KVMIO, 0x46, L.kvm_userspace_memory_region.size)],
      ['KVM_GET_SUPPORTED_CPUID', _IOWR(KVMIO, 0x05, L.kvm_cpuid2.size)],
      ['KVM_GET_EMULATED_CPUID', _IOWR(KVMIO, 0x09, L.kvm_cpuid2.size)],
      ['KVM_SET_CPUID2', _IOW(KVMIO, 0x90, L.kvm_cpuid2.size)],
      ['KVM_GET_CPUID2', _IOWR(KVMIO, 0x91, L.kvm_cpuid2.size)],
      ['KVM_GET_MSRS', _IOWR(KVMIO, 0x88, L.kvm_msrs.size)],
      ['KVM_SET_MSRS', _IOW(KVMIO, 0x89, L.kvm_msrs.size)],
      ['KVM_GET_MSR_INDEX_LIST', _IOWR(KVMIO, 0x02, L.kvm_msr_list.size)],
      ['KVM_GET_MSR_FEATURE_INDEX_LIST', _IOWR(KVMIO, 0x0a, L.kvm_msr_list.size)],
      ['KVM_GET_REG_LIST', _IOWR(KVMIO, 0xb0, L.kvm_reg_list.size)],
      ['KVM_GET_ONE_REG', _IOW(KVMIO, 0xab, L.kvm_one_reg.size)],
      ['KVM_SET_ONE_REG', _IOW(KVMIO, 0xac, L.kvm_one_reg.size)],
      ['KVM_SET_DEVICE_ATTR', _IOW(KVMIO, 0xe1, L.kvm_device_attr.size)],
      ['KVM_HAS_DEVICE_ATTR', _IOW(KVMIO, 0xe3, L.kvm_device_attr.size)],
      ['KVM_CREATE_DEVICE', _IOWR(KVMIO, 0xe0, L.kvm_create_device.size)],
      ['KVM_GET_XSAVE', _IOR(KVMIO, 0xa4, L.kvm_xsave.size)],
      ['KVM_IRQFD', _IOW(KVMIO, 0x76, L.kvm_irqfd.size)],
      ['KVM_ARM_VCPU_FINALIZE', _IOW(KVMIO, 0xc2, 4)],
    ];
    for (const [name, value] of table) expect([name, value]).toEqual([name, addon[name]]);
  });

  it('decodes the fields of a request', () => {
    expect(iocFields(0xc008ae05)).toEqual({ dir: IOC_READ | IOC_WRITE, type: 0xae, nr: 0x05, size: 8 });
    expect(iocFields(0x4020aeae)).toEqual({ dir: IOC_WRITE, type: 0xae, nr: 0xae, size: 32 });
  });

  it('refuses fields that do not fit (size is 14 bits)', () => {
    expectCode(() => _IOR(KVMIO, 1, 0x4000), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => _IO(0x100, 1), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => _IOC(4, KVMIO, 1, 0), 'RangeError', 'ERR_OUT_OF_RANGE');
    expect(_IOR(KVMIO, 0xff, 0x3fff)).toBe(0xbfffaeff);
  });
});
