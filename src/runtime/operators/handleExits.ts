/**
 * The engine shared by the handler operators (`onIoOut`, `onIoIn`, `onMmioWrite`, `onMmioRead`):
 * run a handler for the exits it selects, write its answer into the exit, hold the vCPU while an
 * asynchronous handler is pending, and pass every other exit downstream unchanged.
 *
 * @module
 */
import { EmptyError, Observable, Subscription, isObservable } from 'rxjs';
import type { OperatorFunction } from 'rxjs';
import { checkBytes, invalidType, outOfRange } from '../../abi/validate';
import type { VcpuExit } from '../../wrappers/vcpu-exit';
import { holdVcpu } from '../hold';

/**
 * What a read handler answers: the value the guest reads.
 * - `number` / `bigint`: written little-endian, truncated to the access size
 *   (negative values are written in two's complement);
 * - `Uint8Array` / `number[]`: the bytes, copied (truncated, or zero-filled up to the access size);
 * - `undefined`: the handler wrote `exit.data` itself.
 */
// eslint-disable-next-line @typescript-eslint/no-invalid-void-type -- a handler that wrote exit.data itself returns nothing
export type ExitAnswer = number | bigint | Uint8Array | ReadonlyArray<number> | void;

/** What a handler may return: a value, or a Promise or Observable of one (the vCPU waits). */
export type HandlerResult<T> = T | PromiseLike<T> | Observable<T>;

/**
 * Writes `answer` into `data` (the live view the guest reads from).
 *
 * @param data - `IoIn.data` or `MmioRead.data`
 * @param answer - see {@link ExitAnswer}
 * @throws TypeError `ERR_INVALID_ARG_TYPE` for another type, RangeError `ERR_OUT_OF_RANGE` for a
 *   non-integer number or a byte outside 0..255
 */
export function writeAnswer(data: Uint8Array, answer: ExitAnswer): void {
  checkBytes('data', data);
  if (answer === undefined) return;
  if (typeof answer === 'number' && data.length <= 4 && Number.isSafeInteger(answer)) {
    // The common case (a PIO/MMIO read of 1, 2 or 4 bytes) without BigInts: the bitwise operators
    // take the low 32 bits of the two's complement, as BigInt.asUintN does.
    for (let i = 0, v = answer | 0; i < data.length; i++, v >>= 8) data[i] = v & 0xff;
    return;
  }
  if (typeof answer === 'number' || typeof answer === 'bigint') {
    if (typeof answer === 'number' && !Number.isSafeInteger(answer))
      outOfRange('answer', 'a safe integer or a bigint', answer);
    let v = BigInt.asUintN(8 * data.length, BigInt(answer));
    for (let i = 0; i < data.length; i++, v >>= 8n) data[i] = Number(v & 0xffn);
    return;
  }
  if (answer instanceof Uint8Array || Array.isArray(answer)) {
    const n = Math.min(answer.length, data.length);
    for (let i = 0; i < n; i++) {
      const b = answer[i] as number;
      if (!Number.isInteger(b) || b < 0 || b > 0xff) outOfRange(`answer[${i}]`, 'an integer >= 0 and <= 255', b);
      data[i] = b;
    }
    data.fill(0, n);
    return;
  }
  invalidType('answer', 'a number, bigint, Uint8Array, array of bytes or undefined', answer);
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return (
    (typeof value === 'object' || typeof value === 'function') &&
    value !== null &&
    typeof (value as PromiseLike<unknown>).then === 'function'
  );
}

/**
 * Builds a handler operator.
 *
 * @param select - returns the handler's extra argument (e.g. the MMIO offset) for the exits to
 *   handle, `undefined` for exits to pass on
 * @param handler - the user's handler
 * @param answer - writes a value into the exit (read operators), or `undefined` (write operators:
 *   values are ignored and an Observable holds the vCPU until it completes)
 * @return the operator
 */
export function handleExits<E extends VcpuExit, A, R>(
  select: (exit: VcpuExit) => A | undefined,
  handler: (exit: E, arg: A) => HandlerResult<R>,
  answer?: (exit: E, value: R) => void,
): OperatorFunction<VcpuExit, VcpuExit> {
  if (typeof handler !== 'function') invalidType('handler', 'of type function', handler);
  return (source) =>
    new Observable<VcpuExit>((subscriber) => {
      let pending = 0;
      let sourceDone = false;
      // Holds of pending asynchronous handlers: released (resolved) on teardown so no runner waits forever.
      const releases = new Set<() => void>();
      const inners = new Subscription();

      const maybeComplete = (): void => {
        if (sourceDone && pending === 0) subscriber.complete();
      };
      const fail = (err: unknown): void => subscriber.error(err);

      // Runs `settle` for the exit once the async result is in; `hold` registers the vCPU hold.
      const startPending = (exit: E): { settled: () => void; failed: (e: unknown) => void; hold: () => void } => {
        let resolve!: () => void;
        let reject!: (e: unknown) => void;
        let finished = false;
        let held: Promise<void> | undefined;
        pending++;
        const release = (): void => resolve();
        const end = (): void => {
          finished = true;
          pending--;
          releases.delete(release);
        };
        return {
          settled: () => {
            if (finished) return;
            end();
            if (held !== undefined) resolve();
            maybeComplete();
          },
          failed: (e) => {
            if (finished) return;
            end();
            if (held !== undefined) reject(e);
            fail(e);
          },
          hold: () => {
            if (finished || held !== undefined) return;
            held = new Promise<void>((res, rej) => {
              resolve = res;
              reject = rej;
            });
            held.catch(() => undefined); // the stream reports the error; the runner sees it too
            releases.add(release);
            holdVcpu(exit, held);
          },
        };
      };

      subscriber.add(
        source.subscribe({
          next: (exit) => {
            if (subscriber.closed) return;
            const arg = select(exit);
            if (arg === undefined) {
              subscriber.next(exit);
              return;
            }
            const e = exit as E;
            let result: HandlerResult<R>;
            try {
              result = handler(e, arg);
              if (!isObservable(result) && !isPromiseLike(result)) {
                answer?.(e, result);
                return;
              }
            } catch (err) {
              fail(err);
              return;
            }
            const p = startPending(e);
            if (isObservable(result)) {
              const inner = new Subscription();
              inners.add(inner);
              inner.add(() => inners.remove(inner));
              const finish = (): void => {
                inner.unsubscribe();
                p.settled();
              };
              inner.add(
                result.subscribe({
                  next: (value) => {
                    // `inner.closed`: a synchronous source may emit again before subscribe() returns
                    if (answer === undefined || inner.closed) return;
                    try {
                      answer(e, value);
                    } catch (err) {
                      inner.unsubscribe();
                      p.failed(err);
                      return;
                    }
                    finish(); // a read is answered by the first value
                  },
                  error: (err: unknown) => p.failed(err),
                  complete: () =>
                    answer === undefined
                      ? finish()
                      : p.failed(
                          // eslint-disable-next-line @typescript-eslint/no-deprecated -- rxjs's own error for an Observable that completes empty
                          new EmptyError(),
                        ),
                }),
              );
            } else {
              result.then(
                (value) => {
                  if (subscriber.closed) return;
                  try {
                    answer?.(e, value);
                  } catch (err) {
                    p.failed(err);
                    return;
                  }
                  p.settled();
                },
                (err: unknown) => {
                  if (!subscriber.closed) p.failed(err);
                },
              );
            }
            p.hold();
          },
          error: fail,
          complete: () => {
            sourceDone = true;
            maybeComplete();
          },
        }),
      );
      return () => {
        inners.unsubscribe();
        for (const release of [...releases]) release();
        releases.clear();
      };
    });
}
