/**
 * The demo VM's devices, run in the vCPU's worker thread: a 16550A on COM1 whose interrupt goes
 * to the in-kernel PIC (IRQ 4), whose output goes to the main thread (`tx` events) and whose input
 * comes from the main thread (`run.send('stdin', bytes)`); the i8042 ends the run at a reset; the
 * other legacy ports answer as on a PC without them.
 *
 * @module
 */
import { map, type Observable } from 'rxjs';
import { legacyPc } from '../devices/legacy-pc';
import { failOnUnhandled } from '../runtime/operators/failOnUnhandled';
import type { VcpuExit } from '../wrappers/vcpu-exit';
import type { VcpuContext } from '../runtime/pipeline';

export default function demoDevices(exits$: Observable<VcpuExit>, ctx: VcpuContext): Observable<VcpuExit> {
  const input$ = ctx
    .receive('stdin')
    .pipe(map((d) => (d instanceof Uint8Array ? d : new Uint8Array(d as ArrayBuffer))));
  return exits$.pipe(
    legacyPc({
      com1: {
        irq: (level) => ctx.vm.setIrqLine(4, level),
        onTx: (bytes) => ctx.emit('tx', bytes),
        input$,
      },
      i8042: { onReset: () => ctx.emit('reset', null) },
      cmos: {},
      pci: true,
      debug: {},
    }),
    failOnUnhandled(),
  );
}
