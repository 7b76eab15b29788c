/**
 * `kvm-rx restore`: resumes a VM from a snapshot written by `kvm-rx boot` (Ctrl-A s,
 * --snapshot-on) or `linux.snapshot()`, with its console on the terminal.
 *
 * @module
 */
import { parseArgs } from 'node:util';
import { Subject } from 'rxjs';
import { SnapshotError } from '../vmm/errors';
import { checkLinuxSnapshotState } from '../vmm/linux-snapshot';
import { restoreLinux } from '../vmm/linux';
import { readSnapshotChain, readSnapshotFile } from '../vmm/snapshot-file';
import { restoreDemo } from '../vmm/demo';
import { DEMO_SNAPSHOT_MACHINE } from '../vmm/demo-snapshot';
import { demoOnConsole } from './demo-console';
import type { Tap } from '../wrappers/tap';
import {
  BOOT_STATUS,
  DEVICE_OPTIONS,
  SNAPSHOT_OPTIONS,
  UsageError,
  consoleWatch,
  openDevices,
  parseDeviceOptions,
  parseSnapshotOptions,
  superviseLinux,
  type DeviceSpecs,
  type SnapshotCli,
  type StopWhy,
} from './boot';

export const RESTORE_USAGE = `Usage: kvm-rx restore <snapshot> [options]

Resumes a VM from a snapshot file (written by 'kvm-rx boot --snapshot', Ctrl-A s in
'kvm-rx boot' or 'kvm-rx run', linux.snapshot() or demo.snapshot()), in this process, with its console on this terminal. The file and, for a
diff snapshot, the chain it builds on are checked first (format version, checksums, the host
CPU); guest RAM is mapped from the file, so the file must stay in place while the VM runs.

The virtio devices are reopened as 'kvm-rx boot' opened them (the snapshot keeps its device
options): the same disk images, TAP interface, vsock socket. Give device options to open
others instead; then give all of them, of the same kinds in the same order.

Options:
  --disk <file>[,ro], --net tap=<name>[,mac=<mac>], --vsock <cid>[,uds=<path>], --rng,
  --console ttyS0|hvc0
                     The devices, as for 'kvm-rx boot' (default: the snapshot's own).
  --snapshot <file>, --snapshot-on <text>, --snapshot-exit
                     Snapshots of the restored VM, as for 'kvm-rx boot'.
  --timeout <s>      Stop the VM after this many seconds.
  -h, --help         Show this help.

Keys: Ctrl-A x quits; Ctrl-A s writes a snapshot; Ctrl-A Ctrl-A sends Ctrl-A.

Exit status: as 'kvm-rx boot' (0 reset, halt or quit; 1 an error, including a snapshot that
cannot be restored here; 2 bad usage; 124 --timeout expired).
`;

/** The device options a snapshot taken by `kvm-rx boot` keeps (`meta.cli.devices`), checked. */
function savedDevices(meta: unknown): DeviceSpecs | undefined {
  const cli = (meta as { cli?: { devices?: unknown } } | undefined)?.cli;
  const d = cli?.devices as Partial<DeviceSpecs> | undefined;
  if (typeof d !== 'object' || d === null || !Array.isArray(d.disks)) return undefined;
  const disks = d.disks.filter(
    (x): x is { path: string; readOnly: boolean } =>
      typeof x === 'object' && x !== null && typeof x.path === 'string' && typeof x.readOnly === 'boolean',
  );
  if (disks.length !== d.disks.length) return undefined;
  return {
    disks,
    rng: d.rng === true,
    hvcConsole: d.hvcConsole === true,
    ...(typeof d.net?.tap === 'string'
      ? { net: { tap: d.net.tap, ...(typeof d.net.mac === 'string' ? { mac: d.net.mac } : {}) } }
      : {}),
    ...(typeof d.vsock?.guestCid === 'number'
      ? {
          vsock: {
            guestCid: d.vsock.guestCid,
            ...(typeof d.vsock.uds === 'string' ? { uds: d.vsock.uds } : {}),
          },
        }
      : {}),
  };
}

/**
 * `kvm-rx restore <snapshot> …`: returns the exit status (see {@link RESTORE_USAGE}).
 *
 * @example `process.exitCode = await cmdRestore(['booted.snap'])`
 */
export async function cmdRestore(argv: string[]): Promise<number> {
  let path: string;
  let timeoutS: number | undefined;
  let devs: DeviceSpecs | undefined;
  let snap: SnapshotCli;
  try {
    let values;
    let positionals: string[];
    try {
      ({ values, positionals } = parseArgs({
        args: argv,
        options: {
          help: { type: 'boolean', short: 'h' },
          timeout: { type: 'string' },
          ...DEVICE_OPTIONS,
          ...SNAPSHOT_OPTIONS,
        },
        strict: true,
        allowPositionals: true,
      }));
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    if (values.help) {
      process.stdout.write(RESTORE_USAGE);
      return BOOT_STATUS.ok;
    }
    if (positionals.length !== 1) throw new UsageError('give exactly one snapshot file');
    path = positionals[0];
    const anyDevice = Object.keys(DEVICE_OPTIONS).some((k) => (values as Record<string, unknown>)[k] !== undefined);
    if (anyDevice) devs = parseDeviceOptions(values);
    snap = parseSnapshotOptions(values);
    if (values.timeout !== undefined) {
      timeoutS = Number(values.timeout);
      if (!Number.isFinite(timeoutS) || timeoutS <= 0)
        throw new UsageError(`--timeout must be a positive number of seconds, not ${values.timeout}`);
    }
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`kvm-rx restore: ${e.message}\nTry 'kvm-rx restore --help'.\n`);
    return BOOT_STATUS.usage;
  }

  // A demo snapshot (kvm-rx run, Ctrl-A s): the demo VM on the terminal.
  let machine: string | undefined;
  try {
    machine = readSnapshotFile(path).header.machine;
  } catch {
    machine = undefined; // the restore below reports what is wrong with the file
  }
  if (machine === DEMO_SNAPSHOT_MACHINE) {
    if (devs !== undefined) {
      process.stderr.write(`kvm-rx restore: ${path} is a demo VM snapshot: it has no virtio devices to give\n`);
      return BOOT_STATUS.usage;
    }
    try {
      return await demoOnConsole((o) => restoreDemo(path, o), timeoutS, snap.path);
    } catch (e) {
      if (!(e instanceof SnapshotError)) throw e;
      process.stderr.write(`kvm-rx restore: ${e.message} (${e.code})\n`);
      return BOOT_STATUS.error;
    }
  }

  let tap: Tap | undefined;
  const hvcInput = new Subject<Uint8Array>();
  const watch = consoleWatch();
  let vm: { handle: ReturnType<typeof restoreLinux>; why: () => StopWhy | undefined; stop: (w: StopWhy) => void };
  let meta: unknown;
  try {
    const t0 = performance.now();
    // The saved device options (the file is checked again, fully, by restoreLinux).
    const chain = readSnapshotChain(path);
    const state = checkLinuxSnapshotState(chain[chain.length - 1]);
    meta = state.meta;
    devs ??= savedDevices(state.meta);
    if (devs === undefined && state.virtio.length > 0)
      throw new SnapshotError(
        'ERR_KVM_SNAPSHOT_MISMATCH',
        chain[chain.length - 1].path,
        `it has ${state.virtio.length} virtio devices and no record of how they were opened: give them with --disk, --net, --vsock, --rng, --console`,
      );
    const specs: DeviceSpecs = devs ?? { disks: [], rng: false, hvcConsole: false };
    const opened = openDevices(specs, hvcInput, (b) => watch.write(b));
    tap = opened.tap;
    const ac = new AbortController();
    let why: StopWhy | undefined;
    vm = {
      handle: restoreLinux(path, {
        virtio: opened.virtio,
        signal: ac.signal,
        output: (bytes) => watch.write(bytes),
        virtioLog: (m: string) => process.stderr.write(`\r\n[kvm-rx] ${m}\n`),
      }),
      why: () => why,
      stop: (w) => {
        why ??= w;
        ac.abort();
      },
    };
    devs = specs;
    process.stderr.write(
      `[kvm-rx] restored ${path} (${state.memSize >>> 20} MiB RAM, ${state.cpus} vCPU${state.cpus > 1 ? 's' : ''}${specs.disks.length + state.virtio.length > 0 ? `, ${state.virtio.length} virtio devices` : ''}) in ${(performance.now() - t0).toFixed(1)} ms; ${process.stdin.isTTY ? 'Ctrl-A x quits' : 'running'}\n`,
    );
  } catch (e) {
    tap?.close();
    const err = e as Error & { code?: string };
    const fsError = typeof err.code === 'string' && /^E[A-Z]+$/.test(err.code) && 'syscall' in err;
    if (
      e instanceof SnapshotError ||
      fsError ||
      err.code === 'ERR_OUT_OF_RANGE' ||
      err.code === 'ERR_INVALID_ARG_VALUE' ||
      err.code === 'ERR_INVALID_ARG_TYPE'
    ) {
      process.stderr.write(`kvm-rx restore: ${err.message}${err.code ? ` (${err.code})` : ''}\n`);
      return BOOT_STATUS.error;
    }
    throw e;
  }
  return superviseLinux({
    cmd: 'kvm-rx restore',
    vm,
    hvcConsole: devs.hvcConsole,
    hvcInput,
    tap,
    timeoutS,
    trace: false,
    devicesPath: undefined,
    snapshot: { ...snap, meta },
    watch,
  });
}
