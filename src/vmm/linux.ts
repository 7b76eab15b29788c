/**
 * Booting Linux on the worker runtime: `bootLinux()` builds the machine (`createLinuxMachine`),
 * runs vCPU 0 in a worker thread with the Linux device pipeline (`linux-devices.ts`: COM1 with
 * interrupts, i8042 reset, CMOS, emulation-failure fallbacks) and reports how the guest ended.
 *
 * @module
 */
import { extname, join, resolve } from 'node:path';
import { EMPTY, Subject, filter, firstValueFrom, map, merge, type Observable } from 'rxjs';
import { checkObject, checkString, invalidType, invalidValue } from '../abi/validate';
import type { ExitStatsSnapshot } from '../runtime/operators/ExitStats';
import type { VcpuRun } from '../runtime/vcpu-run';
import { VcpuRuntime, modulePath } from '../runtime/pool';
import { Kvm } from '../wrappers/kvm';
import { VirtioMmioDevice, type VirtioDevice } from '../devices/virtio/mmio-device';
import { saveVcpuState, saveVmState, saveableMsrs, type VcpuState, type VmState } from './vcpu-state';
import { KvmClosedError, KvmRangeError } from '../abi/errors';
import {
  LINUX_SNAPSHOT_MACHINE,
  checkLinuxSnapshotState,
  PreparedLinuxVm,
  restoreLinuxMachine,
  type LinuxSnapshotState,
  type LinuxSnapshotVirtio,
} from './linux-snapshot';
import { SnapshotError } from './errors';
import { GDB_MACHINE, type Debuggable } from './gdb/kvm-target';
import { hostOfKvm, readSnapshotChain, writeSnapshotFile, type SnapshotHeader } from './snapshot-file';
import { createLinuxMachine, type BootInfo, type LinuxMachine, type LinuxMachineConfig } from './boot';
import type { LegacyPcDevices } from '../devices/legacy-pc';
import type { DeviceStage } from '../devices/port-device';
import { emulationFallbackStats, type EmulationFallbackStats } from './emulation-fallback';
import {
  linuxLegacyPc,
  openBusOrFail,
  type LinuxDevicesOptions,
  type LinuxDevicesStats,
  type LinuxResetCause,
} from './linux-devices';

/** Options of {@link LinuxVm.snapshot}. */
export interface LinuxSnapshotOptions {
  /** Write only the pages changed since the last snapshot (needs `trackDirtyPages`). Default `false`. */
  diff?: boolean;
  /** Write a SHA-256 of guest memory too (checked on restore with `verifyMemory`). Default `false`. */
  checksumMemory?: boolean;
  /** Your own data to keep with it (JSON data, bigints, bytes): `LinuxSnapshotState.meta`. */
  meta?: unknown;
}

/** How {@link bootLinux} and {@link restoreLinux} run the machine. */
export interface RunLinuxOptions {
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
  /** Where a virtio device that needs a reset says why (default: `process.emitWarning`). */
  virtioLog?: (message: string) => void;
  /**
   * Start with every vCPU parked before its first instruction, until `resume()` (or a debugger's
   * `continue`: `attachGdb(vm, { listen, wait: true })`). Default `false`.
   */
  paused?: boolean;
}

/** Options of {@link bootLinux}: the machine (see `LinuxMachineConfig`) and how to run it. */
export interface BootLinuxOptions extends LinuxMachineConfig, RunLinuxOptions {
  /**
   * virtio devices (`virtioRng()`, `virtioConsole()`, …), each on a virtio-mmio transport: device
   * i at guest-physical 0xd0000000 + i × 4 KiB with its interrupt on {@link VIRTIO_GSIS}[i],
   * announced to the kernel with `virtio_mmio.device=` entries appended to the command line. Needs
   * the in-kernel irqchip, RAM below 0xd0000000, and a kernel with virtio-mmio built in
   * (`npm run guest:kernel`). At most 8.
   */
  virtio?: VirtioDevice[];
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

/** A booting Linux VM. `attachGdb(vm, { listen })` serves gdb for it. */
export interface LinuxVm extends Debuggable {
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
  /**
   * Writes a snapshot of the running VM to `path` (the file format: docs/snapshots.md): pauses every
   * vCPU, waits for the virtio devices' requests in flight to finish, saves the device models, the
   * vCPUs' and the VM's KVM state and guest RAM, then lets the VM run on (unless it was paused
   * before). `{ diff: true }` writes only the pages changed since the last snapshot of this VM (or
   * the one it was restored from): it needs `trackDirtyPages`. Restore with {@link restoreLinux}.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const linux: LinuxVm;
   * await linux.snapshot('booted.snap');
   * await linux.snapshot('later.snap', { diff: true }); // with bootLinux({ trackDirtyPages: true, … })
   * ```
   * @throws (rejects) `Error` `ERR_KVM_CLOSED` once the VM has ended, `ERR_KVM_BUSY` while another
   *   snapshot is being written, `ERR_KVM_NO_DIRTY_LOG` for a diff without `trackDirtyPages` or
   *   without an earlier snapshot; {@link KvmError} from the ioctls; `Error` from the file system
   */
  snapshot(path: string, options?: LinuxSnapshotOptions): Promise<SnapshotHeader>;
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
  if (options.paused !== undefined && typeof options.paused !== 'boolean')
    invalidType('options.paused', 'of type boolean', options.paused);
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
  return startLinux({
    kvm,
    ownKvm,
    machine,
    virtioDevices,
    options,
    devices,
    trackDirtyPages: options.trackDirtyPages === true,
  });
}

/** Options of {@link restoreLinux}. */
export interface RestoreLinuxOptions extends RunLinuxOptions {
  /**
   * The virtio devices again (their backends reopened in this process: the disk image, the tap,
   * the vsock socket), of the same kinds in the same order as in the snapshot; each is put back
   * into its saved state.
   */
  virtio?: VirtioDevice[];
  /** Log the guest's writes for diff snapshots of the restored VM (default: as the snapshot was taken). */
  trackDirtyPages?: boolean;
  /** Check the memory checksums the snapshot has (reads all of memory: not constant time). Default `false`. */
  verifyMemory?: boolean;
  /**
   * A VM made ahead ({@link prepareLinuxRestore}) with the snapshot's RAM size and vCPU count:
   * the restore maps the RAM over its mapping and restores the vCPUs into it, without creating a
   * VM, a memory slot or vCPUs (3–4 ms of the kernel's time on the PVM hosts measured). Its `Kvm`
   * is the restored VM's (`options.kvm` must be the same or absent), and its `trackDirtyPages` the
   * default. It is used up, also when the restore fails after taking it; a snapshot that does
   * not fit it is refused (`ERR_KVM_SNAPSHOT_MISMATCH`) and leaves it usable.
   */
  prepared?: PreparedLinuxVm;
}

/**
 * Restores a `bootLinux()` VM from a snapshot (`linux.snapshot(path)`), in this process or
 * another, and runs it: the file and the chain of snapshots a diff builds on are checked (format
 * version, checksums, the host CPU, the machine) before anything is created; the VM, its RAM
 * (mapped privately from the file: pages are read when the guest first touches them), vCPUs and
 * in-kernel devices are rebuilt in the kernel's order, then the device models are put back, and
 * the vCPUs go on where they were. Nothing is left behind when it throws.
 *
 * @example
 * ```ts
 * const linux = restoreLinux('booted.snap', { output: (b) => process.stdout.write(b) });
 * linux.send('echo hello\n');
 * ```
 * @throws {@link SnapshotError} for a file that cannot be restored here (`code` says why:
 *   corrupt, truncated, format version, host CPU, machine kind or virtio devices that differ);
 *   `TypeError`/`RangeError` for bad options; {@link KvmError} from the ioctls
 */
export function restoreLinux(path: string, options: RestoreLinuxOptions = {}): LinuxVm {
  checkString('path', path);
  checkObject('options', options);
  if (options.paused !== undefined && typeof options.paused !== 'boolean')
    invalidType('options.paused', 'of type boolean', options.paused);
  if (options.output !== undefined && typeof options.output !== 'function')
    invalidType('options.output', 'of type function', options.output);
  if (options.trackDirtyPages !== undefined && typeof options.trackDirtyPages !== 'boolean')
    invalidType('options.trackDirtyPages', 'of type boolean', options.trackDirtyPages);
  const devices = options.devices === undefined ? undefined : checkDevices(options.devices);
  const virtio = checkVirtio(options);
  const chain = readSnapshotChain(path, { verifyMemory: options.verifyMemory === true });
  const last = chain[chain.length - 1];
  const state = checkLinuxSnapshotState(last);
  if (virtio.length !== state.virtio.length || virtio.some((d, i) => d.deviceId !== state.virtio[i].deviceId))
    throw new SnapshotError(
      'ERR_KVM_SNAPSHOT_MISMATCH',
      last.path,
      `it has virtio devices [${state.virtio.map((d) => `${d.name} (id ${d.deviceId})`).join(', ')}]; options.virtio has [${virtio.map((d) => `${d.name} (id ${d.deviceId})`).join(', ')}]`,
    );
  // The legacy devices' state is checked here, on a throwaway set, before anything is created.
  try {
    trialLegacyPc(state.memSize).device.restoreState(state.legacyDevices);
  } catch (e) {
    throw new SnapshotError(
      'ERR_KVM_SNAPSHOT_CORRUPT',
      last.path,
      `its legacy device state is refused: ${(e as Error).message}`,
    );
  }
  const prepared = options.prepared;
  if (prepared !== undefined) {
    if (!(prepared instanceof PreparedLinuxVm))
      invalidType('options.prepared', 'a PreparedLinuxVm (prepareLinuxRestore)', prepared);
    if (options.kvm !== undefined && options.kvm !== prepared.kvm)
      invalidValue('options.kvm', "must be the prepared VM's Kvm, or absent", options.kvm);
  }
  const trackDirtyPages = options.trackDirtyPages ?? prepared?.trackDirtyPages ?? state.trackDirtyPages;
  const ownKvm = prepared !== undefined ? prepared.ownKvm : options.kvm === undefined;
  const kvm = prepared?.kvm ?? options.kvm ?? new Kvm();
  // A prepared VM refused before it was taken stays usable, with its Kvm.
  const closeKvm = () => {
    if (ownKvm && (prepared === undefined || prepared.used)) kvm.close();
  };
  let machine: LinuxMachine | undefined;
  const virtioDevices: VirtioMmioDevice[] = [];
  try {
    machine = restoreLinuxMachine(kvm, chain, state, {
      trackDirtyPages,
      ...(prepared !== undefined ? { prepared } : {}),
    });
    for (const [i, device] of virtio.entries()) {
      const saved = state.virtio[i];
      const d = new VirtioMmioDevice(machine.vm, device, {
        base: BigInt(saved.base),
        gsi: saved.gsi,
        ...(options.virtioLog ? { log: options.virtioLog } : {}),
      });
      virtioDevices.push(d);
      try {
        // Registers now; the device starts working at the next microtask checkpoint, after
        // startLinux() below has handed the vCPUs to their threads (their notifications wait in
        // the ioeventfds meanwhile): its work on restore (views of guest memory, held receive
        // buffers handed back with a tap read each) then runs while the guest does.
        d.restoreState(saved.state, { activation: 'deferred' });
      } catch (e) {
        if (e instanceof TypeError || e instanceof RangeError)
          throw new SnapshotError(
            'ERR_KVM_SNAPSHOT_CORRUPT',
            last.path,
            `virtio device ${i} (${saved.name}) refuses its state: ${e.message}`,
          );
        throw e;
      }
    }
  } catch (e) {
    machine?.close(); // closes the virtio devices with the VM
    closeKvm();
    throw e;
  }
  return startLinux({
    kvm,
    ownKvm,
    machine,
    virtioDevices,
    options,
    devices,
    trackDirtyPages,
    legacyState: state.legacyDevices,
    parent: { id: last.header.id, path: last.path },
  });
}

/** A set of legacy devices wired to nothing, to check a saved state against. */
function trialLegacyPc(memSize: number): DeviceStage<LegacyPcDevices> {
  return linuxLegacyPc({
    irq: () => undefined,
    onTx: () => undefined,
    input$: EMPTY,
    onReset: () => undefined,
    memSize,
    onDebugOutput: () => undefined,
  });
}

/** What {@link startLinux} runs. */
interface LinuxStart {
  kvm: Kvm;
  ownKvm: boolean;
  machine: LinuxMachine;
  virtioDevices: VirtioMmioDevice[];
  options: RunLinuxOptions;
  devices: LinuxDevicesOptions['devices'] | undefined;
  trackDirtyPages: boolean;
  /** The legacy devices' state, when restoring. */
  legacyState?: unknown;
  /** The snapshot this machine was restored from (the parent of its first diff). */
  parent?: { id: string; path: string };
}

/** Runs a built (or restored) Linux machine on the worker runtime. */
function startLinux(start: LinuxStart): LinuxVm {
  const { kvm, ownKvm, machine, virtioDevices, options, devices } = start;
  const ownRuntime = options.runtime === undefined;
  const cpus = machine.vcpus.length;
  const smp = cpus > 1;
  const runtime = options.runtime ?? new VcpuRuntime({ maxVcpus: cpus });
  const irqchip = machine.irqchip;
  const pipelineOptions: LinuxDevicesOptions = {
    memSize: machine.memSize,
    trace: options.trace === true,
    com1Irq: irqchip ? 4 : false,
    ...(devices ? { devices } : {}),
    ...(virtioDevices.length > 0 ? { virtio: virtioDevices.map((d) => d.shared) } : {}),
    // With several vCPUs the legacy devices run once, on this thread, for all of them.
    ...(smp ? { legacy: 'main' as const } : {}),
    ...(!smp && start.legacyState !== undefined ? { legacyState: start.legacyState } : {}),
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
          ...(options.paused === true ? { paused: true } : {}),
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
  let mainPc: DeviceStage<LegacyPcDevices> | undefined;
  if (smp) {
    // One set of legacy devices for every vCPU: the exits the workers leave reach this thread,
    // one at a time, each answered before its vCPU resumes.
    const pc = (mainPc = linuxLegacyPc({
      irq: (level: boolean) => machine.vm.setIrqLine(4, level),
      onTx: emitTx,
      input$: stdin,
      onReset: () => {
        resetBy ??= 'i8042';
        stopAll();
      },
      memSize: machine.memSize,
      onDebugOutput: (bytes) => events.next({ channel: 'debugcon', data: bytes }),
    }));
    if (start.legacyState !== undefined) pc.device.restoreState(start.legacyState);
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
  void done.then(() => (ended = true));
  const run0 = runs[0];
  let ended = false;
  let snapshotting = false;
  let parent = start.parent;
  let saveId = 0;
  const saveState = (): { vcpus: VcpuState[]; vm: VmState } => {
    if (!runs.every((r) => r.paused))
      throw codeError('ERR_KVM_NOT_PAUSED', 'the VM is not paused: await pause() first');
    const msrs = saveableMsrs(kvm);
    return { vcpus: machine.vcpus.map((v) => saveVcpuState(kvm, v, msrs)), vm: saveVmState(machine.vm) };
  };
  // The legacy devices of a one-vCPU machine live in its worker: ask them there (the paused
  // worker still takes inputs) and wait for the answer, or for the run to end.
  const legacyFromWorker = async (): Promise<unknown> => {
    const id = ++saveId;
    const answer = firstValueFrom(
      run0.events$.pipe(
        filter((e) => e.channel === 'kvmrx:legacy-state' && (e.data as { id: number }).id === id),
        map((e) => e.data as { id: number; state?: unknown; error?: string }),
      ),
    );
    run0.send('kvmrx:save-legacy', id);
    const got = await Promise.race([answer, run0.done.then(() => undefined)]);
    if (got === undefined) throw new KvmClosedError('LinuxVm');
    if (got.error !== undefined) throw new Error(`saving the legacy devices failed: ${got.error}`);
    return got.state;
  };
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
    saveState,
    snapshot: async (path, snapOptions = {}) => {
      checkString('path', path);
      checkObject('options', snapOptions);
      const diff = snapOptions.diff === true;
      if (ended) throw new KvmClosedError('LinuxVm');
      if (snapshotting) throw codeError('ERR_KVM_BUSY', 'a snapshot of this VM is being written');
      if (diff && !start.trackDirtyPages)
        throw codeError(
          'ERR_KVM_NO_DIRTY_LOG',
          "a diff snapshot needs the guest's writes logged: start the VM with trackDirtyPages: true",
        );
      if (diff && parent === undefined)
        throw codeError(
          'ERR_KVM_NO_DIRTY_LOG',
          'a diff snapshot needs an earlier snapshot of this VM to build on: take a full one first',
        );
      snapshotting = true;
      const wasPaused = runs.every((r) => r.paused);
      const quiesced: VirtioMmioDevice[] = [];
      try {
        // Firecracker's order: the vCPUs stopped, the devices saved first (one may raise an
        // interrupt while saved, which must be in the KVM state), then the vCPUs, then the VM.
        await Promise.all(runs.map((r) => r.pause()));
        for (const d of virtioDevices) {
          await d.quiesce();
          quiesced.push(d);
        }
        const legacyDevices = mainPc !== undefined ? mainPc.device.saveState() : await legacyFromWorker();
        const virtio: LinuxSnapshotVirtio[] = virtioDevices.map((d) => ({
          name: d.device.name,
          deviceId: d.device.deviceId,
          base: `0x${d.base.toString(16)}`,
          gsi: d.gsi,
          state: d.saveState(),
        }));
        const kvmState = saveState();
        const state: LinuxSnapshotState = {
          version: 1,
          memSize: machine.memSize,
          irqchip: machine.irqchip,
          cpus,
          legacy: smp ? 'main' : 'worker',
          trackDirtyPages: start.trackDirtyPages,
          boot: machine.boot,
          legacyDevices,
          virtio,
          ...kvmState,
          ...(snapOptions.meta !== undefined ? { meta: snapOptions.meta } : {}),
        };
        const bytes = machine.memory.bytes;
        let dirty: BigUint64Array | undefined;
        if (diff) {
          // The pages the guest wrote (KVM's log, which reading clears) and the ones the VMM wrote
          // for it (virtio buffers and rings).
          dirty = machine.vm.getDirtyLog(0, machine.memSize);
          for (const d of virtioDevices) d.takeWrittenPages?.(dirty);
        }
        const header = writeSnapshotFile(path, {
          machine: LINUX_SNAPSHOT_MACHINE,
          state,
          regions: [{ guestPhysAddr: 0n, bytes, ...(dirty ? { dirty } : {}) }],
          host: hostOfKvm(kvm),
          ...(diff && parent ? { parent } : {}),
          ...(snapOptions.checksumMemory === true ? { checksumMemory: true } : {}),
        });
        if (start.trackDirtyPages && !diff) {
          // A full snapshot is the new base: forget what was written before it.
          machine.vm.getDirtyLog(0, machine.memSize);
          for (const d of virtioDevices)
            d.takeWrittenPages?.(new BigUint64Array(Math.ceil(machine.memSize / 4096 / 64)));
        }
        parent = { id: header.id, path: resolve(path) };
        return header;
      } finally {
        for (const d of quiesced) d.unquiesce();
        if (!wasPaused && !ended) for (const r of runs) r.resume();
        snapshotting = false;
      }
    },
    stop: async () => {
      await Promise.all(runs.map((r) => r.stop()));
      return done;
    },
    done,
    [GDB_MACHINE]: () => ({
      runs,
      memory: machine.vm.guestMemory,
      done,
      stop: () => Promise.all(runs.map((r) => r.stop())),
    }),
  };
}

function codeError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

function checkVirtio(options: { virtio?: VirtioDevice[]; irqchip?: boolean }): VirtioDevice[] {
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
