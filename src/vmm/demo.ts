/**
 * The demo VM (`kvm-rx run` with no arguments, `npm start`): the embedded demo guest with its UART
 * on the terminal, driven by the worker runtime. {@link startDemo} runs it and returns a handle
 * (typing, pause, snapshots, stop); {@link restoreDemo} resumes a snapshot of it, in this process
 * or another; {@link runDemo} runs it to the end.
 *
 * @module
 */
import { extname, join } from 'node:path';
import { filter, firstValueFrom, map } from 'rxjs';
import { KvmClosedError } from '../abi/errors';
import { checkObject, checkString, invalidType } from '../abi/validate';
import { VcpuRuntime } from '../runtime/pool';
import type { RunOutcome, VcpuRun } from '../runtime/vcpu-run';
import { GuestMemory } from '../wrappers/guest-memory';
import { Kvm } from '../wrappers/kvm';
import type { VmFd } from '../wrappers/vm-fd';
import { trialDemoLegacyPc, type DemoDevicesOptions } from './demo-devices';
import { DEMO_GUEST, DEMO_GUEST_ADDR } from './demo-guest';
import {
  DEMO_MEM_SIZE,
  DEMO_SNAPSHOT_MACHINE,
  checkDemoSnapshotState,
  restoreDemoMachine,
  type DemoConsoleState,
  type DemoMachine,
  type DemoSnapshotState,
} from './demo-snapshot';
import { SnapshotError } from './errors';
import { GDB_MACHINE, type Debuggable } from './gdb/kvm-target';
import { zeroFilledRegs } from './regs';
import { hostOfKvm, readSnapshotChain, writeSnapshotFile, type SnapshotHeader } from './snapshot-file';
import { saveVcpuState, saveVmState, saveableMsrs } from './vcpu-state';

/** The end of the demo guest's banner: from then on it takes input. */
const DEMO_READY = 'Ctrl-A x quits.\r\n';

/** Options of {@link runDemo} and {@link startDemo}. */
export interface DemoOptions {
  /** Receives what the guest writes to its serial port. */
  output: (bytes: Uint8Array) => void;
  /** Called once the guest runs: `send(bytes)` types into the guest's serial port. */
  onStart?: (send: (bytes: Uint8Array) => void) => void;
  /** Stops the VM. */
  signal?: AbortSignal;
  /** A runtime to use (default: a new one with one vCPU thread, closed at the end). */
  runtime?: VcpuRuntime;
  /**
   * Start with the vCPU parked before its first instruction, until `resume()` (or a debugger's
   * `continue`: `attachGdb(demo, { listen, wait: true })`). Default `false`.
   */
  paused?: boolean;
}

/** Options of {@link restoreDemo}: how to run the restored VM, and how to read the file. */
export interface RestoreDemoOptions extends DemoOptions {
  /** Check the memory checksum the snapshot has (`snapshot(path, { checksumMemory: true })`). Default `false`. */
  verifyMemory?: boolean;
}

/** Options of {@link DemoVm.snapshot}. */
export interface DemoSnapshotOptions {
  /** Write a SHA-256 of guest memory too (checked by `restoreDemo` with `verifyMemory`). Default `false`. */
  checksumMemory?: boolean;
}

/** How the demo ended. */
export interface DemoOutcome extends RunOutcome {
  /** The guest reset the machine (Ctrl-D in the demo guest): a clean end. */
  reset: boolean;
}

/** A running demo VM ({@link startDemo}, {@link restoreDemo}). `attachGdb(demo, { listen })` serves gdb for it. */
export interface DemoVm extends Debuggable {
  /**
   * Types `bytes` (a string is Latin-1) into the guest's serial port. Input typed before the
   * guest's banner is out is held back until it is (the guest resets its UART's FIFOs while it
   * starts); input typed while the VM is paused waits in the UART for the guest (its 64-byte FIFO
   * overruns beyond that, as the chip's does). A no-op once the VM has ended.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const demo: DemoVm;
   * demo.send('hello\r'); // the guest echoes "hello\r\n"
   * ```
   */
  send(bytes: Uint8Array | string): void;
  /**
   * Pauses the vCPU between two exits (see `VcpuRun.pause`): the guest stops; what it wrote
   * before has reached `output`. Resolves once it is paused.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const demo: DemoVm;
   * await demo.pause();
   * demo.send('typed while paused'); // waits in the UART's FIFO
   * demo.resume();                    // and is echoed now
   * ```
   * @throws (rejects) `ERR_KVM_CLOSED` once the VM has ended
   */
  pause(): Promise<void>;
  /**
   * Lets a paused VM run again (after a snapshot being written, if one is).
   *
   * @example
   * ```ts
   * // @ts-setup: declare const demo: DemoVm;
   * demo.resume();
   * ```
   */
  resume(): void;
  /** Whether {@link pause} was asked for and not {@link resume}d. */
  readonly paused: boolean;
  /**
   * Writes a snapshot of the VM to `path` (machine `'demo'`; the format: docs/snapshots.md):
   * pauses the vCPU, takes the devices' state from its worker (COM1 with the bytes it received and
   * the guest has not read yet, the i8042, CMOS, PCI and debug ports), the vCPU's and the VM's KVM
   * state, the console's (input held back for the banner) and the 64 KiB of RAM, then lets the
   * guest run on unless it was paused. Input typed while the snapshot is being taken goes to the
   * guest after it, and is not in it. Restore it with {@link restoreDemo}.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const demo: DemoVm;
   * const header = await demo.snapshot('demo.snap');
   * header.machine; // 'demo'
   * ```
   * @throws (rejects) `KvmClosedError` (`ERR_KVM_CLOSED`) once the VM has ended, `Error`
   *   `ERR_KVM_BUSY` while another snapshot of it is being written; `TypeError` for bad arguments;
   *   {@link KvmError} from the ioctls; `Error` from the file system
   */
  snapshot(path: string, options?: DemoSnapshotOptions): Promise<SnapshotHeader>;
  /**
   * Stops the VM (paused or not); resolves with the outcome once everything is closed (rejects as
   * {@link done} does).
   *
   * @example
   * ```ts
   * // @ts-setup: declare const demo: DemoVm;
   * const { reason } = await demo.stop(); // 'stopped'
   * ```
   */
  stop(): Promise<DemoOutcome>;
  /**
   * Resolves with the outcome once the VM has ended (the guest reset it, {@link stop}, `signal`)
   * and its VM, memory and (own) runtime are closed. Rejects with the run's error (an exit the
   * devices do not handle, a KVM failure), also after everything is closed.
   */
  readonly done: Promise<DemoOutcome>;
}

function checkDemoOptions(options: DemoOptions): void {
  checkObject('options', options);
  if (typeof options.output !== 'function') invalidType('options.output', 'of type function', options.output);
  if (options.onStart !== undefined && typeof options.onStart !== 'function')
    invalidType('options.onStart', 'of type function', options.onStart);
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal))
    invalidType('options.signal', 'an AbortSignal', options.signal);
  if (options.runtime !== undefined && !(options.runtime instanceof VcpuRuntime))
    invalidType('options.runtime', 'a VcpuRuntime', options.runtime);
  if (options.paused !== undefined && typeof options.paused !== 'boolean')
    invalidType('options.paused', 'of type boolean', options.paused);
}

/** The fresh demo machine: 64 KiB of RAM with the guest at 0x1000, the irqchip, vCPU 0 in real mode there. */
function createDemoMachine(kvm: Kvm): DemoMachine {
  const memory = GuestMemory.anonymous(DEMO_MEM_SIZE); // IVT, code at 0x1000, stack below 0x7000
  let vm: VmFd | undefined;
  try {
    vm = kvm.createVm();
    vm.createIrqChip(); // the 8259 that turns the UART's IRQ 4 into an interrupt
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory });
    memory.write(Number(DEMO_GUEST_ADDR), DEMO_GUEST);
    const vcpu = vm.createVcpu(0);
    const sregs = vcpu.getSregs();
    sregs.cs.base = 0n;
    sregs.cs.selector = 0;
    vcpu.setSregs(sregs);
    vcpu.setRegs(zeroFilledRegs({ rip: DEMO_GUEST_ADDR, rflags: 2n }));
    return { vm, vcpu, memory };
  } catch (e) {
    vm?.close();
    memory.close();
    throw e;
  }
}

/**
 * Starts the demo guest on the worker runtime and returns its handle: type into it, pause it,
 * snapshot it, stop it. The machine is built synchronously (a host without KVM throws here).
 *
 * @example
 * ```ts
 * const demo = startDemo({ output: (b) => process.stdout.write(b) });
 * demo.send('hello\r');
 * await demo.snapshot('demo.snap'); // resume it later, here or in another process, with restoreDemo()
 * demo.send('\x04');                // Ctrl-D: the guest says bye and resets the machine
 * const outcome = await demo.done;  // { reason: 'completed', reset: true, … }
 * ```
 * @throws `TypeError` for bad options; {@link KvmError} when the VM cannot be created
 */
export function startDemo(options: DemoOptions): DemoVm {
  checkDemoOptions(options);
  const kvm = new Kvm();
  let machine: DemoMachine;
  try {
    machine = createDemoMachine(kvm);
  } catch (e) {
    kvm.close();
    throw e;
  }
  return runDemoMachine({ kvm, machine, options });
}

/**
 * Restores a demo VM from a snapshot ({@link DemoVm.snapshot}), in this process or another, and
 * runs it: the guest goes on where it was, with the bytes it had received and not yet read still
 * in its UART. Before anything is created the file is checked (format, checksums, the machine
 * kind, the outline of the state, the devices' state on a throwaway set of devices); then the
 * host's CPU, and the VM is rebuilt: irqchip, RAM mapped privately from the file (pages are read
 * when the guest first touches them), the vCPU, the VM's in-kernel devices, then the device
 * models in the vCPU's worker. Nothing is left open when it throws.
 *
 * @example
 * ```ts
 * const demo = restoreDemo('demo.snap', { output: (b) => process.stdout.write(b) });
 * demo.send('more\r');
 * ```
 * @throws {@link SnapshotError} for a file that cannot be restored here (`code` says why:
 *   `ERR_KVM_SNAPSHOT_MISMATCH` for a snapshot of another machine, e.g. a `bootLinux()` one;
 *   corrupt, truncated, format version, host CPU); `TypeError` for bad arguments;
 *   {@link KvmError} from the ioctls; `Error` from the file system (ENOENT)
 */
export function restoreDemo(path: string, options: RestoreDemoOptions): DemoVm {
  checkString('path', path);
  checkDemoOptions(options);
  if (options.verifyMemory !== undefined && typeof options.verifyMemory !== 'boolean')
    invalidType('options.verifyMemory', 'of type boolean', options.verifyMemory);
  const chain = readSnapshotChain(path, { verifyMemory: options.verifyMemory === true });
  const last = chain[chain.length - 1];
  const state = checkDemoSnapshotState(last);
  // The devices' state is checked here, on a throwaway set, before anything is created.
  try {
    trialDemoLegacyPc().device.restoreState(state.legacyDevices);
  } catch (e) {
    throw new SnapshotError(
      'ERR_KVM_SNAPSHOT_CORRUPT',
      last.path,
      `its device state is refused: ${(e as Error).message}`,
    );
  }
  const kvm = new Kvm();
  let machine: DemoMachine;
  try {
    machine = restoreDemoMachine(kvm, chain, state);
  } catch (e) {
    kvm.close();
    throw e;
  }
  return runDemoMachine({ kvm, machine, options, legacyState: state.legacyDevices, console: state.console });
}

/**
 * Runs the demo guest until it resets the machine or `signal` aborts (`startDemo(options).done`).
 *
 * @example
 * ```ts
 * const outcome = await runDemo({ output: (b) => process.stdout.write(b), onStart: (send) => send(Buffer.from('hi\x04')) });
 * ```
 */
export async function runDemo(options: DemoOptions): Promise<DemoOutcome> {
  return startDemo(options).done;
}

/** What {@link runDemoMachine} runs. */
interface DemoStart {
  kvm: Kvm;
  machine: DemoMachine;
  options: DemoOptions;
  /** The devices' state, when restoring. */
  legacyState?: unknown;
  /** The console's state, when restoring. */
  console?: DemoConsoleState;
}

function codeError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/** Runs a built (or restored) demo machine; owns `kvm` and the machine from here on. */
function runDemoMachine(start: DemoStart): DemoVm {
  const { kvm, options } = start;
  const { vm, vcpu, memory } = start.machine;
  const ownRuntime = options.runtime === undefined;
  let runtime: VcpuRuntime | undefined;
  let run: VcpuRun;
  try {
    runtime = options.runtime ?? new VcpuRuntime({ maxVcpus: 1 });
    const pipelineOptions: DemoDevicesOptions =
      start.legacyState !== undefined ? { legacyState: start.legacyState } : {};
    run = runtime.start(vcpu, {
      pipeline: join(__dirname, `demo-devices${extname(__filename)}`),
      pipelineOptions,
      signal: options.signal,
      ...(options.paused === true ? { paused: true } : {}),
    });
  } catch (e) {
    kvm.close(); // closes the VM and the vCPU
    memory.close();
    if (ownRuntime) void runtime?.close();
    throw e;
  }
  let reset = false;
  // Input goes to COM1 once the pipeline listens (`kvmrx:demo-up`) and the guest's banner is out
  // (it resets its UART's FIFOs while it starts); until then it is held here.
  let up = false;
  let ready = start.console?.ready ?? false;
  let printed = start.console?.banner ?? '';
  const held: Uint8Array[] = [...(start.console?.held ?? [])];
  // Input typed while a snapshot is being taken: after it, so the state saved is one moment's.
  let snapshotting = false;
  const deferred: Uint8Array[] = [];
  let userPaused = options.paused === true;
  let ended = false;
  const flush = () => {
    if (up && ready && !snapshotting) for (const b of held.splice(0)) run.send('stdin', b);
  };
  const send = (bytes: Uint8Array) => {
    if (ended) return;
    if (snapshotting) deferred.push(bytes);
    else if (up && ready && held.length === 0) run.send('stdin', bytes);
    else held.push(bytes);
  };
  run.events$.subscribe(({ channel, data }) => {
    if (channel === 'tx') {
      options.output(data as Uint8Array);
      if (!ready) {
        printed += Buffer.from(data as Uint8Array).toString('latin1');
        if (printed.includes(DEMO_READY)) {
          ready = true;
          printed = '';
          flush();
        } else printed = printed.slice(-(DEMO_READY.length - 1)); // enough to find it across chunks
      }
    } else if (channel === 'reset') reset = true;
    else if (channel === 'kvmrx:demo-up') {
      up = true;
      flush();
    }
  });
  const ownedRuntime = ownRuntime ? runtime : undefined;
  const done = (async (): Promise<DemoOutcome> => {
    try {
      const outcome = await run.done;
      return { ...outcome, reset };
    } finally {
      ended = true;
      held.length = 0;
      deferred.length = 0;
      kvm.close(); // the VM and the vCPU with it, then the RAM its slot mapped
      memory.close();
      if (ownedRuntime) await ownedRuntime.close();
    }
  })();
  done.catch(() => undefined); // the caller's `done` still rejects; stop() alone must not leave it unhandled
  // A resume waits for the next macrotask, and a pause asked for meanwhile cancels it (the vCPU
  // was never let go): VcpuRun.pause() soon after resume() can hang, when the worker takes both
  // messages in one go while still parked (it stays parked and never says 'paused' again), as
  // `await demo.snapshot(a); await demo.snapshot(b)` would do every time.
  let resumeLater: NodeJS.Immediate | undefined;
  const resumeRun = () => {
    if (resumeLater !== undefined || ended) return;
    resumeLater = setImmediate(() => {
      resumeLater = undefined;
      if (!userPaused && !snapshotting && !ended) run.resume();
    });
  };
  const pauseRun = async () => {
    if (resumeLater !== undefined) {
      clearImmediate(resumeLater);
      resumeLater = undefined;
    }
    await run.pause();
  };
  let saveId = 0;
  // The devices live in the vCPU's worker: ask them there (the paused worker still takes inputs)
  // and wait for the answer, or for the run to end.
  const legacyFromWorker = async (): Promise<unknown> => {
    const id = ++saveId;
    const answer = firstValueFrom(
      run.events$.pipe(
        filter((e) => e.channel === 'kvmrx:legacy-state' && (e.data as { id: number }).id === id),
        map((e) => e.data as { id: number; state?: unknown; error?: string }),
      ),
      { defaultValue: undefined },
    );
    run.send('kvmrx:save-legacy', id);
    const got = await Promise.race([
      answer,
      run.done.then(
        () => undefined,
        () => undefined,
      ),
    ]);
    if (got === undefined) throw new KvmClosedError('DemoVm');
    if (got.error !== undefined) throw new Error(`saving the demo's devices failed: ${got.error}`);
    return got.state;
  };
  const handle: DemoVm = {
    send: (bytes) => {
      if (typeof bytes === 'string') send(new Uint8Array(Buffer.from(bytes, 'latin1')));
      else if (bytes instanceof Uint8Array) send(bytes);
      else invalidType('bytes', 'a Uint8Array or a string', bytes);
    },
    pause: async () => {
      userPaused = true;
      await pauseRun();
    },
    resume: () => {
      userPaused = false;
      if (!snapshotting) resumeRun();
    },
    get paused() {
      return userPaused && !ended;
    },
    snapshot: async (path, snapOptions = {}) => {
      checkString('path', path);
      checkObject('options', snapOptions);
      if (snapOptions.checksumMemory !== undefined && typeof snapOptions.checksumMemory !== 'boolean')
        invalidType('options.checksumMemory', 'of type boolean', snapOptions.checksumMemory);
      if (ended) throw new KvmClosedError('DemoVm');
      if (snapshotting) throw codeError('ERR_KVM_BUSY', 'a snapshot of this demo VM is being written');
      snapshotting = true;
      try {
        // Firecracker's order: the vCPU stopped, the devices saved first (one may raise an
        // interrupt while saved, which must be in the KVM state), then the vCPU, then the VM.
        await pauseRun();
        const legacyDevices = await legacyFromWorker();
        if (ended) throw new KvmClosedError('DemoVm');
        const vcpuState = saveVcpuState(kvm, vcpu, saveableMsrs(kvm));
        const vmState = saveVmState(vm);
        const state: DemoSnapshotState = {
          version: 1,
          memSize: DEMO_MEM_SIZE,
          console: { ready, banner: ready ? '' : printed, held: held.map((b) => b.slice()) },
          legacyDevices,
          vcpu: vcpuState,
          vm: vmState,
        };
        return writeSnapshotFile(path, {
          machine: DEMO_SNAPSHOT_MACHINE,
          state,
          regions: [{ guestPhysAddr: 0n, bytes: memory.bytes }],
          host: hostOfKvm(kvm),
          ...(snapOptions.checksumMemory === true ? { checksumMemory: true } : {}),
        });
      } finally {
        snapshotting = false;
        for (const b of deferred.splice(0)) send(b);
        flush();
        if (!userPaused && !ended) resumeRun();
      }
    },
    stop: async () => {
      if (resumeLater !== undefined) clearImmediate(resumeLater);
      resumeLater = undefined;
      await run.stop();
      return done;
    },
    done,
    [GDB_MACHINE]: () => ({ runs: [run], memory: vm.guestMemory, done, stop: () => run.stop() }),
  };
  if (options.onStart !== undefined) {
    try {
      options.onStart((bytes) => handle.send(bytes));
    } catch (e) {
      void run.stop(); // `done` closes everything once the run has ended
      throw e;
    }
  }
  return handle;
}
