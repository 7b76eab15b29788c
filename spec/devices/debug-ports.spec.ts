import type { TestScheduler } from 'rxjs/testing';
import { DebugPorts, debugPorts } from '../../src/devices/debug-ports';
import { bytesOf, hlt, ioIn, ioOut, newTestScheduler } from '../helpers/exits';
import { expectCode } from '../helpers/kvm';

const u8 = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, 'latin1'));

/** debugPorts */
describe('debugPorts', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should record POST codes at 0x80, print debugcon bytes from 0x402, and pass other exits through', () => {
    const codes: number[] = [];
    const printed: string[] = [];
    const s = {
      a: ioOut(0x80, [0x11]),
      b: ioOut(0x402, [0x48]),
      c: ioOut(0x402, [0x69]),
      d: ioOut(0x402, u8('OK\n'), 3), // rep outsb
      e: ioIn(0x80),
      f: ioIn(0x402),
      g: ioOut(0x80, [0x22]),
      i: ioOut(0xe9, [0x21]),
      x: hlt(),
    };
    const dbg = debugPorts({
      onPostCode: (c) => codes.push(c),
      onDebugOutput: (b) => printed.push(Buffer.from(b).toString('latin1')),
    });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-d-e-f-g-i-x-|', s);
      const e1subs = '  ^------------------!';
      const expected = '---------------i-x-|';
      const output = '  ---b-c-d------------';

      expectObservable(dbg.device.output$).toBe(output, { b: u8('H'), c: u8('i'), d: u8('OK\n') });
      expectObservable(e1.pipe(dbg)).toBe(expected, { i: s.i, x: s.x });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(codes).toEqual([0x11, 0x22]);
    expect(printed).toEqual(['H', 'i', 'OK\n']);
    expect(bytesOf(s.e.data)).toEqual([0xff]);
    expect(bytesOf(s.f.data)).toEqual([0xe9]);
    expect(dbg.device.lastPostCode).toBe(0x22);
    expect(dbg.device.postCodeCount).toBe(2);
  });

  it('should use other ports when configured (Bochs debug port 0xe9)', () => {
    const a = ioOut(0xe9, [0x41]);
    const b = ioIn(0xe9, 2);
    const c = ioOut(0x402, [0x42]);
    const dbg = debugPorts({ debugconPort: 0xe9 });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-|', { a, b, c });
      const e1subs = '  ^------!';
      const expected = '-----c-|';

      expectObservable(dbg.device.output$).toBe('-a------', { a: u8('A') });
      expectObservable(e1.pipe(dbg)).toBe(expected, { c });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(bytesOf(b.data)).toEqual([0xe9, 0xff]);
  });

  it('should take only the low byte of wider writes', () => {
    const dev = new DebugPorts();
    dev.ioWrite(0x80, 4, 0x1234_5678);
    dev.ioWrite(0x402, 2, 0x4142);
    const out: number[][] = [];
    dev.output$.subscribe((b) => out.push(bytesOf(b)));
    dev.afterExit();
    expect(dev.lastPostCode).toBe(0x78);
    expect(out).toEqual([[0x42]]);
    expect(dev.ioRead(0x80, 4)).toBe(0xffff_ffff);
    expect(dev.ioRead(0x402, 4)).toBe(0xffff_ffe9);
  });

  it('should check its options', () => {
    expectCode(() => debugPorts({ postPort: 0x10000 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => debugPorts({ debugconPort: 0x80 }), 'TypeError', 'ERR_INVALID_ARG_VALUE');
    expectCode(() => debugPorts({ onDebugOutput: {} as never }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
  });
});
