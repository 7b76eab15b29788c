import { Subject } from 'rxjs';
import type { TestScheduler } from 'rxjs/testing';
import { legacyPc } from '../../src/devices/legacy-pc';
import * as api from '../../src/index';
import { bytesOf, hlt, ioIn, ioOut, mmioRead, newTestScheduler } from '../helpers/exits';
import { expectCode } from '../helpers/kvm';

/** legacyPc */
describe('legacyPc', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should answer every legacy device in one stage, pass the rest on, and complete at an i8042 reset', () => {
    const irq = new Subject<boolean>();
    const resets: number[] = [];
    const s = {
      a: ioOut(0x3f8, [0x48]), // COM1 THR
      b: ioIn(0x3fd), // COM1 LSR
      c: ioOut(0x70, [0x0d]),
      d: ioIn(0x71), // CMOS status D
      e: ioIn(0xcfc, 4), // PCI: no device
      f: ioOut(0x80, [0x55]), // POST code
      g: ioOut(0x402, [0x21]), // debugcon
      i: ioIn(0x64), // i8042 status
      m: mmioRead(0xfee0_0000n), // not a port: passed on
      p: ioIn(0x2f8), // COM2 absent: passed on
      r: ioOut(0x64, [0xfe]), // reset
      x: hlt(),
    };
    const pc = legacyPc({
      com1: { irq: (l) => irq.next(l) },
      i8042: { onReset: () => resets.push(testScheduler.now()) },
      cmos: { memorySize: 64 * 1024 * 1024 },
    });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-d-e-f-g-i-m-p-r-x-|', s);
      const e1subs = '  ^--------------------!    ';
      const expected = '-----------------m-p-|    ';

      expectObservable(pc.device.com1!.output$).toBe('-a------------------------', { a: Uint8Array.of(0x48) });
      expectObservable(pc.device.debug!.output$).toBe('-------------g------------', { g: Uint8Array.of(0x21) });
      expectObservable(irq).toBe('--------------------------');
      expectObservable(e1.pipe(pc)).toBe(expected, { m: s.m, p: s.p });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(bytesOf(s.b.data)).toEqual([0x60]);
    expect(bytesOf(s.d.data)).toEqual([0x80]);
    expect(bytesOf(s.e.data)).toEqual([0xff, 0xff, 0xff, 0xff]);
    expect(bytesOf(s.i.data)).toEqual([0x14]);
    expect(pc.device.debug!.lastPostCode).toBe(0x55);
    expect(resets).toEqual([21]);
    expect(pc.device.i8042!.resetRequested).toBe(true);
  });

  it('should leave out the devices set to false, and subscribe com1.input$ while subscribed', () => {
    const s = { a: ioIn(0x60), b: ioIn(0xcf8, 4), c: ioIn(0x3f8), d: ioIn(0x3fd), e: ioIn(0x3f8) };
    testScheduler.run(({ hot, cold, expectObservable, expectSubscriptions }) => {
      const input = cold('  --x--------', { x: 'k' });
      const inputsubs = '   ^--------! ';
      const pc = legacyPc({ i8042: false, pci: false, com1: { input$: input } });
      const e1 = hot('      -a-b-c-d-e-|', s);
      const e1subs = '      ^--------!  ';
      const unsub = '       ---------!  ';
      const expected = '    -a-b-------';

      expectObservable(e1.pipe(pc), unsub).toBe(expected, { a: s.a, b: s.b });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(input.subscriptions).toBe(inputsubs);
      expect(pc.device.i8042).toBeUndefined();
      expect(pc.device.pci).toBeUndefined();
    });
    expect([s.c.data[0], s.d.data[0]]).toEqual([0x6b, 0x60]);
    expect(s.e.data[0]).toBe(0xcc); // arrived as the stage was unsubscribed: not answered
  });

  it('should refuse two devices on one port and invalid options', () => {
    expectCode(() => legacyPc({ com1: { base: 0x60 } }), 'TypeError', 'ERR_INVALID_ARG_VALUE');
    expectCode(() => legacyPc({ debug: { postPort: 0x71 } }), 'TypeError', 'ERR_INVALID_ARG_VALUE');
    expectCode(() => legacyPc({ cmos: 5 as never }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(() => legacyPc({ pci: 'yes' as never }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expect(() => legacyPc({ com1: { base: 0x2f8 }, debug: { postPort: 0x3f8 } })).not.toThrow();
  });

  it('should be exported from the package entry point', () => {
    expect(typeof api.legacyPc).toBe('function');
    expect(typeof api.uart16550).toBe('function');
    expect(typeof api.Uart16550).toBe('function');
    expect(typeof api.i8042).toBe('function');
    expect(typeof api.cmos).toBe('function');
    expect(typeof api.pciAbsent).toBe('function');
    expect(typeof api.debugPorts).toBe('function');
  });
});
