/**
 * CPUID and MSR ioctls, on the mock and on the real kernel (notes §5 items 7, 8 and 29).
 * Host-defined numbers (how many leaves the host supports and a vCPU keeps, which MSRs) are probed
 * and asserted as properties (docs/testing.md, "Host-defined behaviours").
 */
import type { IoctlBackend } from '../../src/backend/types';
import { MockBackend } from '../../src/backend/mock/index';
import { ioctls } from '../../src/abi/kvm-constants';
import { CpuId, famBuffer, famCount, KVM_MAX_CPUID_ENTRIES, Msrs } from '../../src/wrappers/fam';
import { Kvm } from '../../src/wrappers/kvm';
import { contractBackends, expectCode, expectKvmError } from '../helpers/kvm';

const LEAF0 = { function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0x4b4d564b, ecx: 0x564b4d56, edx: 0x4d };
const key = (e: { function: number; index: number }) => `${e.function}/${e.index}`;

describe.each(contractBackends())('cpuid/msr contract: %s', (_name, make) => {
  let backend: IoctlBackend;
  let kvm: Kvm;
  beforeEach(() => {
    backend = make();
    kvm = new Kvm({ backend });
  });
  afterEach(() => kvm.close());

  const callsOf = (request: string) =>
    backend instanceof MockBackend ? backend.calls.filter((c) => c.request === request).length : undefined;

  describe('system fd CPUID', () => {
    it('getSupportedCpuid(256) returns between 1 and 256 leaves, starting with leaf 0', () => {
      const cpuid = kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES);
      expect(cpuid).toBeInstanceOf(CpuId);
      expect(cpuid.length).toBeGreaterThan(0);
      expect(cpuid.length).toBeLessThanOrEqual(256);
      expect(cpuid.entries[0].function).toBe(0);
      // leaf 0 eax is the highest basic leaf; every basic leaf listed is within it
      const maxBasic = cpuid.entries[0].eax;
      for (const e of cpuid.entries) if (e.function < 0x4000_0000) expect(e.function).toBeLessThanOrEqual(maxBasic);
      // entries are complete plain objects
      expect(Object.keys(cpuid.entries[0]).sort()).toEqual(['eax', 'ebx', 'ecx', 'edx', 'flags', 'function', 'index']);
    });

    it('getEmulatedCpuid(256) returns at least one leaf', () => {
      const cpuid = kvm.getEmulatedCpuid(256);
      expect(cpuid.length).toBeGreaterThan(0);
      expect(cpuid.length).toBeLessThanOrEqual(256);
    });

    it('refuses more than 256 entries with ENOMEM before any ioctl', () => {
      const before = callsOf('KVM_GET_SUPPORTED_CPUID');
      expectKvmError(() => kvm.getSupportedCpuid(257), 'ENOMEM', 'KVM_GET_SUPPORTED_CPUID');
      expectKvmError(() => kvm.getEmulatedCpuid(257), 'ENOMEM', 'KVM_GET_EMULATED_CPUID');
      expect(callsOf('KVM_GET_SUPPORTED_CPUID')).toBe(before);
      expectCode(() => kvm.getSupportedCpuid(-1), 'RangeError', 'ERR_OUT_OF_RANGE');
      expectCode(() => kvm.getSupportedCpuid('4' as never), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    });

    it('surfaces the kernel E2BIG when the room is too small (0, 1, or one less than needed)', () => {
      const n = kvm.getSupportedCpuid(256).length;
      expectKvmError(() => kvm.getSupportedCpuid(0), 'E2BIG', 'KVM_GET_SUPPORTED_CPUID');
      expectKvmError(() => kvm.getSupportedCpuid(1), 'E2BIG', 'KVM_GET_SUPPORTED_CPUID');
      expectKvmError(() => kvm.getSupportedCpuid(n - 1), 'E2BIG', 'KVM_GET_SUPPORTED_CPUID');
      expect(kvm.getSupportedCpuid(n).length).toBe(n);
      expectKvmError(() => kvm.getEmulatedCpuid(0), 'E2BIG', 'KVM_GET_EMULATED_CPUID');
    });
  });

  describe('E2BIG protocol (raw ioctls)', () => {
    it('leaves nent unchanged on E2BIG for CPUID, but writes the real count back for the MSR index list', () => {
      const cpuid = famBuffer('CpuId', 1);
      expectKvmError(() => backend.ioctl(kvm.asRawFd(), ioctls.KVM_GET_SUPPORTED_CPUID, cpuid), 'E2BIG');
      expect(famCount('CpuId', cpuid)).toBe(1);
      const list = famBuffer('MsrList', 0);
      expectKvmError(() => backend.ioctl(kvm.asRawFd(), ioctls.KVM_GET_MSR_INDEX_LIST, list), 'E2BIG');
      expect(famCount('MsrList', list)).toBe(kvm.getMsrIndexList().length);
    });
  });

  describe('vCPU CPUID', () => {
    it('a fresh vCPU has no leaves; after setCpuid2(supported) it holds a subset of the keys set, leaf 0 as set', () => {
      const vm = kvm.createVm();
      const vcpu = vm.createVcpu(0);
      expect(vcpu.getCpuid2(0).length).toBe(0);
      const supported = kvm.getSupportedCpuid(256);
      vcpu.setCpuid2(supported);
      const got = vcpu.getCpuid2(256);
      // How many leaves the vCPU keeps is host-defined (all 76 of 76 on one Intel PVM host, 54 of
      // 56 on another): probed here as got.length, never a constant. KVM guarantees a subset of
      // the function/index keys that were set, each once, leaf 0 (vendor, max leaf) kept as set.
      expect(got.length).toBeGreaterThan(0);
      expect(got.length).toBeLessThanOrEqual(supported.length);
      const setKeys = new Set(supported.entries.map(key));
      expect(got.entries.map(key).filter((k) => !setKeys.has(k))).toEqual([]);
      expect(new Set(got.entries.map(key)).size).toBe(got.length);
      expect(got.entries.find((e) => e.function === 0)).toEqual(supported.entries.find((e) => e.function === 0));
      // The kernel may rewrite dynamic bits (OSXSAVE, the XSAVE size, …) of what was set; what it
      // gave back is stable: set again, on this vCPU and on a fresh one, it round-trips exactly.
      vcpu.setCpuid2(got);
      expect(vcpu.getCpuid2(256).entries).toEqual(got.entries);
      const fresh = vm.createVcpu(1);
      fresh.setCpuid2(got);
      expect(fresh.getCpuid2(got.length).entries).toEqual(got.entries);
    });

    it('getCpuid2 with fewer entries than stored is E2BIG; more than 256 is ENOMEM locally', () => {
      const vcpu = kvm.createVm().createVcpu(0);
      const supported = kvm.getSupportedCpuid(256);
      vcpu.setCpuid2(supported);
      const stored = vcpu.getCpuid2(256).length;
      expectKvmError(() => vcpu.getCpuid2(stored - 1), 'E2BIG', 'KVM_GET_CPUID2');
      expect(vcpu.getCpuid2(stored).length).toBe(stored);
      const before = callsOf('KVM_GET_CPUID2');
      expectKvmError(() => vcpu.getCpuid2(257), 'ENOMEM', 'KVM_GET_CPUID2');
      expect(callsOf('KVM_GET_CPUID2')).toBe(before);
    });

    it('round-trips a custom leaf 0 (the KVMKVMKVM signature), also from a plain array', () => {
      const vcpu = kvm.createVm().createVcpu(0);
      vcpu.setCpuid2(new CpuId([LEAF0]));
      expect(vcpu.getCpuid2(4).entries).toEqual([LEAF0]);
      vcpu.setCpuid2([{ function: 0, eax: 1 }]);
      expect(vcpu.getCpuid2(1).entries).toEqual([{ ...LEAF0, eax: 1, ebx: 0, ecx: 0, edx: 0 }]);
      expectKvmError(() => vcpu.getCpuid2(0), 'E2BIG', 'KVM_GET_CPUID2');
    });
  });

  describe('MSRs', () => {
    it('lists the MSRs to save (including SYSENTER_CS/ESP) and the feature MSRs', () => {
      const list = kvm.getMsrIndexList();
      expect(list.length).toBeGreaterThan(2);
      expect(list.length).toBeLessThanOrEqual(256);
      // SYSENTER_CS/ESP are in KVM's base msrs_to_save on every x86 host; the rest is host-defined
      expect(list.entries).toEqual(expect.arrayContaining([0x174, 0x175]));
      expect(new Set(list.entries).size).toBe(list.length);
      const features = kvm.getMsrFeatureIndexList();
      expect(features.length).toBeGreaterThan(0);
      expect(new Set(features.entries).size).toBe(features.length);
    });

    it('system fd getMsrs reads the feature MSRs the host lists, updates data in place, and stops at the first unknown', () => {
      // Which feature MSRs exist is host-defined: probe the list and read what it names.
      const listed = kvm.getMsrFeatureIndexList().entries;
      const msrs = new Msrs(listed.map((index) => ({ index })));
      expect(kvm.getMsrs(msrs)).toBe(listed.length);
      expect(msrs.entries.map((e) => e.index)).toEqual(listed);
      for (const e of msrs.entries) expect(typeof e.data).toBe('bigint');
      const again = new Msrs(listed.map((index) => ({ index })));
      kvm.getMsrs(again);
      expect(again.entries).toEqual(msrs.entries);
      expect(kvm.getMsrs(new Msrs([{ index: listed[0] }, { index: 0x1234_5678 }, { index: listed[0] }]))).toBe(1);
      expect(kvm.getMsrs(new Msrs([{ index: 0x1234_5678 }]))).toBe(0);
      expect(kvm.getMsrs(new Msrs([]))).toBe(0);
      expectCode(() => kvm.getMsrs([{ index: listed[0] }] as never), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    });

    it('vCPU setMsrs/getMsrs process every entry and round-trip the data', () => {
      const vcpu = kvm.createVm().createVcpu(0);
      expect(
        vcpu.setMsrs(
          new Msrs([
            { index: 0x174, data: 0n },
            { index: 0x175, data: 1n },
          ]),
        ),
      ).toBe(2);
      const read = new Msrs([{ index: 0x174 }, { index: 0x175 }]);
      expect(vcpu.getMsrs(read)).toBe(2);
      expect(read.entries).toEqual([
        { index: 0x174, data: 0n },
        { index: 0x175, data: 1n },
      ]);
      expect(vcpu.setMsrs([{ index: 0x175, data: 0x1234n }])).toBe(1);
    });

    it('stops at the first MSR that fails: the count says how many were done', () => {
      const vcpu = kvm.createVm().createVcpu(0);
      vcpu.setMsrs([{ index: 0x175, data: 7n }]);
      const read = new Msrs([{ index: 0x174 }, { index: 0x1234_5678 }, { index: 0x175, data: 99n }]);
      expect(vcpu.getMsrs(read)).toBe(1);
      expect(read.entries[2].data).toBe(99n); // not reached: left as given
      expect(
        vcpu.setMsrs([
          { index: 0x175, data: 8n },
          { index: 0x1234_5678, data: 1n },
          { index: 0x174, data: 5n },
        ]),
      ).toBe(1);
      const check = new Msrs([{ index: 0x175 }, { index: 0x174 }]);
      vcpu.getMsrs(check);
      expect(check.entries.map((e) => e.data)).toEqual([8n, 0n]);
      // EFER with reserved bits set is refused
      expect(
        vcpu.setMsrs([
          { index: 0x175, data: 9n },
          { index: 0xc000_0080, data: 0xfffn },
        ]),
      ).toBe(1);
    });

    it('256 entries (allowed by Msrs, as by kvm-bindings) is E2BIG from the kernel (MAX_IO_MSRS); 255 works', () => {
      const vcpu = kvm.createVm().createVcpu(0);
      const of = (n: number) => new Msrs(Array.from({ length: n }, () => ({ index: 0x174 })));
      expect(vcpu.getMsrs(of(255))).toBe(255);
      expectKvmError(() => vcpu.getMsrs(of(256)), 'E2BIG', 'KVM_GET_MSRS');
      expectKvmError(() => vcpu.setMsrs(of(256)), 'E2BIG', 'KVM_SET_MSRS');
      expectKvmError(() => kvm.getMsrs(of(256)), 'E2BIG', 'KVM_GET_MSRS');
      expectCode(() => of(257), 'RangeError', 'ERR_OUT_OF_RANGE');
    });
  });

  it('use after close throws ERR_KVM_CLOSED', () => {
    const vm = kvm.createVm();
    const vcpu = vm.createVcpu(0);
    vcpu.close();
    expectCode(() => vcpu.getCpuid2(4), 'KvmClosedError', 'ERR_KVM_CLOSED');
    expectCode(() => vcpu.getMsrs(new Msrs([{ index: 0x174 }])), 'KvmClosedError', 'ERR_KVM_CLOSED');
    kvm.close();
    expectCode(() => kvm.getSupportedCpuid(4), 'KvmClosedError', 'ERR_KVM_CLOSED');
    expectCode(() => kvm.getMsrIndexList(), 'KvmClosedError', 'ERR_KVM_CLOSED');
  });
});
