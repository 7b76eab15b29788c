/**
 * The seed guest's devices as a kvm-rx pipeline. `examples/seed-example.ts` runs it inside the
 * vCPU's worker thread through `VcpuRuntime`.
 */
import type { Observable } from 'rxjs';
import {
  failOnUnhandled,
  onIoIn,
  onIoOut,
  onMmioRead,
  onMmioWrite,
  untilHalt,
  type VcpuContext,
  type VcpuExit,
} from '../src/index';

export default (exits$: Observable<VcpuExit>, ctx: VcpuContext) =>
  exits$.pipe(
    onIoOut(0x3f8, (e) =>
      ctx.emit(
        'log',
        `IoOut  port 0x3f8 data ${JSON.stringify(Buffer.from(e.data).toString('latin1'))} (worker thread)`,
      ),
    ),
    onIoIn(0x3f8, () => 0x42),
    onMmioWrite({ from: 0x8000n, size: 0x1000 }, (e) =>
      ctx.emit('log', `MmioWrite addr 0x${e.addr.toString(16)} data [${[...e.data].join(', ')}] (worker thread)`),
    ),
    onMmioRead({ from: 0x8000n, size: 0x1000 }, () => 0x77),
    untilHalt(),
    failOnUnhandled(),
  );
