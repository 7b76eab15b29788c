/**
 * Booting Linux on the worker runtime: `bootLinux()` builds the machine (`createLinuxMachine`),
 * runs vCPU 0 in a worker thread with the Linux device pipeline (`linux-devices.ts`: COM1 with
 * interrupts, i8042 reset, CMOS, emulation-failure fallbacks) and reports how the guest ended.
 *
 * @module
 */
import { extname, join } from 'node:path';
import { Subject, merge, type Observable } from 'rxjs';
import { checkObject, checkString, invalidType, invalidValue } from '../abi/validate';
import type { ExitStatsSnapshot } from '../runtime/operators/ExitStats';
import type { VcpuRun } from '../runtime/vcpu-run';
import { VcpuRuntime, modulePath } from '../runtime/pool';
import { Kvm } from '../wrappers/kvm';
import { VirtioMmioDevice, type VirtioDevice } from '../devices/virtio/mmio-device';
import { saveVcpuState, saveVmState, saveableMsrs, type VcpuState, type VmState } from './vcpu-state';
import { KvmRangeError } from '../abi/errors';
import { createLinuxMachine, type BootInfo, type LinuxMachineConfig } from './boot';
import { emulationFallbackStats, type EmulationFallbackStats } from './emulation-fallback';
import {
  linuxLegacyPc,
  openBusOrFail,
  type LinuxDevicesOptions,
  type LinuxDevicesStats,
  type LinuxResetCause,
} from './linux-devices';

/** Options of {@link bootLinux}: the machine (see `LinuxMachineConfig`) and how to run it. */
export interface BootLinuxOptions extends LinuxMachineConfig {
  /** Receives what the guest writes to COM1 (also on `handle.output$`). */
  output?: (bytes: Uint8Array) => void;
  /** Count exits by kind and port (`outcome.stats`). Default `false`. */
  trace?: boolean;
  /** Stops the VM (outcome `'stopped'`). */
  signal?: AbortSignal;
  /** A runtime to run the vCPU on (default: a new one with one thread, closed at the end). */
  runtime?: VcpuRuntime;
  /** The `Kvm` to create the VM with (default: a new one, closed at the end). */
  kvm?: Kvm;
  /**
   * Your own device models, in front of the VM's: a module (path or file URL) whose export (default
   * `default`, then `devices`) is a `LinuxDeviceStage` (`linux-devices.ts`), loaded in the vCPU's worker thread.
   * A module that cannot be loaded, or has no such function, ends the run with that error.
   * Its `ctx.emit()` values arrive on {@link LinuxVm.events$}.
   */
  devices?: { pipeline: string | URL; export?: string; options?: unknown };
  /**
   * virtio devices (`virtioRng()`, `virtioConsole()`, …), each on a virtio-mmio transport: device
   * i at guest-physical 0xd0000000 + i × 4 KiB with its interrupt on {@link VIRTIO_GSIS}[i],
   * announced to the kernel with `virtio_mmio.device=` entries appended to the command line. Needs
   * the in-kernel irqchip, RAM below 0xd0000000, and a kernel with virtio-mmio built in
   * (`npm run guest:kernel`). At most 8.
   */
  virtio?: VirtioDevice[];
  /** Where a virtio device that needs a reset says why (default: `process.emitWarning`). */
  virtioLog?: (message: string) => void;
}

/** Guest-physical base of the first virtio-mmio device of {@link bootLinux}. */
export const VIRTIO_MMIO_BASE = 0xd000_0000n;
/** The ISA interrupts {@link bootLinux} gives its virtio devices, in order (the ones a PC leaves free). */
export const VIRTIO_GSIS: readonly number[] = [5, 6, 7, 9, 10, 11, 14, 15];

/** How a Linux guest's run ended. */
export interface LinuxOutcome {
  /**
   * - `'reset'`: the guest reset the machine (i8042 reset line, or a triple fault): how Linux
   *   reboots, and how `panic=-1 reboot=k` ends a panic;
   * - `'halt'`: a `Hlt` exit (only without the in-kernel irqchip);
   * - `'stopped'`: `signal` aborted or `handle.stop()`;
   * - `'error'`: an exit the VMM cannot handle (`error` says which, with RIP), or a KVM failure.
   */
  reason: 'reset' | 'halt' | 'stopped' | 'error';
  /** What reset the machine, for `'reset'`. */
  resetBy?: LinuxResetCause;
  error?: Error;
  /** Exits the vCPU took to userspace. */
  exits: number;
  /** Wall time from the start of the vCPU to the end, in ms. */
  wallMs: number;
  /** Emulation failures fixed up in userspace, by instruction. */
  emulation: EmulationFallbackStats;
  /** Exit statistics (counts by kind, port, MMIO address), with `trace`. */
  stats?: ExitStatsSnapshot;
  /** Port and MMIO accesses no device models (answered as an open bus). */
  openBus: number;
}

/** A booting Linux VM. */
export interface LinuxVm {
  /** Where the loader put the kernel, initrd, command line and zero page. */
  readonly boot: BootInfo;
  /** The virtio devices, in the order given (closed at the end). */
  readonly virtio: readonly VirtioMmioDevice[];
  /** The number of vCPUs. */
  readonly cpus: number;
  readonly memSize: number;
  /** What the guest writes to COM1, one chunk per exit. Completes at the end. */
  readonly output$: Observable<Uint8Array>;
  /**
   * Everything the vCPU's pipeline emits (`ctx.emit(channel, data)`): your `devices` stage's
   * channels, and the VM's own (`tx`, `reset`, `halt`, `stats`, `debugcon`). Completes at the end.
   */
  readonly events$: Observable<{ channel: string; data: unknown }>;
  /** Types `bytes` into COM1 (delivered even while the guest sleeps in `hlt`). */
  send(bytes: Uint8Array | string): void;
  /**
   * Sends `data` to your `devices` stage (`ctx.receive(channel)`), delivered between exits.
   *
   * @throws `TypeError` (`ERR_INVALID_ARG_VALUE`) for a channel the VM itself uses (`stdin`)
   */
  post(channel: string, data: unknown): void;
  /**
   * Calls a method of the running vCPU on its own thread, between two exits (see `VcpuRun.call`):
   * where the guest is, what it sees. Rejects with `ERR_KVM_CLOSED` once the VM has ended.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const linux: LinuxVm; // what bootLinux() returned
   * const { rip } = await linux.call('getRegs');
   * ```
   */
  call: VcpuRun['call'];
  /**
   * Pauses every vCPU between two exits (each out of `KVM_RUN`, see `VcpuRun.pause`); the
   * devices keep running. Resolves once all are paused.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const linux: LinuxVm;
   * await linux.pause();
   * const state = linux.saveState(); // every vCPU's and the VM's KVM state
   * linux.resume();
   * ```
   * @throws (rejects) `ERR_KVM_CLOSED` once the VM has ended
   */
  pause(): Promise<void>;
  /** Lets paused vCPUs run again. */
  resume(): void;
  /**
   * The KVM state of every vCPU and of the VM's in-kernel devices (`saveVcpuState`, `saveVmState`)
   * while it is paused. Not the device models' state, nor guest memory.
   *
   * @throws `Error` `ERR_KVM_NOT_PAUSED` unless every vCPU is paused; {@link KvmError} from the ioctls
   */
  saveState(): { vcpus: VcpuState[]; vm: VmState };
  /** Stops the VM; resolves with the outcome. */
  stop(): Promise<LinuxOutcome>;
  /** Resolves with the outcome once the VM has ended and everything is closed. Never rejects. */
  readonly done: Promise<LinuxOutcome>;
}

function pipelinePath(): string {
  return join(__dirname, `linux-devices${extname(__filename)}`);
}

/**
 * Boots a Linux kernel (ELF vmlinux or bzImage with an uncompressed payload) with its serial
 * console on COM1. The machine is built synchronously, so a bad kernel or initrd throws before
 * anything runs; the vCPU then runs in a worker thread.
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * const vm = bootLinux({ kernel: readFileSync('vmlinux'), cmdline: 'console=ttyS0 panic=-1 reboot=k', output: (b) => process.stdout.write(b) });
 * process.stdin.on('data', (b) => vm.send(b));
 * const outcome = await vm.done; // { reason: 'reset', resetBy: 'i8042', exits: 31712, … }
 * ```
 * @throws {@link BootImageError} for a bad kernel or initrd; `RangeError`/`TypeError` for bad
 *   options; {@link KvmError} when the VM cannot be created
 */
export function bootLinux(options: BootLinuxOptions): LinuxVm {
  checkObject('options', options);
  if (options.output !== undefined && typeof options.output !== 'function')
    invalidType('options.output', 'of type function', options.output);
  const devices = options.devices === undefined ? undefined : checkDevices(options.devices);
  const virtio = checkVirtio(options);
  const ownKvm = options.kvm === undefined;
  const kvm = options.kvm ?? new Kvm();
  let machine;
  const virtioDevices: VirtioMmioDevice[] = [];
  try {
    const placed = virtio.map((_, i) => ({ base: VIRTIO_MMIO_BASE + BigInt(i) * 0x1000n, gsi: VIRTIO_GSIS[i] }));
    const entries = placed.map(({ base, gsi }) => `virtio_mmio.device=4K@0x${base.toString(16)}:${gsi}`);
    const cmdline = [options.cmdline ?? '', ...entries].filter((s) => s !== '').join(' ');
    machine = createLinuxMachine(kvm, virtio.length > 0 ? { ...options, cmdline } : options);
    if (virtio.length > 0 && BigInt(machine.memSize) > VIRTIO_MMIO_BASE) {
      machine.close();
      throw new KvmRangeError(
        'ERR_OUT_OF_RANGE',
        `options.memSize must be at most 0x${VIRTIO_MMIO_BASE.toString(16)} bytes with virtio devices (their registers start there); got ${machine.memSize}`,
      );
    }
    try {
      for (const [i, device] of virtio.entries())
        virtioDevices.push(
          new VirtioMmioDevice(machine.vm, device, {
            ...placed[i],
            ...(options.virtioLog ? { log: options.virtioLog } : {}),
          }),
        );
    } catch (e) {
      machine.close(); // closes the devices made so far with the VM
      throw e;
    }
  } catch (e) {
    if (ownKvm) kvm.close();
    throw e;
  }
  const ownRuntime = options.runtime === undefined;
  const cpus = machine.vcpus.length;
  const smp = cpus > 1;
  const runtime = options.runtime ?? new VcpuRuntime({ maxVcpus: cpus });
  const irqchip = options.irqchip ?? true;
  const pipelineOptions: LinuxDevicesOptions = {
    memSize: machine.memSize,
    trace: options.trace === true,
    com1Irq: irqchip ? 4 : false,
    ...(devices ? { devices } : {}),
    ...(virtioDevices.length > 0 ? { virtio: virtioDevices.map((d) => d.shared) } : {}),
    // With several vCPUs the legacy devices run once, on this thread, for all of them.
    ...(smp ? { legacy: 'main' as const } : {}),
  };
  const output = new Subject<Uint8Array>();
  const events = new Subject<{ channel: string; data: unknown }>();
  const stdin = new Subject<Uint8Array>();
  const t0 = performance.now();
  const runs: VcpuRun[] = [];
  let resetBy: LinuxResetCause | undefined;
  let halted = false;
  let mainError: Error | undefined;
  let mainOpenBus = 0;
  const stats: LinuxDevicesStats[] = [];
  const stopAll = () => {
    for (const r of runs) void r.stop();
  };
  try {
    for (const vcpu of machine.vcpus) {
      runs.push(
        runtime.start(vcpu, {
          pipeline: pipelinePath(),
          pipelineOptions,
          signal: options.signal,
          ...(smp ? { unhandled: 'main' as const } : {}),
        }),
      );
    }
  } catch (e) {
    for (const r of runs) void r.stop();
    machine.close();
    if (ownKvm) kvm.close();
    if (ownRuntime) void runtime.close();
    throw e;
  }
  const emitTx = (bytes: Uint8Array) => {
    options.output?.(bytes);
    output.next(bytes);
  };
  if (smp) {
    // One set of legacy devices for every vCPU: the exits the workers leave reach this thread,
    // one at a time, each answered before its vCPU resumes.
    const pc = linuxLegacyPc({
      irq: (level: boolean) => machine.vm.setIrqLine(4, level),
      onTx: emitTx,
      input$: stdin,
      onReset: () => {
        resetBy ??= 'i8042';
        stopAll();
      },
      memSize: machine.memSize,
      onDebugOutput: (bytes) => events.next({ channel: 'debugcon', data: bytes }),
    });
    merge(...runs.map((r) => r.exits$))
      .pipe(
        pc,
        openBusOrFail(() => mainOpenBus++),
      )
      .subscribe({
        error: (e: unknown) => {
          mainError ??= e as Error;
          stopAll();
        },
      });
  }
  for (const run of runs) {
    run.events$.subscribe(({ channel, data }) => {
      events.next({ channel, data });
      if (channel === 'tx') emitTx(data as Uint8Array);
      else if (channel === 'reset') {
        resetBy ??= data as LinuxResetCause;
        if (smp) stopAll();
      } else if (channel === 'halt') halted = true;
      else if (channel === 'stats') stats.push(data as LinuxDevicesStats);
    });
  }
  const finish = async (): Promise<LinuxOutcome> => {
    let exits = 0;
    let error: Error | undefined;
    let completed = false;
    const settled = await Promise.allSettled(runs.map((r) => r.done));
    settled.forEach((r, i) => {
      if (r.status === 'fulfilled') {
        exits += r.value.exits;
        if (r.value.reason === 'completed') completed = true;
      } else {
        error ??= r.reason as Error;
        exits += runs[i].exitCount;
      }
      // The first run to end ends the machine.
    });
    error ??= mainError;
    const wallMs = performance.now() - t0;
    for (const d of virtioDevices) d.close();
    machine.close();
    if (ownKvm) kvm.close();
    if (ownRuntime) await runtime.close();
    output.complete();
    events.complete();
    stdin.complete();
    let reason: LinuxOutcome['reason'];
    if (error !== undefined) reason = 'error';
    else if ((completed || smp) && resetBy !== undefined) reason = 'reset';
    else if (completed && halted) reason = 'halt';
    else reason = 'stopped';
    const emulation = emulationFallbackStats();
    for (const st of stats)
      for (const k of Object.keys(emulation) as Array<keyof EmulationFallbackStats>) emulation[k] += st.emulation[k];
    const outcome: LinuxOutcome = {
      reason,
      exits,
      wallMs,
      emulation,
      openBus: stats.reduce((n, st) => n + st.openBus, 0) + mainOpenBus,
    };
    if (reason === 'reset') outcome.resetBy = resetBy;
    if (error !== undefined) outcome.error = error;
    const traced = stats.find((st) => st.exits !== undefined);
    if (traced?.exits !== undefined && stats.length === 1) outcome.stats = traced.exits;
    return outcome;
  };
  // When one vCPU's run ends (a triple fault, an error), the machine ends: stop the others.
  for (const r of runs) void r.done.then(stopAll, stopAll);
  const done = finish();
  const run0 = runs[0];
  return {
    boot: machine.boot,
    virtio: virtioDevices,
    cpus,
    memSize: machine.memSize,
    output$: output.asObservable(),
    events$: events.asObservable(),
    send: (bytes) => {
      const data = typeof bytes === 'string' ? new Uint8Array(Buffer.from(bytes, 'latin1')) : bytes;
      if (smp) stdin.next(data);
      else run0.send('stdin', data);
    },
    post: (channel, data) => {
      checkString('channel', channel);
      if (channel === 'stdin') invalidValue('channel', "is the VM's own (COM1 input: use send())", channel);
      run0.send(channel, data);
    },
    call: (method, ...args) => run0.call(method, ...args),
    pause: async () => {
      await Promise.all(runs.map((r) => r.pause()));
    },
    resume: () => {
      for (const r of runs) r.resume();
    },
    saveState: () => {
      if (!runs.every((r) => r.paused))
        throw Object.assign(new Error('the VM is not paused: await pause() first'), { code: 'ERR_KVM_NOT_PAUSED' });
      const msrs = saveableMsrs(kvm);
      return { vcpus: machine.vcpus.map((v) => saveVcpuState(kvm, v, msrs)), vm: saveVmState(machine.vm) };
    },
    stop: async () => {
      await Promise.all(runs.map((r) => r.stop()));
      return done;
    },
    done,
  };
}

function checkVirtio(options: BootLinuxOptions): VirtioDevice[] {
  if (options.virtio === undefined) return [];
  if (!Array.isArray(options.virtio)) invalidType('options.virtio', 'an array of VirtioDevice', options.virtio);
  if (options.virtio.length > VIRTIO_GSIS.length)
    throw new KvmRangeError(
      'ERR_OUT_OF_RANGE',
      `options.virtio must have at most ${VIRTIO_GSIS.length} devices; got ${options.virtio.length}`,
    );
  if (options.virtio.length > 0 && options.irqchip === false)
    invalidValue('options.irqchip', 'must not be false with virtio devices (their interrupts are irqfds)', false);
  for (const [i, d] of options.virtio.entries()) {
    checkObject(`options.virtio[${i}]`, d);
    if (typeof d.activate !== 'function') invalidType(`options.virtio[${i}].activate`, 'a function', typeof d.activate);
  }
  return options.virtio;
}

function checkDevices(devices: NonNullable<BootLinuxOptions['devices']>): NonNullable<LinuxDevicesOptions['devices']> {
  checkObject('options.devices', devices);
  const module = modulePath('options.devices.pipeline', devices.pipeline);
  if (devices.export !== undefined) checkString('options.devices.export', devices.export);
  if (devices.options !== undefined) {
    try {
      structuredClone(devices.options); // it goes to the vCPU's thread
    } catch (e) {
      invalidValue('options.devices.options', `must be structured-cloneable (${(e as Error).message})`);
    }
  }
  return {
    module,
    ...(devices.export !== undefined ? { export: devices.export } : {}),
    ...(devices.options !== undefined ? { options: devices.options } : {}),
  };
}
