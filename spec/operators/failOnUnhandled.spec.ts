import type { TestScheduler } from 'rxjs/testing';
import { UnhandledExitError } from '../../src/runtime/errors';
import { failOnUnhandled } from '../../src/runtime/operators/failOnUnhandled';
import type { VcpuExit } from '../../src/wrappers/vcpu-exit';
import { bytesOf, hlt, ioIn, ioOut, mmioRead, mmioWrite, newTestScheduler } from '../helpers/exits';

/** failOnUnhandled */
describe('failOnUnhandled', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should error with an UnhandledExitError naming the exit, and unsubscribe from the source', () => {
    const a = ioIn(0x3fd, 1);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  ---a-|', { a });
      const e1subs = '  ^--!  ';
      const expected = '---#  ';

      expectObservable(e1.pipe(failOnUnhandled())).toBe(expected, undefined, {
        name: 'UnhandledExitError',
        code: 'ERR_KVM_UNHANDLED_EXIT',
        message: 'unhandled IoIn exit: port 0x3fd, size 1',
      });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should complete with the source when nothing reaches it', () => {
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot<VcpuExit>('  -----|');
      const e1subs = '  ^----!';
      const expected = '-----|';

      expectObservable(e1.pipe(failOnUnhandled())).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it.each<[VcpuExit, string]>([
    [ioIn(0x3fd, 1), 'unhandled IoIn exit: port 0x3fd, size 1'],
    [ioOut(0x80, [1, 2, 3, 4], 2), 'unhandled IoOut exit: port 0x80, size 2, count 2'],
    [mmioRead(0xfee0_0030n, 4), 'unhandled MmioRead exit: address 0xfee00030, size 4'],
    [mmioWrite(0xd000_0000n, [1, 2]), 'unhandled MmioWrite exit: address 0xd0000000, size 2'],
    [hlt(), 'unhandled Hlt exit'],
  ])('should describe %o', (exit, message) => {
    const err = new UnhandledExitError(exit);
    expect(err).toBeInstanceOf(Error);
    expect([err.name, err.code, err.message, err.exit]).toEqual([
      'UnhandledExitError',
      'ERR_KVM_UNHANDLED_EXIT',
      message,
      exit,
    ]);
  });

  it("should consume everything with policy 'ignore', reading all-ones (open bus)", () => {
    const a = ioIn(0x3fd, 2);
    const b = mmioRead(0xfee0_0030n, 4);
    const c = ioOut(0x80, [1]);
    const w = mmioWrite(0x1000n, [7]);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-w-h-|', { a, b, c, w, h: hlt() });
      const e1subs = '  ^----------!';
      const expected = '-----------|';

      expectObservable(e1.pipe(failOnUnhandled({ policy: 'ignore' }))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(bytesOf(a.data)).toEqual([0xff, 0xff]);
    expect(bytesOf(b.data)).toEqual([0xff, 0xff, 0xff, 0xff]);
    expect(bytesOf(c.data)).toEqual([1]);
    expect(bytesOf(w.data)).toEqual([7]);
  });

  it('should let a policy function decide per exit', () => {
    const a = ioIn(0x61, 1);
    const b = ioIn(0x62, 1);
    const c = ioIn(0x63, 1);
    const d = mmioRead(0x2000n, 1);
    const seen: VcpuExit[] = [];
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-d-|', { a, b, c, d });
      const e1subs = '  ^------!  ';
      const expected = '-------#  ';

      const policy = (exit: VcpuExit): 'error' | 'ignore' | void => {
        seen.push(exit);
        if (exit.kind === 'IoIn' && exit.port === 0x61) return 'ignore';
        if (exit.kind === 'IoIn' && exit.port === 0x62) {
          exit.data[0] = 0x20;
          return;
        }
        if (exit.kind === 'IoIn') return; // consumed as it is
        return 'error';
      };
      expectObservable(e1.pipe(failOnUnhandled({ policy }))).toBe(expected, undefined, new UnhandledExitError(d));
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(seen).toEqual([a, b, c, d]);
    expect([a.data[0], b.data[0], c.data[0]]).toEqual([0xff, 0x20, 0xcc]);
  });

  it('should error with what a policy function throws', () => {
    const error = new Error('policy says no');
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-|', { a: hlt() });
      const e1subs = '  ^!  ';
      const expected = '-#  ';

      const policy = (): never => {
        throw error;
      };
      expectObservable(e1.pipe(failOnUnhandled({ policy }))).toBe(expected, undefined, error);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should throw at once for an unknown policy', () => {
    expect(() => failOnUnhandled({ policy: 'warn' as never })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }),
    );
  });
});
