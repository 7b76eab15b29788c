/**
 * The benchmark's device handlers, as kvm-rx operators. The same handling as bench/c/kvm-bench.c:
 * OUT 0x10 adds the byte to a checksum, IN 0x11 answers a counter byte, IN 0x12 / IN 0x13 are the
 * start / end markers (they take the time and answer 0).
 *
 * The default export is the worker pipeline (case 2): it runs inside the vCPU's thread and sends
 * the measured time to the main thread with `ctx.emit('elapsed', ns)`.
 */
import { tap, type Observable, type OperatorFunction } from 'rxjs';
import { failOnUnhandled, onIoIn, onIoOut, untilHalt } from '../../src/runtime/operators/index';
import type { VcpuExit } from '../../src/wrappers/vcpu-exit';
import type { VcpuContext } from '../../src/runtime/pipeline';

/** What the handlers record. */
export interface IoState {
  sum: number;
  counter: number;
  t0: bigint;
  t1: bigint;
}

export function ioState(): IoState {
  return { sum: 0, counter: 0, t0: 0n, t1: 0n };
}

/** The four port handlers, composed. Exits they do not handle (Hlt) pass through. */
export function ioHandlers(s: IoState): OperatorFunction<VcpuExit, VcpuExit> {
  return (exits$) =>
    exits$.pipe(
      onIoOut(0x10, (e) => {
        s.sum += e.data[0];
      }),
      onIoIn(0x11, () => s.counter++ & 0xff),
      onIoIn(0x12, () => {
        s.t0 = process.hrtime.bigint();
        return 0;
      }),
      onIoIn(0x13, () => {
        s.t1 = process.hrtime.bigint();
        return 0;
      }),
    );
}

/**
 * The worker pipeline: handlers, then complete at the halt; anything else is an error. The time
 * between the markers goes to `ctx.options.result` (a SharedArrayBuffer: Float64 ns), which the
 * main thread can read as soon as `run.done` resolves (an `events$` message may still be in
 * flight then).
 */
export default function ioPipeline(exits$: Observable<VcpuExit>, ctx: VcpuContext): Observable<unknown> {
  const s = ioState();
  const result = (ctx.options as { result?: SharedArrayBuffer } | undefined)?.result;
  return exits$.pipe(
    ioHandlers(s),
    tap((e) => {
      if (e.kind !== 'Hlt') return;
      if (result) new Float64Array(result)[0] = Number(s.t1 - s.t0);
      ctx.emit('elapsed', Number(s.t1 - s.t0));
    }),
    untilHalt(),
    failOnUnhandled(),
  );
}
