import type { TestScheduler } from 'rxjs/testing';
import { Cmos, cmos } from '../../src/devices/cmos';
import type { VcpuExit } from '../../src/wrappers/vcpu-exit';
import { hlt, ioIn, ioOut, newTestScheduler } from '../helpers/exits';
import { expectCode } from '../helpers/kvm';

/** Selects CMOS register `reg` (bit 7 = NMI disable). */
const sel = (reg: number): ReturnType<typeof ioOut> => ioOut(0x70, [reg]);
/** Reads the selected register. */
const rd = (): ReturnType<typeof ioIn> => ioIn(0x71);
/** Writes the selected register. */
const wr = (v: number): ReturnType<typeof ioOut> => ioOut(0x71, [v]);

const LEAP_EVE = new Date('2024-02-29T23:59:58.250Z'); // a Thursday
const MIB = 1024 * 1024;

/** cmos */
describe('cmos', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should read the time registers in BCD, 24-hour, from the clock, and pass other exits through', () => {
    const rtc = cmos({ clock: () => LEAP_EVE });
    const regs = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32, 0x0a, 0x0b, 0x0c, 0x0d];
    const reads = regs.map(() => rd());
    const values: Record<string, VcpuExit> = { x: hlt() };
    const keys = 'abcdefghijkl';
    regs.forEach((reg, i) => {
      values[keys[i].toUpperCase()] = sel(reg);
      values[keys[i]] = reads[i];
    });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -AaBbCcDdEeFfGgHhIiJjKkLl-x-|', values);
      const e1subs = '  ^---------------------------!';
      const expected = '--------------------------x-|';

      expectObservable(e1.pipe(rtc)).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(reads.map((e) => e.data[0])).toEqual([
      0x58, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24, 0x20, 0x26, 0x02, 0x00, 0x80,
    ]);
  });

  it('should switch to binary with status B bit 2 and to 12-hour mode with bit 1 clear', () => {
    const rtc = cmos({ clock: () => LEAP_EVE });
    const s = {
      a: sel(0x0b),
      b: wr(0x06),
      c: sel(0x00),
      d: rd(),
      e: sel(0x04),
      f: rd(), // binary, 24h
      g: sel(0x0b),
      h: wr(0x04),
      i: sel(0x04),
      j: rd(), // binary, 12h
      k: sel(0x0b),
      l: wr(0x00),
      m: sel(0x04),
      n: rd(),
      o: sel(0x0b),
      p: rd(), // BCD, 12h
    };
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -abcdef-ghij-klmnop-|', s);
      const e1subs = '  ^-------------------!';
      const expected = '--------------------|';

      expectObservable(e1.pipe(rtc)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect([s.d.data[0], s.f.data[0]]).toEqual([58, 23]);
    expect(s.j.data[0]).toBe(0x80 | 11); // 11 PM
    expect(s.n.data[0]).toBe(0x91); // BCD 11, PM
    expect(s.p.data[0]).toBe(0x00);
  });

  it('should mask the NMI bit out of the index, read 0xff at the index port and keep RAM bytes', () => {
    const rtc = cmos();
    const s = {
      a: sel(0x80 | 0x40),
      b: wr(0xab),
      c: ioIn(0x70),
      d: sel(0x40),
      e: rd(),
      f: sel(0x7f),
      g: wr(0x11),
      h: sel(0xff),
      i: rd(),
    };
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -abc-de-fghi-|', s);
      const e1subs = '  ^------------!';
      const expected = '-------------|';

      expectObservable(e1.pipe(rtc)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      testScheduler.schedule(() => expect(rtc.device.nmiDisabled).toBe(true), 2);
    });
    expect(s.c.data[0]).toBe(0xff);
    expect(s.e.data[0]).toBe(0xab);
    expect(s.i.data[0]).toBe(0x11); // 0xff selects 0x7f with NMI disabled
    expect(rtc.device.nmiDisabled).toBe(true);
    expect(rtc.device.index).toBe(0x7f);
  });

  it.each<[string, number | bigint, Record<number, number>]>([
    ['512 KiB', 512 * 1024, { 0x15: 0x00, 0x16: 0x02, 0x17: 0, 0x18: 0, 0x34: 0, 0x35: 0, 0x5b: 0 }],
    [
      '32 MiB',
      32 * MIB,
      {
        0x15: 0x80,
        0x16: 0x02,
        0x17: 0x00,
        0x18: 0x7c,
        0x30: 0x00,
        0x31: 0x7c,
        0x34: 0x00,
        0x35: 0x01,
        0x5b: 0,
        0x5c: 0,
        0x5d: 0,
      },
    ],
    [
      '6 GiB (3 GiB above 4 GiB)',
      6n * 1024n * BigInt(MIB),
      { 0x17: 0xff, 0x18: 0xff, 0x30: 0xff, 0x31: 0xff, 0x34: 0x00, 0x35: 0xbf, 0x5b: 0x00, 0x5c: 0xc0, 0x5d: 0x00 },
    ],
  ])('should report %s in the memory size registers', (_name, memorySize, expected) => {
    const dev = new Cmos({ memorySize });
    const got: Record<number, number> = {};
    for (const reg of Object.keys(expected).map(Number)) {
      dev.ioWrite(0x70, 1, reg);
      got[reg] = dev.ioRead(0x71, 1);
    }
    expect(got).toEqual(expected);
  });

  it('should move the guest clock when the guest sets the time, ignoring invalid values', () => {
    let now = LEAP_EVE.getTime();
    const dev = new Cmos({ clock: () => new Date(now) });
    const set = (reg: number, v: number): void => {
      dev.ioWrite(0x70, 1, reg);
      dev.ioWrite(0x71, 1, v);
    };
    const get = (reg: number): number => (dev.ioWrite(0x70, 1, reg), dev.ioRead(0x71, 1));
    set(0x02, 0x30); // minutes := 30
    set(0x04, 0x99); // invalid BCD hour: ignored
    set(0x00, 0x5a); // not BCD: ignored
    expect([get(0x04), get(0x02), get(0x00)]).toEqual([0x23, 0x30, 0x58]);
    now += 3000; // the clock runs on from the new time
    expect([get(0x07), get(0x04), get(0x02), get(0x00)]).toEqual([0x29, 0x23, 0x31, 0x01]); // 23:30:58.25 + 3 s
    set(0x06, 0x01); // day of week is computed: ignored
    expect(get(0x06)).toBe(0x05);
  });

  it('should split wider accesses into byte accesses', () => {
    const dev = new Cmos({ clock: () => LEAP_EVE });
    dev.ioWrite(0x70, 2, 0x4409); // 0x09 to the index port, then 0x44 to the data port: year := 44
    expect(dev.index).toBe(0x09);
    expect(dev.ioRead(0x70, 2)).toBe(0x44ff); // index port 0xff, year 44 BCD
    expect(dev.ioRead(0x71, 4)).toBe(0xffffff44);
  });

  it('should check its options', () => {
    expectCode(() => cmos({ memorySize: -1 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => cmos({ clock: 'now' as never }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(() => cmos({ lowMemoryLimit: '3G' as never }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
  });

  it('should not throw for a clock that returns an invalid date', () => {
    const dev = new Cmos({ clock: () => new Date(NaN) });
    dev.ioWrite(0x70, 1, 0x09);
    expect(dev.ioRead(0x71, 1)).toBe(0x70); // the epoch
    expect(() => dev.ioWrite(0x71, 1, 0x99)).not.toThrow();
  });
});
