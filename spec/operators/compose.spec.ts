import type { TestScheduler } from 'rxjs/testing';
import { failOnUnhandled, onIoIn, onIoOut, onMmioRead, untilHalt } from '../../src/runtime/operators/index';
import { collectHolds } from '../../src/testing/marbles';
import { bytesOf, hlt, ioIn, ioOut, mmioRead, newTestScheduler } from '../helpers/exits';

/** Device models composed in one pipeline. */
describe('composed handler operators', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should route each exit to its device and stop at Hlt', () => {
    const out = ioOut(0x3f8, [0x48]);
    const lsr = ioIn(0x3fd);
    const pit = ioIn(0x40);
    const apic = mmioRead(0xfee0_0020n, 4);
    const written: number[] = [];
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -o-l-p-m-h-o-|', { o: out, l: lsr, p: pit, m: apic, h: hlt() });
      const e1subs = '  ^--------!    ';
      const expected = '---------|    ';

      const pipeline = e1.pipe(
        untilHalt(),
        onIoOut(0x3f8, (exit) => void written.push(...exit.data)), // COM1 THR
        onIoIn([0x3f8, 0x3ff], (exit) => (exit.port === 0x3fd ? 0x60 : 0)), // COM1 registers
        onIoIn(0x40, () => 0x12), // PIT counter 0
        onMmioRead({ from: 0xfee0_0000n, size: 0x1000 }, (_exit, offset) => (offset === 0x20 ? 0x0100_0000 : 0)), // LAPIC ID
        failOnUnhandled(),
      );
      expectObservable(pipeline).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(written).toEqual([0x48]);
    expect([bytesOf(lsr.data), bytesOf(pit.data), bytesOf(apic.data)]).toEqual([[0x60], [0x12], [0, 0, 0, 1]]);
  });

  it('should let the first matching operator win and report the rest as unhandled', () => {
    const a = ioIn(0x3fd);
    const b = ioIn(0x61);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-|', { a, b });
      const e1subs = '  ^--!  ';
      const expected = '---#  ';

      const pipeline = e1.pipe(
        onIoIn(0x3fd, () => 1),
        onIoIn([0x3f8, 0x3ff], () => 2),
        failOnUnhandled(),
      );
      expectObservable(pipeline).toBe(expected, undefined, {
        name: 'UnhandledExitError',
        code: 'ERR_KVM_UNHANDLED_EXIT',
        message: 'unhandled IoIn exit: port 0x61, size 1',
      });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(a.data[0]).toBe(1);
  });

  it('should keep later exits flowing while an earlier device is pending, and tear both down on unsubscribe', () => {
    const a = ioOut(0x3f8, [0x41]);
    const b = ioIn(0x71);
    const holds: Array<PromiseLike<unknown>> = [];
    testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-------|', { a, b });
      const unsub = '   ------!     ';
      const e1subs = '  ^-----!     ';
      const tx = cold('  ------|');
      const txsubs = '  -^----!     ';
      const rtc = cold('   --x|', { x: 0x59 });
      const rtcsubs = ' ---^-!      ';
      const expected = '-------     ';

      const pipeline = e1.pipe(
        collectHolds(holds),
        onIoOut(0x3f8, () => tx),
        onIoIn(0x71, () => rtc),
        failOnUnhandled(),
      );
      expectObservable(pipeline, unsub).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(tx.subscriptions).toBe(txsubs);
      expectSubscriptions(rtc.subscriptions).toBe(rtcsubs);
    });
    expect(holds).toHaveLength(2);
    expect(b.data[0]).toBe(0x59);
  });
});
