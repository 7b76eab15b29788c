/**
 * kvm-rx/testing's marble kit: exit builders, the error-normalising scheduler, collectHolds.
 */
import { of } from 'rxjs';
import { onIoIn } from '../../src/runtime/operators/onIoIn';
import { onIoOut } from '../../src/runtime/operators/onIoOut';
import { untilHalt } from '../../src/runtime/operators/untilHalt';
import { collectHolds, exitTestScheduler, makeExit, normaliseErrors } from '../../src/testing/index';

describe('kvm-rx/testing marble kit', () => {
  it('makeExit builds exits whose data views are live, as a runner hands them', () => {
    const read = makeExit.ioIn(0x3fd, 2);
    expect(read).toMatchObject({ kind: 'IoIn', port: 0x3fd, size: 2, count: 1 });
    expect(Array.from(read.data)).toEqual([0xcc, 0xcc]);
    of(read)
      .pipe(onIoIn(0x3fd, () => 0x1234))
      .subscribe();
    expect(Array.from(read.data)).toEqual([0x34, 0x12]);
    expect(makeExit.mmioWrite(0xd000_0000n, [1, 2, 3, 4])).toMatchObject({ kind: 'MmioWrite', addr: 0xd000_0000n });
    expect(makeExit.ioOut(0x80, [1, 2, 3, 4], 2)).toMatchObject({ size: 2, count: 2 });
  });

  it('makeExit refuses what no exit can be, with ERR_ codes', () => {
    expect(() => makeExit.ioOut(0x10000, [1])).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => makeExit.ioOut(0x80, [])).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => makeExit.ioOut(0x80, [1, 2, 3], 2)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => makeExit.ioOut(0x80, 'A' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => makeExit.ioIn(0x80, 9)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => makeExit.mmioRead(-1n)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => makeExit.mmioWrite(0n, new Uint8Array(9))).toThrow(
      expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }),
    );
  });

  it('exitTestScheduler compares errors by name, code and message', () => {
    const scheduler = exitTestScheduler((actual, expected) => expect(actual).toEqual(expected));
    scheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const values = { a: makeExit.ioOut(0x3f8, [0x41]), h: makeExit.hlt() };
      const e1 = cold('     a-h|', values);
      const e1subs = '      ^-!';
      const expected = '    --|';
      expectObservable(
        e1.pipe(
          onIoOut(0x3f8, () => undefined),
          untilHalt(),
        ),
      ).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(normaliseErrors([Object.assign(new RangeError('r'), { code: 'ERR_X' })])).toEqual([
      { name: 'RangeError', code: 'ERR_X', message: 'r' },
    ]);
    // A different message is a failing comparison, not an identity mismatch.
    const strict = exitTestScheduler((actual, expected) => expect(actual).toEqual(expected));
    expect(() =>
      strict.run(({ cold, expectObservable }) => {
        expectObservable(cold('#', undefined, new Error('a'))).toBe('#', undefined, new Error('b'));
      }),
    ).toThrow();
  });

  it('collectHolds gathers the holds of asynchronous answers, which settle with the answer', async () => {
    const holds: Array<PromiseLike<unknown>> = [];
    const read = makeExit.ioIn(0x60);
    of(read)
      .pipe(
        collectHolds(holds),
        onIoIn(0x60, () => Promise.resolve(0x1c)),
      )
      .subscribe();
    expect(holds).toHaveLength(1);
    expect(read.data[0]).toBe(0xcc); // not answered yet: the vCPU would wait
    await Promise.all(holds);
    expect(read.data[0]).toBe(0x1c);
    expect(() => collectHolds('x' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  });
});
