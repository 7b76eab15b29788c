import type { TestScheduler } from 'rxjs/testing';
import { ExitStats, LATENCY_BUCKETS_MS } from '../../src/runtime/operators/ExitStats';
import { traceExits } from '../../src/runtime/operators/traceExits';
import { hlt, ioIn, ioOut, mmioRead, mmioWrite, newTestScheduler } from '../helpers/exits';

/** traceExits */
describe('traceExits', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should pass every exit through and count them by kind, port and address', () => {
    const a = ioOut(0x3f8, [0x41]);
    const b = ioIn(0x3fd);
    const c = mmioRead(0xfee0_0030n, 4);
    const d = mmioWrite(0xfee0_0030n, [0, 0, 0, 0]);
    const h = hlt();
    const stats = new ExitStats({ now: () => testScheduler.now() });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-a-b-c-d-h-|', { a, b, c, d, h });
      const e1subs = '  ^------------!';
      const expected = '-a-a-b-c-d-h-|';

      expectObservable(e1.pipe(traceExits(stats))).toBe(expected, { a, b, c, d, h });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(stats.total).toBe(6);
    expect([...stats.counts]).toEqual([
      ['IoOut', 2],
      ['IoIn', 1],
      ['MmioRead', 1],
      ['MmioWrite', 1],
      ['Hlt', 1],
    ]);
    expect([...stats.ports]).toEqual([
      [0x3f8, 2],
      [0x3fd, 1],
    ]);
    expect([...stats.addresses]).toEqual([[0xfee0_0030n, 2]]);
    const snap = stats.snapshot();
    expect(snap).toMatchObject({
      total: 6,
      counts: { IoOut: 2, IoIn: 1, MmioRead: 1, MmioWrite: 1, Hlt: 1 },
      ports: { '0x3f8': 2, '0x3fd': 1 },
      addresses: { '0xfee00030': 2 },
    });
    expect(JSON.parse(JSON.stringify(snap)).total).toBe(6);
  });

  it('should record the time from each exit to the next with the injected clock', () => {
    const stats = new ExitStats({ now: () => testScheduler.now() });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b---c-|', { a: ioOut(1, [1]), b: ioOut(2, [2]), c: hlt() });
      const e1subs = '  ^--------!';
      const expected = '-a-b---c-|';

      expectObservable(e1.pipe(traceExits(stats))).toBe(expected, { a: ioOut(1, [1]), b: ioOut(2, [2]), c: hlt() });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    const { latency } = stats.snapshot();
    expect([latency.count, latency.minMs, latency.maxMs, latency.meanMs]).toEqual([2, 2, 4, 3]);
    const nonEmpty = latency.buckets.filter((b) => b.count > 0);
    expect(nonEmpty).toEqual([
      { leMs: 2.048, count: 1 },
      { leMs: 4.096, count: 1 },
    ]);
    expect(latency.buckets.map((b) => b.leMs)).toEqual(LATENCY_BUCKETS_MS);
  });

  it('should measure each subscription separately and stop with it', () => {
    const stats = new ExitStats({ now: () => testScheduler.now() });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-a-a-a-|', { a: hlt() });
      const unsub = '   ----!     ';
      const e1subs = '  ^---!     ';
      const expected = '-a-a-     ';

      expectObservable(e1.pipe(traceExits(stats)), unsub).toBe(expected, { a: hlt() });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect([stats.total, stats.latencyCount, stats.latencySum]).toEqual([2, 1, 2]);
  });

  it('should pass errors through and default to performance.now()', () => {
    const stats = new ExitStats();
    const error = new Error('KVM_RUN failed');
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-#', { a: hlt() }, error);
      const e1subs = '  ^--!';
      const expected = '-a-#';

      expectObservable(e1.pipe(traceExits(stats))).toBe(expected, { a: hlt() }, error);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(stats.counts.get('Hlt')).toBe(1);
    expect(typeof stats.now()).toBe('number');
    stats.reset();
    expect(stats.snapshot()).toMatchObject({
      total: 0,
      counts: {},
      latency: { count: 0, minMs: 0, maxMs: 0, meanMs: 0 },
    });
  });

  it('should throw at once without an ExitStats', () => {
    expect(() => traceExits({} as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  });
});
