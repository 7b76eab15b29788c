/**
 * The devices of a Linux VM, run in the vCPU's worker thread (the pipeline `bootLinux()` starts):
 *
 * - COM1, a 16550A whose interrupt goes to the in-kernel PIC/IOAPIC (IRQ 4), whose output goes to
 *   the main thread (`tx` events) and whose input comes from it (`run.send('stdin', bytes)`);
 * - the i8042, whose CPU reset (`reboot=k`) ends the run (`reset` event, `'i8042'`);
 * - the CMOS/RTC with the VM's memory size, PCI mechanism #1 with no device, port 0x80 and the
 *   debug console at 0x402 (`debugcon` events);
 * - KVM emulation failures (`InternalError` exits) fixed up in userspace where possible (int3,
 *   fwait, clac, stac: see `emulation-fallback.ts`); any other one ends the run with an
 *   `EmulationFailureError` naming RIP and the instruction bytes;
 * - a triple fault (`Shutdown`) ends the run as a reset (`reset` event, `'triple-fault'`), which is
 *   how a PC reboots when nothing else works; a `Hlt` exit (only without the in-kernel irqchip)
 *   ends it as a halt (`halt` event);
 * - port I/O and MMIO nobody models read as an open bus (all ones) and writes are dropped: Linux
 *   probes COM2–COM4, parallel ports, VGA and the like; every other exit is an error.
 *
 * Your own device models go in front of these (`devices` option, {@link LinuxDeviceStage}): they
 * see every exit first and pass on the ones they do not handle.
 *
 * At the end it sends a `stats` event: the emulation fallbacks applied and, when `trace` is on,
 * the exit statistics (`ExitStats.snapshot()`).
 *
 * @module
 */
import {
  Observable,
  finalize,
  type Subscription,
  identity,
  map,
  type MonoTypeOperatorFunction,
  type OperatorFunction,
} from 'rxjs';
import { legacyPc, type LegacyPcDevices } from '../devices/legacy-pc';
import type { DeviceStage } from '../devices/port-device';
import { ExitStats, type ExitStatsSnapshot } from '../runtime/operators/ExitStats';
import { UnhandledExitError, describeExit } from '../runtime/errors';
import { failOnUnhandled } from '../runtime/operators/failOnUnhandled';
import { traceExits } from '../runtime/operators/traceExits';
import type { VcpuExit } from '../wrappers/vcpu-exit';
import { exportedFunction, registerTypeScript, type VcpuContext } from '../runtime/pipeline';
import type { VirtioMmioShared } from '../devices/virtio/mmio-transport';
import { virtioMmio } from '../devices/virtio/virtioMmio';
import { emulationFallbackStats, handleEmulationFailure, type EmulationFallbackStats } from './emulation-fallback';

/** `ctx.options` of the Linux device pipeline (structured-cloneable). */
export interface LinuxDevicesOptions {
  /** Guest RAM in bytes, for the CMOS memory-size registers. */
  memSize: number;
  /** Count exits by kind and port (sent in the `stats` event at the end). Default `false`. */
  trace?: boolean;
  /** COM1's IRQ line on the in-kernel irqchip (default 4); `false` without an irqchip. */
  com1Irq?: number | false;
  /**
   * Where the legacy PC devices (COM1, i8042, CMOS, PCI, debug ports) run: `'worker'` (default:
   * in this thread, one vCPU's machine) or `'main'`: they are left out here, and port I/O and
   * other MMIO go to the main thread, where one set of devices serves every vCPU of an SMP guest.
   */
  legacy?: 'worker' | 'main';
  /** The register files of the VM's virtio-mmio devices (`VirtioMmioDevice.shared`), served in this thread. */
  virtio?: VirtioMmioShared[];
  /**
   * The legacy devices' state to start from (`LegacyPcDevices.saveState()`, from a snapshot), with
   * `legacy: 'worker'`. The pipeline also answers a `kvmrx:save-legacy` input with a
   * `kvmrx:legacy-state` event carrying `{ id, state }` (how a snapshot takes it from this thread).
   */
  legacyState?: unknown;
  /** Your device models: a module loaded in the vCPU's thread (see {@link LinuxDeviceStage}). */
  devices?: {
    /** Absolute path of a CommonJS module (or an ES module without top-level await). */
    module: string;
    /** Its export that is the stage (default: `default`, then `devices`). */
    export?: string;
    /** Given to the stage as `ctx.options` (structured-cloned). */
    options?: unknown;
  };
}

/**
 * A pipeline stage with your own device models, run in the vCPU's worker thread in front of the
 * Linux VM's devices: it sees every exit first, answers the ones its devices own (with the
 * operators: `onIoIn`, `onMmioWrite`, …) and passes every other exit on. `ctx.options` is
 * `devices.options`; `ctx.emit(channel, data)` reaches `LinuxVm.events$` and
 * `LinuxVm.post(channel, data)` reaches `ctx.receive(channel)`.
 *
 * @example
 * ```ts
 * // my-devices.ts: a register at port 0x510 that reads 0x5a and reports writes
 * import { onIoIn, onIoOut, type LinuxDeviceStage } from 'kvm-rx';
 * const devices: LinuxDeviceStage = (exits$, ctx) =>
 *   exits$.pipe(
 *     onIoIn(0x510, () => 0x5a),
 *     onIoOut(0x510, (exit) => ctx.emit('mydev', exit.data[0])),
 *   );
 * export default devices;
 * ```
 */
export type LinuxDeviceStage = (exits$: Observable<VcpuExit>, ctx: VcpuContext) => Observable<VcpuExit>;

/** Channels the Linux pipeline itself emits on; a device stage should use others. */
export const LINUX_EVENT_CHANNELS: readonly string[] = [
  'tx',
  'reset',
  'halt',
  'stats',
  'debugcon',
  'kvmrx:legacy-state',
];

/** Loads the `devices` stage in this (the vCPU's) thread. */
function loadDeviceStage(devices: NonNullable<LinuxDevicesOptions['devices']>): LinuxDeviceStage {
  registerTypeScript(devices.module);
  let mod: unknown;
  try {
    // CommonJS, or an ES module without top-level await (Node >= 20.19 loads those with require()).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    mod = require(devices.module);
  } catch (e) {
    if ((e as { code?: string }).code !== 'ERR_REQUIRE_ASYNC_MODULE') throw e;
    throw Object.assign(
      new TypeError(
        `devices module ${devices.module} uses top-level await, but the Linux pipeline loads it synchronously in the vCPU's thread: ` +
          'move the asynchronous set-up into the stage (a handler may return a Promise; the vCPU waits for it)',
        { cause: e },
      ),
      { code: 'ERR_INVALID_ARG_VALUE' },
    );
  }
  return exportedFunction<LinuxDeviceStage>(mod, devices.module, 'devices', devices.export, 'devices');
}

/** How the guest ended the run, as sent in the `reset` / `halt` events. */
export type LinuxResetCause = 'i8042' | 'triple-fault';

/** The `stats` event. */
export interface LinuxDevicesStats {
  emulation: EmulationFallbackStats;
  /** Exit statistics, when `trace` was on. */
  exits?: ExitStatsSnapshot;
  /** Port reads/writes and MMIO accesses that no device models (answered as an open bus). */
  openBus: number;
}

/** Fixes emulation failures the VMM can handle; lets every other exit through. */
function emulationFallback(ctx: VcpuContext, stats: EmulationFallbackStats): MonoTypeOperatorFunction<VcpuExit> {
  return (source) =>
    new Observable<VcpuExit>((subscriber) =>
      source.subscribe({
        next: (exit) => {
          if (exit.kind !== 'InternalError') {
            subscriber.next(exit);
            return;
          }
          try {
            handleEmulationFailure(ctx.vcpu, exit, stats, ctx.memory);
          } catch (e) {
            subscriber.error(e);
          }
        },
        error: (e: unknown) => subscriber.error(e),
        complete: () => subscriber.complete(),
      }),
    );
}

/** Ends the stream at a triple fault (a reset) or a `Hlt` exit, after telling the main thread. */
function untilGuestStops(ctx: VcpuContext): MonoTypeOperatorFunction<VcpuExit> {
  return (source) =>
    new Observable<VcpuExit>((subscriber) =>
      source.subscribe({
        next: (exit) => {
          if (exit.kind === 'Shutdown') {
            ctx.emit('reset', 'triple-fault' satisfies LinuxResetCause);
            subscriber.complete();
          } else if (exit.kind === 'Hlt') {
            ctx.emit('halt', null);
            subscriber.complete();
          } else subscriber.next(exit);
        },
        error: (e: unknown) => subscriber.error(e),
        complete: () => subscriber.complete(),
      }),
    );
}

/** What the legacy devices of a Linux VM are wired to (see {@link linuxLegacyPc}). */
export interface LinuxLegacyWiring {
  /** COM1's interrupt line (absent without an irqchip). */
  irq?: (level: boolean) => void;
  /** What the guest writes to COM1. */
  onTx: (bytes: Uint8Array) => void;
  /** What the guest reads from COM1. */
  input$: Observable<Uint8Array>;
  /** The i8042's CPU reset line. */
  onReset: () => void;
  /** Guest RAM in bytes, for the CMOS. */
  memSize: number;
  /** What the guest writes to the debug console at 0x402. */
  onDebugOutput: (bytes: Uint8Array) => void;
}

/**
 * The legacy PC devices of a Linux VM (COM1, the i8042, the CMOS, PCI with no device, the debug
 * ports): in a vCPU's thread for one vCPU, or once on the main thread for every vCPU of an SMP
 * guest.
 */
export function linuxLegacyPc(w: LinuxLegacyWiring): DeviceStage<LegacyPcDevices> {
  return legacyPc({
    com1: { ...(w.irq ? { irq: w.irq } : {}), onTx: w.onTx, input$: w.input$ },
    i8042: { onReset: w.onReset },
    cmos: { memorySize: w.memSize },
    pci: true,
    debug: { onDebugOutput: w.onDebugOutput },
  });
}

/**
 * The end of a Linux VM's device pipeline: port I/O and MMIO nobody models are an open bus (reads
 * all ones, writes dropped; each one counted with `onOpenBus`), any other exit an
 * `UnhandledExitError` (the runner appends the vCPU's RIP: the vCPU has not moved on yet).
 */
export function openBusOrFail(onOpenBus: () => void): OperatorFunction<VcpuExit, never> {
  return failOnUnhandled({
    policy: (exit) => {
      if (exit.kind === 'IoIn' || exit.kind === 'IoOut' || exit.kind === 'MmioRead' || exit.kind === 'MmioWrite') {
        onOpenBus();
        return 'ignore';
      }
      throw new UnhandledExitError(exit, describeExit(exit));
    },
  });
}

/**
 * The pipeline (default export; loaded by the worker runtime in the vCPU's thread).
 *
 * @example
 * ```ts
 * // @ts-setup: declare const machine: LinuxMachine; // from createLinuxMachine()
 * import { dirname, join } from 'node:path';
 * // What bootLinux() runs: this module (next to the package's entry point) in the vCPU's thread.
 * const pipeline = join(dirname(require.resolve('kvm-rx')), 'vmm/linux-devices.js');
 * const options: LinuxDevicesOptions = { memSize: machine.memSize }; // for the CMOS
 * const runtime = new VcpuRuntime({ maxVcpus: 1 });
 * const run = runtime.start(machine.vcpu, { pipeline, pipelineOptions: options });
 * run.events$.subscribe(({ channel, data }) => {
 *   if (channel === 'tx') process.stdout.write(data as Uint8Array); // COM1 output
 * });
 * ```
 */
export default function linuxDevices(exits$: Observable<VcpuExit>, ctx: VcpuContext): Observable<VcpuExit> {
  const options = (ctx.options ?? {}) as Partial<LinuxDevicesOptions>;
  const memSize = options.memSize ?? 0;
  const irqLine = options.com1Irq === undefined ? 4 : options.com1Irq;
  const emulation = emulationFallbackStats();
  const exitStats = options.trace === true ? new ExitStats() : undefined;
  let openBus = 0;
  const input$ = ctx
    .receive('stdin')
    .pipe(map((d) => (d instanceof Uint8Array ? d : new Uint8Array(d as ArrayBuffer))));
  const devices = options.devices;
  const stage = devices === undefined ? undefined : loadDeviceStage(devices);
  const stageCtx: VcpuContext = { ...ctx, options: devices?.options };
  let legacy: DeviceStage<LegacyPcDevices> | undefined;
  let saveRequests: Subscription | undefined;
  if (options.legacy !== 'main') {
    const pc = (legacy = linuxLegacyPc({
      ...(irqLine === false ? {} : { irq: (level: boolean) => ctx.vm.setIrqLine(irqLine, level) }),
      onTx: (bytes) => ctx.emit('tx', bytes),
      input$,
      onReset: () => ctx.emit('reset', 'i8042' satisfies LinuxResetCause),
      memSize,
      onDebugOutput: (bytes) => ctx.emit('debugcon', bytes),
    }));
    if (options.legacyState !== undefined) pc.device.restoreState(options.legacyState);
    // A snapshot asks for the devices' state while the vCPU is paused (inputs still arrive then).
    saveRequests = ctx.receive('kvmrx:save-legacy').subscribe((id) => {
      let state: unknown;
      let error: string | undefined;
      try {
        state = pc.device.saveState();
      } catch (e) {
        error = (e as Error).message;
      }
      ctx.emit('kvmrx:legacy-state', { id, state, error });
    });
  }
  return exits$.pipe(
    exitStats ? traceExits(exitStats) : identity,
    stage ? (source: Observable<VcpuExit>) => stage(source, stageCtx) : identity,
    options.virtio !== undefined && options.virtio.length > 0 ? virtioMmio(options.virtio) : identity,
    legacy ?? identity,
    emulationFallback(ctx, emulation),
    untilGuestStops(ctx),
    finalize(() => {
      saveRequests?.unsubscribe();
      const stats: LinuxDevicesStats = { emulation, openBus };
      if (exitStats) stats.exits = exitStats.snapshot();
      ctx.emit('stats', stats);
    }),
    options.legacy === 'main'
      ? identity // what is left goes to the main thread's devices (start() with unhandled: 'main')
      : (openBusOrFail(() => openBus++) as MonoTypeOperatorFunction<VcpuExit>),
  );
}
