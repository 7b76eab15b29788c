import type { TestScheduler } from 'rxjs/testing';
import { PciAbsent, pciAbsent } from '../../src/devices/pci-absent';
import { bytesOf, hlt, ioIn, ioOut, newTestScheduler } from '../helpers/exits';

const dword = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];

/** pciAbsent */
describe('pciAbsent', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should pass Linux\'s pci_check_type1 address test and answer "no device" to the sanity check', () => {
    const s = {
      a: ioOut(0xcfb, [0x01]), // outb(0x01, 0xCFB)
      b: ioIn(0xcf8, 4), // tmp = inl(0xCF8)
      c: ioOut(0xcf8, dword(0x8000_0000)),
      d: ioIn(0xcf8, 4), // == 0x80000000
      e: ioOut(0xcf8, dword(0x8000_0000 | (0 << 16) | (0 << 8) | 0x08)), // class code of 00:00.0
      f: ioIn(0xcfc, 2),
      g: ioIn(0xcfe, 2),
      i: ioIn(0xcfc, 4),
      j: ioOut(0xcfc, dword(0x1234_5678)), // ignored
      k: ioIn(0xcff, 1),
      l: ioOut(0xcf8, dword(0)), // outl(tmp, 0xCF8)
      x: hlt(),
    };
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -abcd-efgi-jkl-x-|', s);
      const e1subs = '  ^----------------!';
      const expected = '---------------x-|';

      expectObservable(e1.pipe(pciAbsent())).toBe(expected, { x: s.x });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(bytesOf(s.b.data)).toEqual([0, 0, 0, 0]);
    expect(bytesOf(s.d.data)).toEqual([0, 0, 0, 0x80]);
    expect(bytesOf(s.f.data)).toEqual([0xff, 0xff]);
    expect(bytesOf(s.g.data)).toEqual([0xff, 0xff]);
    expect(bytesOf(s.i.data)).toEqual([0xff, 0xff, 0xff, 0xff]);
    expect(bytesOf(s.k.data)).toEqual([0xff]);
  });

  it("should fail Linux's pci_check_type2 test: byte accesses to 0xCF8-0xCFB are not CONFIG_ADDRESS", () => {
    const s = {
      a: ioOut(0xcfb, [0]),
      b: ioOut(0xcf8, [0]),
      c: ioOut(0xcfa, [0]),
      d: ioIn(0xcf8),
      e: ioIn(0xcfa),
      f: ioIn(0xcf8, 2),
      g: ioIn(0xcf8, 4),
    };
    const pci = pciAbsent();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -abcdefg-|', s);
      const e1subs = '  ^--------!';
      const expected = '---------|';

      expectObservable(e1.pipe(pci)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect([s.d.data[0], s.e.data[0]]).toEqual([0xff, 0xff]);
    expect(bytesOf(s.f.data)).toEqual([0xff, 0xff]);
    expect(bytesOf(s.g.data)).toEqual([0, 0, 0, 0]); // CONFIG_ADDRESS untouched by the byte writes
    expect(pci.device.address).toBe(0);
  });

  it('should read back any dword written to CONFIG_ADDRESS, all 32 bits', () => {
    const dev = new PciAbsent();
    for (const v of [0xffff_ffff, 0x7f00_0003, 0x8000_fffc, 1]) {
      dev.ioWrite(0xcf8, 4, v);
      expect(dev.ioRead(0xcf8, 4)).toBe(v);
    }
    expect(dev.ioRead(0xcfd, 1)).toBe(0xff);
  });

  it('should pass ports outside 0xCF8-0xCFF through', () => {
    const a = ioIn(0xcf7, 4);
    const b = ioOut(0xd00, [1]);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-|', { a, b });
      const e1subs = '  ^----!';
      const expected = '-a-b-|';

      expectObservable(e1.pipe(pciAbsent())).toBe(expected, { a, b });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });
});
