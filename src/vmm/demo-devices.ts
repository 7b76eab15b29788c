/**
 * The demo VM's devices, run in the vCPU's worker thread: a 16550A on COM1 whose interrupt goes
 * to the in-kernel PIC (IRQ 4), whose output goes to the main thread (`tx` events) and whose input
 * comes from the main thread (`run.send('stdin', bytes)`); the i8042 ends the run at a reset; the
 * other legacy ports answer as on a PC without them.
 *
 * For snapshots (`demo.snapshot(path)`, `restoreDemo(path)`): the pipeline starts from the devices'
 * state in `ctx.options.legacyState` when it is given ({@link DemoDevicesOptions}), answers a
 * `kvmrx:save-legacy` input with a `kvmrx:legacy-state` event `{ id, state, error }` (the main
 * thread asks while the vCPU is paused: the paused worker still takes inputs; first KVM finishes
 * the exit the vCPU last took, see `completePendingExit`), and emits
 * `kvmrx:demo-up` once it is subscribed: from then on `stdin` input reaches COM1 (input sent before
 * that would be lost, as nothing listens for it yet).
 *
 * @module
 */
import { EMPTY, Observable, map } from 'rxjs';
import { legacyPc, type LegacyPcDevices } from '../devices/legacy-pc';
import type { DeviceStage } from '../devices/port-device';
import { failOnUnhandled } from '../runtime/operators/failOnUnhandled';
import type { VcpuExit } from '../wrappers/vcpu-exit';
import type { VcpuContext } from '../runtime/pipeline';

/** `ctx.options` of the demo pipeline (structured-cloneable). */
export interface DemoDevicesOptions {
  /** The devices' state to start from (`LegacyPcDevices.saveState()`, from a demo snapshot). */
  legacyState?: unknown;
}

/** What the demo's legacy devices are wired to. */
export interface DemoLegacyWiring {
  /** COM1's interrupt line. */
  irq: (level: boolean) => void;
  /** What the guest writes to COM1. */
  onTx: (bytes: Uint8Array) => void;
  /** What the guest reads from COM1. */
  input$: Observable<Uint8Array>;
  /** The i8042's CPU reset line. */
  onReset: () => void;
}

/**
 * The demo VM's legacy devices (COM1, the i8042, the CMOS, PCI with no device, the debug ports):
 * the pipeline's, and the throwaway set `restoreDemo()` checks a saved state on.
 */
export function demoLegacyPc(w: DemoLegacyWiring): DeviceStage<LegacyPcDevices> {
  return legacyPc({
    com1: { irq: w.irq, onTx: w.onTx, input$: w.input$ },
    i8042: { onReset: w.onReset },
    cmos: {},
    pci: true,
    debug: {},
  });
}

/** A set of the demo's devices wired to nothing, to check a saved state against. */
export function trialDemoLegacyPc(): DeviceStage<LegacyPcDevices> {
  return demoLegacyPc({ irq: () => undefined, onTx: () => undefined, input$: EMPTY, onReset: () => undefined });
}

/**
 * Lets KVM finish the exit the paused vCPU last took, without running a guest instruction: a
 * `KVM_RUN` with `immediate_exit` set completes a pending `in`/`out` (or MMIO) with the answer the
 * pipeline gave, then returns EINTR. Until then the instruction is only half done (KVM keeps that
 * outside any state userspace can save: RIP still points at it, an `in` has not reached AL), and
 * a snapshot would run it again on restore: the byte an `in` took from the UART's FIFO would be
 * lost, a byte an `out` sent would be sent twice (the KVM API documentation asks userspace to do
 * this before saving a vCPU's state). Called in the vCPU's thread while it is paused, out of
 * `KVM_RUN`; the worker's next `KVM_RUN` then goes on into the guest.
 */
function completePendingExit(ctx: VcpuContext): void {
  const vcpu = ctx.vcpu;
  vcpu.setKvmImmediateExit(1);
  try {
    const exit = vcpu.run();
    throw new Error(`KVM_RUN with immediate_exit set ran the guest (a ${exit.kind} exit) instead of returning EINTR`);
  } catch (e) {
    if ((e as { code?: string }).code !== 'EINTR') throw e;
  } finally {
    vcpu.setKvmImmediateExit(0);
  }
}

export default function demoDevices(exits$: Observable<VcpuExit>, ctx: VcpuContext): Observable<VcpuExit> {
  const options = (ctx.options ?? {}) as DemoDevicesOptions;
  const input$ = ctx
    .receive('stdin')
    .pipe(map((d) => (d instanceof Uint8Array ? d : new Uint8Array(d as ArrayBuffer))));
  const pc = demoLegacyPc({
    irq: (level) => ctx.vm.setIrqLine(4, level),
    onTx: (bytes) => ctx.emit('tx', bytes),
    input$,
    onReset: () => ctx.emit('reset', null),
  });
  // The line keeps its saved level: the in-kernel PIC restored from the same snapshot has it.
  if (options.legacyState !== undefined) pc.device.restoreState(options.legacyState);
  return new Observable<VcpuExit>((subscriber) => {
    // A snapshot asks for the devices' state while the vCPU is paused (inputs still arrive then).
    const saveRequests = ctx.receive('kvmrx:save-legacy').subscribe((id) => {
      let state: unknown;
      let error: string | undefined;
      try {
        completePendingExit(ctx);
        state = pc.device.saveState();
      } catch (e) {
        error = (e as Error).message;
      }
      ctx.emit('kvmrx:legacy-state', { id, state, error });
    });
    const sub = exits$.pipe(pc, failOnUnhandled()).subscribe(subscriber);
    sub.add(saveRequests);
    ctx.emit('kvmrx:demo-up', null);
    return sub;
  });
}
