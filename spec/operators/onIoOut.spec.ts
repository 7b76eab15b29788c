import { of, throwError } from 'rxjs';
import type { TestScheduler } from 'rxjs/testing';
import { collectHolds } from '../../src/testing/marbles';
import { onIoOut } from '../../src/runtime/operators/onIoOut';
import type { IoOutExit, VcpuExit } from '../../src/wrappers/vcpu-exit';
import { hlt, ioIn, ioOut, newTestScheduler } from '../helpers/exits';

/** onIoOut */
describe('onIoOut', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should consume IoOut exits to the port and pass every other exit through', () => {
    const a = ioOut(0x3f8, [0x41]);
    const b = ioOut(0x80, [0x01]);
    const c = ioIn(0x3f8);
    const h = hlt();
    const seen: IoOutExit[] = [];
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-a-h-|', { a, b, c, h });
      const e1subs = '  ^----------!';
      const expected = '---b-c---h-|';

      expectObservable(e1.pipe(onIoOut(0x3f8, (exit) => void seen.push(exit)))).toBe(expected, { b, c, h });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(seen).toEqual([a, a]);
  });

  it.each<[string, Parameters<typeof onIoOut>[0]]>([
    ['an inclusive [from, to] range', [0x3f8, 0x3ff]],
    ['an array of ports and ranges', [0x80, [0x3f8, 0x3ff]]],
    ['a predicate', (port) => (port & 0xfff8) === 0x3f8 || port === 0x80],
  ])('should match ports given as %s', (_name, ports) => {
    const a = ioOut(0x3f8, [1]);
    const b = ioOut(0x3ff, [2]);
    const c = ioOut(0x400, [3]);
    const d = ioOut(0x3f7, [4]);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-d-|', { a, b, c, d });
      const e1subs = '  ^--------!';
      const expected = '-----c-d-|';

      expectObservable(e1.pipe(onIoOut(ports, () => undefined))).toBe(expected, { c, d });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should treat a two-number array as a range, not two ports', () => {
    const a = ioOut(0x62, [1]);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-|', { a });
      const e1subs = '  ^--!';
      const expected = '---|';

      expectObservable(e1.pipe(onIoOut([0x60, 0x64], () => undefined))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should throw at once for an invalid matcher or handler', () => {
    expect(() => onIoOut(0x10000, () => undefined)).toThrow(
      expect.objectContaining({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }),
    );
    expect(() => onIoOut([0x3ff, 0x3f8], () => undefined)).toThrow(
      expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }),
    );
    expect(() => onIoOut('com1' as never, () => undefined)).toThrow(
      expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => onIoOut([0x3f8, 'x'] as never, () => undefined)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => onIoOut(0x3f8, 42 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  });

  it('should error with what the handler throws, and unsubscribe from the source', () => {
    const a = ioOut(0x3f8, [0x41]);
    const b = ioOut(0x80, [0x01]);
    const error = Object.assign(new Error('device on fire'), { code: 'EFIRE' });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -b-a-b-|', { a, b });
      const e1subs = '  ^--!    ';
      const expected = '-b-#    ';

      const result = e1.pipe(
        onIoOut(0x3f8, () => {
          throw error;
        }),
      );
      expectObservable(result).toBe(expected, { b }, error);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should hold the vCPU until an Observable result completes, ignoring its values', () => {
    const a = ioOut(0x3f8, [0x41]);
    const holds: Array<PromiseLike<unknown>> = [];
    testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a--|   ', { a });
      const e1subs = '  ^---!   ';
      const inner = cold(' --x-|');
      const innersubs = ' -^---!';
      const expected = '-----|';

      expectObservable(
        e1.pipe(
          collectHolds(holds),
          onIoOut(0x3f8, () => inner),
        ),
      ).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(inner.subscriptions).toBe(innersubs);
    });
    expect(holds).toHaveLength(1);
    return expect(holds[0]).resolves.toBeUndefined();
  });

  it('should not hold the vCPU for an Observable that completes synchronously', () => {
    const a = ioOut(0x3f8, [0x41]);
    const holds: Array<PromiseLike<unknown>> = [];
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-|', { a });
      const e1subs = '  ^--!';
      const expected = '---|';

      expectObservable(
        e1.pipe(
          collectHolds(holds),
          onIoOut(0x3f8, () => of(1, 2)),
        ),
      ).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(holds).toHaveLength(0);
  });

  it('should error when the Observable result errors, and reject the hold with that error', async () => {
    const a = ioOut(0x3f8, [0x41]);
    const holds: Array<PromiseLike<unknown>> = [];
    const error = new Error('write failed');
    testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a---b-|', { a, b: hlt() });
      const e1subs = '  ^--!    ';
      const inner = cold(' --#', undefined, error);
      const innersubs = ' -^-!    ';
      const expected = '---#    ';

      expectObservable(
        e1.pipe(
          collectHolds(holds),
          onIoOut(0x3f8, () => inner),
        ),
      ).toBe(expected, undefined, error);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(inner.subscriptions).toBe(innersubs);
    });
    expect(holds).toHaveLength(1);
    await expect(holds[0]).rejects.toBe(error);
  });

  it('should wait for a pending handler before completing', () => {
    const a = ioOut(0x3f8, [0x41]);
    testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a|    ', { a });
      const e1subs = '  ^-!    ';
      const inner = cold(' ----|');
      const innersubs = ' -^---!';
      const expected = '-----|';

      expectObservable(e1.pipe(onIoOut(0x3f8, () => inner))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(inner.subscriptions).toBe(innersubs);
    });
  });

  it('should tear down the inner subscription of a pending handler on unsubscribe, and release the hold', () => {
    const a = ioOut(0x3f8, [0x41]);
    const holds: Array<PromiseLike<unknown>> = [];
    testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-------|', { a });
      const unsub = '   ---!      ';
      const e1subs = '  ^--!      ';
      const inner = cold(' ------|');
      const innersubs = ' -^-!      ';
      const expected = '----       ';

      expectObservable(
        e1.pipe(
          collectHolds(holds),
          onIoOut(0x3f8, () => inner),
        ),
        unsub,
      ).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(inner.subscriptions).toBe(innersubs);
    });
    expect(holds).toHaveLength(1);
    return expect(holds[0]).resolves.toBeUndefined();
  });

  it('should pass errors from the source through', () => {
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-#', { a: ioOut(0x3f8, [1]) }, new Error('KVM_RUN failed'));
      const e1subs = '  ^--!';
      const expected = '---#';

      expectObservable(e1.pipe(onIoOut(0x3f8, () => undefined))).toBe(expected, undefined, new Error('KVM_RUN failed'));
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should hold the vCPU until a Promise result settles, and error on rejection', async () => {
    const a = ioOut(0x3f8, [0x41]);
    const holds: Array<PromiseLike<unknown>> = [];
    const log: string[] = [];
    let finish!: () => void;
    const sub = of<VcpuExit>(a)
      .pipe(
        collectHolds(holds),
        onIoOut(0x3f8, () => new Promise<void>((resolve) => (finish = resolve))),
      )
      .subscribe({ complete: () => log.push('complete') });
    expect(holds).toHaveLength(1);
    expect(log).toEqual([]);
    finish();
    await holds[0];
    expect(log).toEqual(['complete']);
    sub.unsubscribe();

    const b = ioOut(0x3f8, [0x42]);
    const holdsB: Array<PromiseLike<unknown>> = [];
    const error = new Error('rejected');
    const errors: unknown[] = [];
    of<VcpuExit>(b)
      .pipe(
        collectHolds(holdsB),
        onIoOut(0x3f8, () => Promise.reject(error)),
      )
      .subscribe({ error: (e: unknown) => errors.push(e) });
    await expect(holdsB[0]).rejects.toBe(error);
    expect(errors).toEqual([error]);
  });

  it('should error at once when the handler returns throwError()', () => {
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-|', { a: ioOut(0x3f8, [1]) });
      const e1subs = '  ^!  ';
      const expected = '-#  ';

      expectObservable(e1.pipe(onIoOut(0x3f8, () => throwError(() => new RangeError('bad'))))).toBe(
        expected,
        undefined,
        new RangeError('bad'),
      );
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });
});
