/**
 * The MP tables, decoded the way Linux's mpparse.c reads them: signature, checksums, lengths,
 * entry counts and contents.
 */
import { IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR, MP_SIZES, buildMpTable } from '../../src/vmm/mptable';

const sum = (b: Uint8Array) => b.reduce((s, x) => (s + x) & 0xff, 0);

function decode(b: Uint8Array, at = MPTABLE_ADDR) {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const sig = (o: number, n: number) => Buffer.from(b.subarray(o, o + n)).toString('latin1');
  const physptr = v.getUint32(4, true);
  const t = physptr - at;
  const length = v.getUint16(t + 4, true);
  const count = v.getUint16(t + 34, true);
  const entries: Array<Record<string, number | string>> = [];
  let o = t + MP_SIZES.header;
  for (let i = 0; i < count; i++) {
    const type = b[o];
    if (type === 0) {
      entries.push({ type: 'cpu', apicid: b[o + 1], flags: b[o + 3] });
      o += MP_SIZES.processor;
    } else if (type === 1) {
      entries.push({ type: 'bus', name: sig(o + 2, 6) });
      o += 8;
    } else if (type === 2) {
      entries.push({ type: 'ioapic', id: b[o + 1], flags: b[o + 3], addr: v.getUint32(o + 4, true) });
      o += 8;
    } else if (type === 3 || type === 4) {
      entries.push({
        type: type === 3 ? 'int' : 'lint',
        irqtype: b[o + 1],
        srcirq: b[o + 5],
        dst: b[o + 6],
        pin: b[o + 7],
      });
      o += 8;
    } else throw new Error(`entry type ${type}`);
  }
  return {
    floating: {
      sig: sig(0, 4),
      length: b[8],
      spec: b[9],
      feature1: b[11],
      feature2: b[12],
      sum: sum(b.subarray(0, 16)),
    },
    table: {
      sig: sig(t, 4),
      length,
      spec: b[t + 6],
      lapic: v.getUint32(t + 36, true),
      sum: sum(b.subarray(t, t + length)),
      end: o - t,
    },
    physptr,
    entries,
  };
}

describe('buildMpTable', () => {
  it.each([1, 2, 4, 64])('%i CPUs: signatures, checksums, lengths and entries as Linux reads them', (cpus) => {
    const b = buildMpTable(cpus);
    const d = decode(b);
    expect(d.floating).toEqual({ sig: '_MP_', length: 1, spec: 4, feature1: 0, feature2: 0, sum: 0 });
    expect(d.physptr).toBe(MPTABLE_ADDR + 16);
    expect(d.table).toMatchObject({ sig: 'PCMP', spec: 4, lapic: LAPIC_ADDR, sum: 0 });
    expect(d.table.end).toBe(d.table.length); // the entries fill the table exactly
    expect(b.length).toBe(16 + d.table.length);
    const cpusSeen = d.entries.filter((e) => e.type === 'cpu');
    expect(cpusSeen).toEqual(
      Array.from({ length: cpus }, (_, i) => ({ type: 'cpu', apicid: i, flags: i === 0 ? 3 : 1 })),
    );
    expect(d.entries.filter((e) => e.type === 'bus')).toEqual([{ type: 'bus', name: 'ISA   ' }]);
    expect(d.entries.filter((e) => e.type === 'ioapic')).toEqual([
      { type: 'ioapic', id: cpus, flags: 1, addr: IOAPIC_ADDR },
    ]);
    expect(d.entries.filter((e) => e.type === 'int')).toEqual(
      Array.from({ length: 16 }, (_, i) => ({ type: 'int', irqtype: 0, srcirq: i, dst: cpus, pin: i })),
    );
    expect(d.entries.filter((e) => e.type === 'lint')).toEqual([
      { type: 'lint', irqtype: 3, srcirq: 0, dst: 0xff, pin: 0 },
      { type: 'lint', irqtype: 1, srcirq: 0, dst: 0xff, pin: 1 },
    ]);
  });

  it('refuses a CPU count or an address it cannot describe', () => {
    for (const n of [0, 65, 1.5, NaN]) expect(() => buildMpTable(n)).toThrow(RangeError);
    expect(() => buildMpTable(2, 0x9fc01)).toThrow(/16-byte aligned/);
    expect(() => buildMpTable(2, 0x100000)).toThrow(RangeError);
  });
});
