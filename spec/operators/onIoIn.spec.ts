import { EMPTY, map, of } from 'rxjs';
import type { TestScheduler } from 'rxjs/testing';
import { collectHolds } from '../../src/testing/marbles';
import { onIoIn } from '../../src/runtime/operators/onIoIn';
import type { ExitAnswer } from '../../src/runtime/operators/handleExits';
import type { VcpuExit } from '../../src/wrappers/vcpu-exit';
import { bytesOf, hlt, ioIn, ioOut, newTestScheduler } from '../helpers/exits';

/** onIoIn */
describe('onIoIn', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should answer IoIn exits from the port and pass every other exit through', () => {
    const a = ioIn(0x3fd);
    const b = ioIn(0x3fe);
    const c = ioOut(0x3fd, [0x41]);
    const h = hlt();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-h-|', { a, b, c, h });
      const e1subs = '  ^--------!';
      const expected = '---b-c-h-|';

      expectObservable(e1.pipe(onIoIn(0x3fd, () => 0x60))).toBe(expected, { b, c, h });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(bytesOf(a.data)).toEqual([0x60]);
    expect(bytesOf(b.data)).toEqual([0xcc]);
  });

  it.each<[string, number, number, ExitAnswer, number[]]>([
    ['a number, little-endian', 2, 1, 0x1234, [0x34, 0x12]],
    ['a number truncated to size * count', 1, 3, 0x11223344, [0x44, 0x33, 0x22]],
    ['a bigint', 4, 2, 0x0102030405060708n, [8, 7, 6, 5, 4, 3, 2, 1]],
    ["a negative number, in two's complement", 2, 1, -2, [0xfe, 0xff]],
    ['a Uint8Array, copied', 4, 1, Uint8Array.of(1, 2, 3, 4), [1, 2, 3, 4]],
    ['a shorter byte array, zero-filled', 4, 1, [9, 8], [9, 8, 0, 0]],
    ['a longer byte array, truncated', 1, 2, [5, 6, 7], [5, 6]],
  ])('should write %s into exit.data', (_name, size, count, answer, bytes) => {
    const a = ioIn(0x60, size, count);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-|', { a });
      const e1subs = '  ^--!';
      const expected = '---|';

      expectObservable(e1.pipe(onIoIn(0x60, () => answer))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(bytesOf(a.data)).toEqual(bytes);
  });

  it('should leave exit.data to a handler that returns nothing', () => {
    const a = ioIn(0x71, 1);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-|', { a });
      const e1subs = '  ^--!';
      const expected = '---|';

      expectObservable(e1.pipe(onIoIn(0x71, (exit) => void (exit.data[0] = 0x42)))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(bytesOf(a.data)).toEqual([0x42]);
  });

  it('should error for an answer of the wrong type or out of range', () => {
    const a = ioIn(0x60);
    const b = ioIn(0x60);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-|', { a });
      const e1subs = '  ^!  ';
      const expected = '-#  ';
      const e2 = hot('  -b-|', { b });
      const e2subs = '  ^!  ';

      expectObservable(e1.pipe(onIoIn(0x60, () => 'x' as never))).toBe(expected, undefined, {
        name: 'TypeError',
        code: 'ERR_INVALID_ARG_TYPE',
        message:
          'The "answer" argument must be a number, bigint, Uint8Array, array of bytes or undefined. Received type string (\'x\')',
      });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectObservable(e2.pipe(onIoIn(0x60, () => [256]))).toBe(expected, undefined, {
        name: 'RangeError',
        code: 'ERR_OUT_OF_RANGE',
        message: 'The value of "answer[0]" is out of range. It must be an integer >= 0 and <= 255. Received 256',
      });
      expectSubscriptions(e2.subscriptions).toBe(e2subs);
    });
  });

  it('should write the answer of an Observable result when it arrives, holding the vCPU until then', () => {
    const a = ioIn(0x3fd);
    const holds: Array<PromiseLike<unknown>> = [];
    testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('   -a---|', { a });
      const e1subs = '   ^----!';
      const answer = cold(' --a|', { a: 0x60 });
      const answersubs = '-^-!  ';
      const expected = ' -----|';
      const probe = cold('--p-p|');
      const probed = '   --x-y|';

      expectObservable(
        e1.pipe(
          collectHolds(holds),
          onIoIn(0x3fd, () => answer),
        ),
      ).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(answer.subscriptions).toBe(answersubs);
      expectObservable(probe.pipe(map(() => bytesOf(a.data)))).toBe(probed, { x: [0xcc], y: [0x60] });
    });
    expect(holds).toHaveLength(1);
    return expect(holds[0]).resolves.toBeUndefined();
  });

  it('should error with EmptyError when an Observable result completes without an answer', async () => {
    const a = ioIn(0x3fd);
    const holds: Array<PromiseLike<unknown>> = [];
    testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a---|', { a });
      const e1subs = '  ^--!  ';
      const answer = cold<number>(' --|');
      const answersubs = '-^-!  ';
      const expected = '---#  ';

      expectObservable(
        e1.pipe(
          collectHolds(holds),
          onIoIn(0x3fd, () => answer),
        ),
      ).toBe(expected, undefined, {
        name: 'EmptyError',
        code: undefined,
        message: 'no elements in sequence',
      });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(answer.subscriptions).toBe(answersubs);
    });
    await expect(holds[0]).rejects.toMatchObject({ name: 'EmptyError' });
  });

  it('should answer synchronously from of() without holding the vCPU', () => {
    const a = ioIn(0x3fd);
    const holds: Array<PromiseLike<unknown>> = [];
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-|', { a });
      const e1subs = '  ^--!';
      const expected = '---|';

      expectObservable(
        e1.pipe(
          collectHolds(holds),
          onIoIn(0x3fd, () => of(0x20, 0x21)),
        ),
      ).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(bytesOf(a.data)).toEqual([0x20]);
    expect(holds).toHaveLength(0);
  });

  it('should tear down a pending answer on unsubscribe and leave exit.data alone', () => {
    const a = ioIn(0x3fd);
    const holds: Array<PromiseLike<unknown>> = [];
    testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a------|', { a });
      const unsub = '   --!      ';
      const e1subs = '  ^-!      ';
      const answer = cold(' ---a|', { a: 0x60 });
      const answersubs = '-^!      ';
      const expected = '---      ';

      expectObservable(
        e1.pipe(
          collectHolds(holds),
          onIoIn(0x3fd, () => answer),
        ),
        unsub,
      ).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(answer.subscriptions).toBe(answersubs);
    });
    expect(bytesOf(a.data)).toEqual([0xcc]);
    return expect(holds[0]).resolves.toBeUndefined();
  });

  it('should write a Promise answer when it resolves and release the hold after writing', async () => {
    const a = ioIn(0x3fd, 2);
    const holds: Array<PromiseLike<unknown>> = [];
    let answer!: (v: number) => void;
    const done: string[] = [];
    of<VcpuExit>(a)
      .pipe(
        collectHolds(holds),
        onIoIn(0x3fd, () => new Promise<number>((resolve) => (answer = resolve))),
      )
      .subscribe({ complete: () => done.push('complete') });
    expect(holds).toHaveLength(1);
    expect(bytesOf(a.data)).toEqual([0xcc, 0xcc]);
    answer(0xbeef);
    await holds[0];
    expect(bytesOf(a.data)).toEqual([0xef, 0xbe]);
    expect(done).toEqual(['complete']);
  });

  it('should ignore a Promise answer that arrives after unsubscribe', async () => {
    const a = ioIn(0x3fd);
    const holds: Array<PromiseLike<unknown>> = [];
    let answer!: (v: number) => void;
    const late = new Promise<number>((resolve) => (answer = resolve));
    const sub = of<VcpuExit>(a)
      .pipe(
        collectHolds(holds),
        onIoIn(0x3fd, () => late),
      )
      .subscribe();
    sub.unsubscribe();
    await holds[0];
    answer(0x60);
    await late;
    expect(bytesOf(a.data)).toEqual([0xcc]);
  });

  it('should pass an empty source through', () => {
    testScheduler.run(({ expectObservable }) => {
      expectObservable(EMPTY.pipe(onIoIn(0x3fd, () => 0))).toBe('|');
    });
  });
});
