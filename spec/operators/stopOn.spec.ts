import type { TestScheduler } from 'rxjs/testing';
import { stopOn } from '../../src/runtime/operators/stopOn';
import { untilHalt } from '../../src/runtime/operators/untilHalt';
import { untilShutdown } from '../../src/runtime/operators/untilShutdown';
import { hlt, ioOut, irqWindowOpen, newTestScheduler, shutdown } from '../helpers/exits';

/** stopOn */
describe('stopOn', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should complete at the first exit of a given kind, consuming it, and unsubscribe from the source', () => {
    const a = ioOut(0x3f8, [0x41]);
    const i = irqWindowOpen();
    const s = shutdown();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-i-s-a-|', { a, i, s });
      const e1subs = '  ^----!    ';
      const expected = '-a-i-|    ';

      expectObservable(e1.pipe(stopOn('Hlt', 'Shutdown'))).toBe(expected, { a, i });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should mirror completion and errors of the source', () => {
    const a = ioOut(0x3f8, [0x41]);
    const error = new Error('KVM_RUN: EFAULT');
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-|', { a });
      const e1subs = '  ^--!';
      const e2 = hot('  -a-#', { a }, error);
      const e2subs = '  ^--!';

      expectObservable(e1.pipe(stopOn('Hlt'))).toBe('-a-|', { a });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectObservable(e2.pipe(stopOn('Hlt'))).toBe('-a-#', { a }, error);
      expectSubscriptions(e2.subscriptions).toBe(e2subs);
    });
  });

  it('should stop a synchronous source at once', () => {
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold(' (aha|)', { a: ioOut(1, [1]), h: hlt() });
      const e1subs = '  (^!)  ';
      const expected = '(a|)  ';

      expectObservable(e1.pipe(untilHalt())).toBe(expected, { a: ioOut(1, [1]) });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should throw at once without kinds or with an unknown kind', () => {
    expect(() => stopOn()).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => stopOn('Halt' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
  });
});

/** untilHalt */
describe('untilHalt', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should complete at Hlt and pass Shutdown through', () => {
    const s = shutdown();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -s-h-s-|', { s, h: hlt() });
      const e1subs = '  ^--!    ';
      const expected = '-s-|    ';

      expectObservable(e1.pipe(untilHalt())).toBe(expected, { s });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });
});

/** untilShutdown */
describe('untilShutdown', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should complete at Shutdown and pass Hlt through', () => {
    const h = hlt();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -h-s-h-|', { s: shutdown(), h });
      const e1subs = '  ^--!    ';
      const expected = '-h-|    ';

      expectObservable(e1.pipe(untilShutdown())).toBe(expected, { h });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });
});
