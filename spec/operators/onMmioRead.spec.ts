import type { TestScheduler } from 'rxjs/testing';
import { collectHolds } from '../../src/testing/marbles';
import { onMmioRead } from '../../src/runtime/operators/onMmioRead';
import { bytesOf, hlt, mmioRead, mmioWrite, newTestScheduler } from '../helpers/exits';

/** onMmioRead */
describe('onMmioRead', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should answer MmioRead exits inside the range with the offset, and pass every other exit through', () => {
    const a = mmioRead(0xd000_0000n, 4);
    const b = mmioRead(0xd000_0ffcn, 2);
    const c = mmioRead(0xd000_1000n, 4);
    const d = mmioRead(0xcfff_ffffn, 1);
    const w = mmioWrite(0xd000_0000n, [1, 2, 3, 4]);
    const h = hlt();
    const offsets: number[] = [];
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-d-w-h-|', { a, b, c, d, w, h });
      const e1subs = '  ^------------!';
      const expected = '-----c-d-w-h-|';

      const result = e1.pipe(
        onMmioRead({ from: 0xd000_0000n, size: 0x1000 }, (_exit, offset) => {
          offsets.push(offset);
          return 0x1af4_0000 + offset;
        }),
      );
      expectObservable(result).toBe(expected, { c, d, w, h });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(offsets).toEqual([0, 0xffc]);
    expect(bytesOf(a.data)).toEqual([0x00, 0x00, 0xf4, 0x1a]);
    expect(bytesOf(b.data)).toEqual([0xfc, 0x0f]);
    expect(bytesOf(c.data)).toEqual([0xcc, 0xcc, 0xcc, 0xcc]);
  });

  it('should match an array of ranges, with the offset in the matched one', () => {
    const a = mmioRead(0x1000n, 1);
    const b = mmioRead(0x2008n, 1);
    const c = mmioRead(0x1800n, 1);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-|', { a, b, c });
      const e1subs = '  ^------!';
      const expected = '-----c-|';

      const ranges = [
        { from: 0x1000n, size: 0x10n },
        { from: 0x2000n, size: 0x10 },
      ];
      expectObservable(e1.pipe(onMmioRead(ranges, (_exit, offset) => [offset]))).toBe(expected, { c });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(bytesOf(a.data)).toEqual([0]);
    expect(bytesOf(b.data)).toEqual([8]);
  });

  it('should throw at once for an invalid range', () => {
    expect(() => onMmioRead({ from: 0x1000n, size: 0 }, () => 0)).toThrow(
      expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }),
    );
    expect(() => onMmioRead({ from: -1n, size: 1 }, () => 0)).toThrow(
      expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }),
    );
    expect(() => onMmioRead({ from: 'x', size: 1 } as never, () => 0)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => onMmioRead(0x1000n as never, () => 0)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
  });

  it('should write the answer of an Observable result at its frame, holding the vCPU until then', () => {
    const a = mmioRead(0xfed0_0000n, 8);
    const holds: Array<PromiseLike<unknown>> = [];
    const probed: number[][] = [];
    testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a--|  ', { a });
      const e1subs = '  ^---!  ';
      const answer = cold(' --a|', { a: 0x0102_0304_0506_0708n });
      const answersubs = '-^-!   ';
      const expected = '----|  ';

      expectObservable(
        e1.pipe(
          collectHolds(holds),
          onMmioRead({ from: 0xfed0_0000n, size: 0x400 }, () => answer),
        ),
      ).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(answer.subscriptions).toBe(answersubs);
      cold('--p-p').subscribe(() => probed.push(bytesOf(a.data)));
    });
    expect(probed).toEqual([
      [0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc],
      [8, 7, 6, 5, 4, 3, 2, 1],
    ]);
    expect(holds).toHaveLength(1);
  });

  it('should error with what the handler throws', () => {
    const error = new RangeError('register 0x40 is write-only');
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-|', { a: mmioRead(0x40n, 4) });
      const e1subs = '  ^!  ';
      const expected = '-#  ';

      const result = e1.pipe(
        onMmioRead({ from: 0n, size: 0x100 }, () => {
          throw error;
        }),
      );
      expectObservable(result).toBe(expected, undefined, error);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });
});
