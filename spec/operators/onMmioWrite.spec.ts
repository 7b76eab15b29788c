import type { TestScheduler } from 'rxjs/testing';
import { collectHolds } from '../../src/testing/marbles';
import { onMmioWrite } from '../../src/runtime/operators/onMmioWrite';
import { hlt, mmioRead, mmioWrite, newTestScheduler } from '../helpers/exits';

/** onMmioWrite */
describe('onMmioWrite', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should consume MmioWrite exits inside the range and pass every other exit through', () => {
    const a = mmioWrite(0xfee0_00b0n, [0, 0, 0, 0]);
    const b = mmioWrite(0xfee0_1000n, [1]);
    const r = mmioRead(0xfee0_00b0n, 4);
    const h = hlt();
    const seen: Array<[number, number[]]> = [];
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-r-h-|', { a, b, r, h });
      const e1subs = '  ^--------!';
      const expected = '---b-r-h-|';

      const result = e1.pipe(
        onMmioWrite(
          { from: 0xfee0_0000n, size: 0x1000n },
          (exit, offset) => void seen.push([offset, Array.from(exit.data)]),
        ),
      );
      expectObservable(result).toBe(expected, { b, r, h });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(seen).toEqual([[0xb0, [0, 0, 0, 0]]]);
  });

  it('should hold the vCPU until an Observable result completes', () => {
    const a = mmioWrite(0x1000n, [1]);
    const holds: Array<PromiseLike<unknown>> = [];
    testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-a-|    ', { a });
      const e1subs = '  ^----!    ';
      const inner = cold(' ---|');
      const innersubs = [' -^--!     ', ' ---^--!   '];
      const expected = '------|   ';

      expectObservable(
        e1.pipe(
          collectHolds(holds),
          onMmioWrite({ from: 0x1000n, size: 1 }, () => inner),
        ),
      ).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(inner.subscriptions).toBe(innersubs);
    });
    expect(holds).toHaveLength(2);
  });

  it('should tear down a pending handler on unsubscribe', () => {
    testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-----|', { a: mmioWrite(0x1000n, [1]) });
      const unsub = '   ----!   ';
      const e1subs = '  ^---!   ';
      const inner = cold(' -----|');
      const innersubs = ' -^--!   ';
      const expected = '-----   ';

      expectObservable(e1.pipe(onMmioWrite({ from: 0x1000n, size: 1 }, () => inner)), unsub).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(inner.subscriptions).toBe(innersubs);
    });
  });

  it('should error when the Observable result errors', () => {
    const error = new Error('bus error');
    testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-----|', { a: mmioWrite(0x1000n, [1]) });
      const e1subs = '  ^--!    ';
      const inner = cold(' --#', undefined, error);
      const innersubs = ' -^-!    ';
      const expected = '---#    ';

      expectObservable(e1.pipe(onMmioWrite({ from: 0x1000n, size: 1 }, () => inner))).toBe(expected, undefined, error);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(inner.subscriptions).toBe(innersubs);
    });
  });
});
