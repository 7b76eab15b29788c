import { Observable } from 'rxjs';
import type { MonoTypeOperatorFunction } from 'rxjs';
import { invalidType } from '../../abi/validate';
import type { VcpuExit } from '../../wrappers/vcpu-exit';
import { ExitStats } from './ExitStats';

/**
 * Passes every exit through unchanged and records it in `stats`: counts by kind, by port and by
 * MMIO address, and the latency from each exit's arrival to the next one's (time spent in the
 * handlers plus the guest's run until it exits again; the last exit of a run has none).
 *
 * ## Example
 * ```ts
 * import { ExitStats, traceExits, untilHalt } from 'kvm-rx';
 *
 * const stats = new ExitStats();
 * exits$.pipe(traceExits(stats), untilHalt(), onIoOut(0x3f8, print));
 * // after the run
 * console.log(stats.snapshot());
 * ```
 *
 * @param stats The {@link ExitStats} to fill (its `now` is the clock).
 * @return A function that returns an Observable of the same exits.
 * @throws TypeError `ERR_INVALID_ARG_TYPE` if `stats` is not an ExitStats.
 */
export function traceExits(stats: ExitStats): MonoTypeOperatorFunction<VcpuExit> {
  if (!(stats instanceof ExitStats)) invalidType('stats', 'an instance of ExitStats', stats);
  return (source) =>
    new Observable<VcpuExit>((subscriber) => {
      let last: number | undefined;
      return source.subscribe({
        next: (exit) => {
          const t = stats.now();
          if (last !== undefined) stats.recordLatency(t - last);
          last = t;
          stats.record(exit);
          subscriber.next(exit);
        },
        error: (err: unknown) => subscriber.error(err),
        complete: () => subscriber.complete(),
      });
    });
}
