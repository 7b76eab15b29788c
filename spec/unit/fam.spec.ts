/**
 * The flexible-array collections: kernel byte layout (header count + entries, from the generated
 * layouts), decoding, the maximum (kvm-bindings' FamStructWrapper refuses to grow past it), and
 * argument checks. No kernel involved.
 */
import {
  famBuffer,
  famCount,
  CpuId,
  KVM_MAX_CPUID_ENTRIES,
  KVM_MAX_MSR_ENTRIES,
  KVM_MAX_REG_LIST_ENTRIES,
  MsrList,
  Msrs,
  RegList,
} from '../../src/wrappers/fam';
import { expectCode } from '../helpers/kvm';

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

describe('CpuId', () => {
  const leaf0 = { function: 0, eax: 0xd, ebx: 0x4b4d564b, ecx: 0x564b4d56, edx: 0x4d };

  it('encodes struct kvm_cpuid2: nent, padding, then 40-byte entries', () => {
    const c = new CpuId([leaf0, { function: 7, index: 1, flags: 1, eax: 0x20 }]);
    expect(c.length).toBe(2);
    const b = c.encode();
    expect(b.length).toBe(8 + 2 * 40);
    const v = view(b);
    expect(v.getUint32(0, true)).toBe(2);
    expect(v.getUint32(4, true)).toBe(0);
    expect([
      v.getUint32(8, true),
      v.getUint32(8 + 12, true),
      v.getUint32(8 + 16, true),
      v.getUint32(8 + 20, true),
      v.getUint32(8 + 24, true),
    ]).toEqual([0, 0xd, 0x4b4d564b, 0x564b4d56, 0x4d]);
    expect([v.getUint32(48, true), v.getUint32(52, true), v.getUint32(56, true), v.getUint32(60, true)]).toEqual([
      7, 1, 1, 0x20,
    ]);
  });

  it('fills defaults and decodes back to equal plain objects', () => {
    const c = new CpuId([leaf0]);
    expect(c.entries).toEqual([
      { function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0x4b4d564b, ecx: 0x564b4d56, edx: 0x4d },
    ]);
    expect(CpuId.decode(c.encode()).entries).toEqual(c.entries);
    expect(CpuId.decode(c.encode(10)).length).toBe(10); // capacity: nent = 10, zero entries after the first
  });

  it('encode(capacity) reserves room and writes the capacity as nent', () => {
    const b = new CpuId([leaf0]).encode(4);
    expect(b.length).toBe(8 + 4 * 40);
    expect(famCount('CpuId', b)).toBe(4);
    expectCode(() => new CpuId([leaf0, leaf0]).encode(1), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => new CpuId().encode(257), 'RangeError', 'ERR_OUT_OF_RANGE');
  });

  it('holds at most KVM_MAX_CPUID_ENTRIES (256): more is ERR_OUT_OF_RANGE, as FamStructWrapper refuses', () => {
    expect(KVM_MAX_CPUID_ENTRIES).toBe(256);
    const full = new CpuId(Array.from({ length: 256 }, (_, i) => ({ function: i })));
    expect(full.encode().length).toBe(8 + 256 * 40);
    expectCode(() => full.push({ function: 1 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => new CpuId(Array.from({ length: 257 }, () => ({ function: 0 }))), 'RangeError', 'ERR_OUT_OF_RANGE');
    // growing the live array past the maximum is caught when encoding
    full.entries.push({ function: 0, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0 });
    expectCode(() => full.encode(), 'RangeError', 'ERR_OUT_OF_RANGE');
  });

  it('checks entries', () => {
    expectCode(() => new CpuId([{ function: -1 }]), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => new CpuId([{ function: 0, eax: 2 ** 32 }]), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => new CpuId([{ function: 0, bogus: 1 } as never]), 'TypeError', 'ERR_INVALID_ARG_VALUE');
    expectCode(() => new CpuId([null as never]), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(() => new CpuId(5 as never), 'TypeError', 'ERR_INVALID_ARG_VALUE');
  });

  it('decode refuses a count larger than the buffer holds', () => {
    const b = new CpuId([leaf0]).encode();
    view(b).setUint32(0, 2, true);
    expectCode(() => CpuId.decode(b), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => CpuId.decode(new Uint8Array(4)), 'RangeError', 'ERR_OUT_OF_RANGE');
  });
});

describe('Msrs', () => {
  it('encodes struct kvm_msrs: nmsrs, pad, then {index u32, reserved u32, data u64}', () => {
    const m = new Msrs([{ index: 0x174, data: 0x1122334455667788n }, { index: 0x175 }]);
    expect(m.entries).toEqual([
      { index: 0x174, data: 0x1122334455667788n },
      { index: 0x175, data: 0n },
    ]);
    const b = m.encode();
    const v = view(b);
    expect(b.length).toBe(8 + 2 * 16);
    expect([
      v.getUint32(0, true),
      v.getUint32(8, true),
      v.getUint32(12, true),
      v.getBigUint64(16, true),
      v.getUint32(24, true),
    ]).toEqual([2, 0x174, 0, 0x1122334455667788n, 0x175]);
    expect(Msrs.decode(b).entries).toEqual(m.entries);
  });

  it('accepts safe-integer data and refuses out-of-range values', () => {
    expect(new Msrs([{ index: 1, data: 5 }]).entries[0].data).toBe(5n);
    expectCode(() => new Msrs([{ index: 1, data: -1n }]), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => new Msrs([{ index: 2 ** 32 }]), 'RangeError', 'ERR_OUT_OF_RANGE');
  });

  it('holds at most KVM_MAX_MSR_ENTRIES (256): more is ERR_OUT_OF_RANGE', () => {
    expect(KVM_MAX_MSR_ENTRIES).toBe(256);
    const m = new Msrs(Array.from({ length: 256 }, (_, i) => ({ index: i })));
    expectCode(() => m.push({ index: 1 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => new Msrs(Array.from({ length: 257 }, (_, i) => ({ index: i }))), 'RangeError', 'ERR_OUT_OF_RANGE');
    expect(new Msrs().push({ index: 0x10 }).entries).toEqual([{ index: 0x10, data: 0n }]);
  });
});

describe('MsrList', () => {
  it('encodes struct kvm_msr_list: nmsrs then u32 indices, and decodes back', () => {
    const l = new MsrList([0x174, 0xc0000080]);
    const b = l.encode();
    expect(Array.from(new Uint32Array(b.buffer))).toEqual([2, 0x174, 0xc0000080]);
    expect(MsrList.decode(b).entries).toEqual([0x174, 0xc0000080]);
    const room = famBuffer('MsrList', 256);
    expect(room.length).toBe(4 + 256 * 4);
    expect(famCount('MsrList', room)).toBe(256);
  });

  it('refuses more than 256 indices and non-u32 values', () => {
    expectCode(() => new MsrList(Array.from({ length: 257 }, (_, i) => i)), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => new MsrList([-1]), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => new MsrList(['1' as never]), 'TypeError', 'ERR_INVALID_ARG_TYPE');
  });
});

describe('RegList', () => {
  it('encodes struct kvm_reg_list: u64 n then u64 ids', () => {
    const r = new RegList([0x6030000000100040n, 1n]);
    expect(r.capacity).toBe(2);
    const b = r.encode();
    expect(Array.from(new BigUint64Array(b.buffer))).toEqual([2n, 0x6030000000100040n, 1n]);
    expect(RegList.decode(b).entries).toEqual(r.entries);
  });

  it('a capacity-only list is empty, with room for the kernel; at most 500', () => {
    const r = new RegList(3);
    expect([r.length, r.capacity]).toEqual([0, 3]);
    expect(famBuffer('RegList', r.capacity).length).toBe(8 + 3 * 8);
    expect(KVM_MAX_REG_LIST_ENTRIES).toBe(500);
    expectCode(() => new RegList(501), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => new RegList([-1n]), 'RangeError', 'ERR_OUT_OF_RANGE');
  });
});
