/**
 * Marble-testing helpers for device pipelines: a `TestScheduler` that compares errors by their
 * `name`, `code` and `message`, and an operator that collects the holds handlers place, as a
 * runner does.
 *
 * @module
 */
import { Observable, type MonoTypeOperatorFunction } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { invalidType } from '../abi/validate';
import { deliverExit } from '../runtime/hold';
import type { VcpuExit } from '../wrappers/vcpu-exit';

/**
 * `value` with every `Error` in it (also inside marble notifications and arrays) replaced by
 * `{ name, code, message }`: errors are not equal by identity, and a marble spec expecting
 * `#` with an error compares these fields.
 */
export function normaliseErrors(value: unknown): unknown {
  if (value instanceof Error) {
    const e = value as Error & { code?: string };
    return { name: e.name, code: e.code, message: e.message };
  }
  if (Array.isArray(value)) return value.map(normaliseErrors);
  if (value !== null && typeof value === 'object' && 'frame' in value && 'notification' in value) {
    const m = value as { frame: number; notification: { kind: string; value?: unknown; error?: unknown } };
    return {
      frame: m.frame,
      notification: {
        ...m.notification,
        value: normaliseErrors(m.notification.value),
        error: normaliseErrors(m.notification.error),
      },
    };
  }
  return value;
}

/**
 * A `TestScheduler` for pipeline specs: `assertDeepEqual` (your test framework's deep equality)
 * sees errors normalised by {@link normaliseErrors}.
 *
 * @example
 * ```ts
 * import { makeExit, exitTestScheduler } from 'kvm-rx/testing';
 * const scheduler = exitTestScheduler((actual, expected) => expect(actual).toEqual(expected));
 * scheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
 *   const values = { a: makeExit.ioOut(0x3f8, [0x41]), h: makeExit.hlt() };
 *   const e1 = cold('     a-h|', values);
 *   const e1subs = '      ^-!';
 *   const expected = '    --|';
 *   expectObservable(e1.pipe(onIoOut(0x3f8, () => undefined), untilHalt())).toBe(expected, values);
 *   expectSubscriptions(e1.subscriptions).toBe(e1subs);
 * });
 * ```
 * @throws `TypeError` (`ERR_INVALID_ARG_TYPE`) when `assertDeepEqual` is not a function
 */
export function exitTestScheduler(assertDeepEqual: (actual: unknown, expected: unknown) => void): TestScheduler {
  if (typeof assertDeepEqual !== 'function') invalidType('assertDeepEqual', 'a function', assertDeepEqual);
  return new TestScheduler((actual, expected) => assertDeepEqual(normaliseErrors(actual), normaliseErrors(expected)));
}

/**
 * Delivers each exit of the source downstream the way a runner does, pushing the holds that
 * handlers place on it (asynchronous answers: see `holdVcpu`) into `into`, so a test can see that
 * the vCPU would stay stopped and await them.
 *
 * @example
 * ```ts
 * import { of } from 'rxjs';
 * const holds: PromiseLike<unknown>[] = [];
 * const read = makeExit.ioIn(0x60);
 * of(read).pipe(collectHolds(holds), onIoIn(0x60, async () => 0x1c)).subscribe();
 * expect(holds).toHaveLength(1);              // the vCPU would wait here
 * await Promise.all(holds);                   // read.data[0] === 0x1c now
 * ```
 * @throws `TypeError` (`ERR_INVALID_ARG_TYPE`) when `into` is not an array
 */
export function collectHolds(into: Array<PromiseLike<unknown>>): MonoTypeOperatorFunction<VcpuExit> {
  if (!Array.isArray(into)) invalidType('into', 'an array', into);
  return (source) =>
    new Observable<VcpuExit>((subscriber) =>
      source.subscribe({
        next: (exit) => deliverExit(exit, into, (e) => subscriber.next(e)),
        error: (e: unknown) => subscriber.error(e),
        complete: () => subscriber.complete(),
      }),
    );
}
