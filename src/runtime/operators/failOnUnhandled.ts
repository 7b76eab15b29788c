import { Observable } from 'rxjs';
import type { OperatorFunction } from 'rxjs';
import { checkObject, invalidValue } from '../../abi/validate';
import type { VcpuExit } from '../../wrappers/vcpu-exit';
import { UnhandledExitError } from '../errors';

/** What to do with an exit that reached {@link failOnUnhandled}. */
export type UnhandledPolicy = 'error' | 'ignore' | ((exit: VcpuExit) => 'error' | 'ignore' | undefined | void); // eslint-disable-line @typescript-eslint/no-invalid-void-type -- a policy may return nothing

/** Options of {@link failOnUnhandled}. */
export interface FailOnUnhandledOptions {
  /**
   * - `'error'` (default): error the stream with an {@link UnhandledExitError};
   * - `'ignore'`: consume the exit silently; `IoIn` and `MmioRead` read all-ones bytes (`0xff`,
   *   like an open bus on real hardware);
   * - a function: called with the exit; return `'error'` or `'ignore'` for the behaviours above,
   *   or nothing to consume the exit as it is (the function may have written `exit.data`). A throw
   *   errors the stream with that error.
   */
  policy?: UnhandledPolicy;
}

function openBus(exit: VcpuExit): void {
  if (exit.kind === 'IoIn' || exit.kind === 'MmioRead') exit.data.fill(0xff);
}

/**
 * Consumes every exit that reaches the end of a pipeline: by default errors the stream with an
 * {@link UnhandledExitError} (`code` `'ERR_KVM_UNHANDLED_EXIT'`, `exit`, and a message such as
 * `unhandled IoIn exit: port 0x3fd, size 1`). Put it last, after the device handlers.
 *
 * ## Example
 * ```ts
 * import { untilHalt, onIoOut, failOnUnhandled } from 'kvm-rx';
 *
 * exits$.pipe(untilHalt(), onIoOut(0x3f8, print), failOnUnhandled({ policy: 'ignore' }));
 * ```
 *
 * @param options `policy`: `'error'` (default), `'ignore'` or a function (see
 * {@link FailOnUnhandledOptions}).
 * @return A function that returns an Observable that emits nothing, and completes or errors.
 * @throws TypeError `ERR_INVALID_ARG_VALUE` for an unknown policy.
 */
export function failOnUnhandled(options: FailOnUnhandledOptions = {}): OperatorFunction<VcpuExit, never> {
  checkObject('options', options);
  const policy = options.policy ?? 'error';
  if (policy !== 'error' && policy !== 'ignore' && typeof policy !== 'function') {
    invalidValue('options.policy', "must be 'error', 'ignore' or a function", policy);
  }
  return (source) =>
    new Observable<never>((subscriber) =>
      source.subscribe({
        next: (exit) => {
          if (subscriber.closed) return;
          let decision: 'error' | 'ignore' | undefined | void; // eslint-disable-line @typescript-eslint/no-invalid-void-type -- what a policy function returns
          try {
            decision = typeof policy === 'function' ? policy(exit) : policy;
          } catch (err) {
            subscriber.error(err);
            return;
          }
          if (decision === 'error') subscriber.error(new UnhandledExitError(exit));
          else if (decision === 'ignore') openBus(exit);
        },
        error: (err: unknown) => subscriber.error(err),
        complete: () => subscriber.complete(),
      }),
    );
}
