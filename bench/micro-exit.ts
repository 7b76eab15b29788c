/**
 * The per-exit JavaScript of kvm-rx without KVM: `decodeExit` on a kvm_run image of a PIO exit,
 * and one exit pushed through case 2's handler pipeline (four onIoOut/onIoIn stages and a tap),
 * as the worker's run loop delivers it. Nanoseconds per exit, 3 rounds of 2 M exits each.
 *
 *   taskset -c 1 npx ts-node --transpile-only bench/micro-exit.ts
 *
 * For what one exit costs against C on real KVM, use `npm run bench`.
 */
import { Subject, tap } from 'rxjs';
import { deliverExit } from '../src/runtime/hold';
import { RUN } from '../src/wrappers/kvm-run';
import { decodeExit, type VcpuExit } from '../src/wrappers/vcpu-exit';
import { ioHandlers, ioState } from './pipelines/io';

const N = 2_000_000;
const page = new Uint8Array(3 * 4096);
const view = new DataView(page.buffer);
const KVM_EXIT_IO = 2;

/** Writes a 1-byte PIO exit into the kvm_run image: `dir` 1 = OUT, 0 = IN. */
function pioExit(dir: number, port: number): void {
  view.setUint32(RUN.exitReason, KVM_EXIT_IO, true);
  view.setUint8(RUN.ioDirection, dir);
  view.setUint8(RUN.ioSize, 1);
  view.setUint16(RUN.ioPort, port, true);
  view.setUint32(RUN.ioCount, 1, true);
  view.setBigUint64(RUN.ioDataOffset, 4096n, true);
}

for (let round = 1; round <= 3; round++) {
  let t0 = process.hrtime.bigint();
  let kinds = 0;
  for (let i = 0; i < N; i++) {
    pioExit(i & 1, 0x10 + (i & 1));
    kinds += decodeExit(view, page).kind.length;
  }
  const decode = Number(process.hrtime.bigint() - t0) / N;

  const state = ioState();
  const exits = new Subject<VcpuExit>();
  let passed = 0;
  exits
    .pipe(
      ioHandlers(state),
      tap(() => undefined),
    )
    .subscribe({ next: () => passed++ });
  pioExit(1, 0x10);
  const out = decodeExit(view, page);
  pioExit(0, 0x11);
  const inn = { ...decodeExit(view, page) };
  const pair = [out, inn];
  const holds: Array<PromiseLike<unknown>> = [];
  const next = (e: VcpuExit) => exits.next(e);
  t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i++) {
    holds.length = 0;
    deliverExit(pair[i & 1], holds, next);
  }
  const pipeline = Number(process.hrtime.bigint() - t0) / N;
  if (kinds === 0 || passed !== 0 || state.counter !== N / 2) throw new Error('the handlers did not run');
  process.stdout.write(
    `round ${round}: decodeExit (with the image write) ${decode.toFixed(0)} ns, pipeline ${pipeline.toFixed(0)} ns per exit\n`,
  );
}
