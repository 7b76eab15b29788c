import { Observable } from 'rxjs';
import type { MonoTypeOperatorFunction } from 'rxjs';
import { invalidValue } from '../../abi/validate';
import { VCPU_EXIT_KINDS } from '../../wrappers/vcpu-exit';
import type { VcpuExit } from '../../wrappers/vcpu-exit';

/**
 * Completes the output when an exit of one of `kinds` arrives (that exit is consumed, not
 * emitted), and passes every exit before it downstream unchanged. Completing unsubscribes from
 * the source, which stops the vCPU's run loop.
 *
 * ## Example
 * Run until the guest halts or triple-faults:
 * ```ts
 * import { stopOn, onIoOut, failOnUnhandled } from 'kvm-rx';
 *
 * exits$.pipe(stopOn('Hlt', 'Shutdown'), onIoOut(0x3f8, print), failOnUnhandled());
 * ```
 *
 * @param kinds One or more `VcpuExit` kinds (`'Hlt'`, `'Shutdown'`, `'SystemEvent'`, …).
 * @return A function that returns an Observable of the exits before the first stop exit.
 * @throws TypeError `ERR_INVALID_ARG_VALUE` when no kind or an unknown kind is given.
 */
export function stopOn(...kinds: Array<VcpuExit['kind']>): MonoTypeOperatorFunction<VcpuExit> {
  if (kinds.length === 0) invalidValue('kinds', 'must name at least one exit kind');
  for (const kind of kinds) {
    if (!(VCPU_EXIT_KINDS as readonly string[]).includes(kind)) invalidValue('kinds', 'must be VcpuExit kinds', kind);
  }
  const stop = new Set<string>(kinds);
  return (source) =>
    new Observable<VcpuExit>((subscriber) =>
      source.subscribe({
        next: (exit) => (stop.has(exit.kind) ? subscriber.complete() : subscriber.next(exit)),
        error: (err: unknown) => subscriber.error(err),
        complete: () => subscriber.complete(),
      }),
    );
}
