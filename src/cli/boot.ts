/**
 * `kvm-rx boot`: boots a Linux kernel with its serial console (COM1) on the terminal.
 *
 * @module
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { inspect, parseArgs } from 'node:util';
import type { ExitStatsSnapshot } from '../runtime/operators/ExitStats';
import { DEFAULT_MEM_SIZE, type BootInfo } from '../vmm/boot';
import { BootImageError } from '../vmm/errors';
import { BASE_CMDLINE, hostVirtualization, stockKernelCmdline } from '../vmm/host';
import { bootLinux, type LinuxOutcome, type LinuxVm } from '../vmm/linux';
import { virtioBlk } from '../devices/virtio/blk';
import { virtioRng } from '../devices/virtio/rng';
import type { VirtioDevice } from '../devices/virtio/mmio-device';
import { virtioConsole } from '../devices/virtio/console';
import { virtioNet } from '../devices/virtio/net';
import { virtioVsock } from '../devices/virtio/vsock';
import { Tap } from '../wrappers/tap';
import { Subject } from 'rxjs';
import { LINUX_EVENT_CHANNELS } from '../vmm/linux-devices';
import { attachConsole } from './console';
import { GDB_OPTIONS, GDB_USAGE, parseGdbOptions, startGdb, type GdbCli } from './gdb';
import type { GdbServer } from '../vmm/gdb/server';

/** The minimal kernel command line (what `--cmdline` should at least contain). */
export const DEFAULT_CMDLINE = BASE_CMDLINE;

/** Exit statuses of `kvm-rx boot`. */
export const BOOT_STATUS = { ok: 0, error: 1, usage: 2, timeout: 124 } as const;

export const BOOT_USAGE = `Usage: kvm-rx boot --kernel <file> [options]

Boots a Linux kernel directly in 64-bit mode (no firmware, no bootloader) with its console
(COM1, ttyS0; or hvc0 with --console hvc0) on this terminal. The kernel is an ELF vmlinux, or a bzImage whose payload
is uncompressed or compressed with LZ4 or gzip (decompressed here, on the host; for other
compressions the error message says how to extract the vmlinux).

Devices: COM1 16550A (IRQ 4), i8042 (reset only), CMOS/RTC, PCI bus with no device, port 0x80,
debug console 0x402 (to stderr), and the in-kernel PIC, IOAPIC, LAPIC and PIT; with the options
below, virtio-mmio devices (blk, net, vsock, rng, console) at 0xd0000000 + i * 4 KiB on ISA
IRQs 5, 6, 7, 9, 10, 11, 14, 15, announced with virtio_mmio.device= on the command line.

Options:
  --kernel <file>    The kernel image (required).
  --initrd <file>    An initrd/initramfs (cpio, compressed as the kernel supports).
  --cmdline <text>   The kernel command line. Default: for a stock distribution kernel on
                     this kind of host: "${DEFAULT_CMDLINE}" plus, on a host without
                     VMX/SVM (PVM: guest kernel code is emulated), the switches that hide
                     the instructions KVM's emulator lacks and skip the slowest initcalls;
                     on VMX/SVM, skipping the i8042 and CMOS probes. The cmdline used is
                     printed on stderr.
                     Keep reboot=k so a reboot reaches the i8042 and ends the VM.
  --append <text>    Added to the end of the command line (the default one, or
                     --cmdline's), e.g. --append 'loglevel=8 initcall_debug'; may be repeated.
  --mem <MiB>        Guest RAM in MiB, a multiple of 2 (default: ${DEFAULT_MEM_SIZE >>> 20}).
  --trace            At the end, print exit statistics (counts by kind and by port) on stderr.
  --disk <file>[,ro] A virtio-blk disk over a raw image (repeat for more: /dev/vda, /dev/vdb,
                     …; ",ro" serves it read-only). Needs a kernel with virtio-mmio built in
                     (npm run guest:kernel); boot from it with --append 'root=/dev/vda rw'.
  --rng              A virtio-rng device (the host's CSPRNG).
  --net tap=<name>[,mac=<mac>]
                     A virtio-net device on the TAP interface <name> (opened, or created when
                     this process may, in this process's network namespace), with the MAC
                     address <mac> if given; configure the guest with e.g.
                     --append 'ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off'.
  --vsock <cid>[,uds=<path>]
                     A virtio-vsock device with the guest CID <cid> (3 or more). With uds=,
                     host programs connect to the Unix socket <path> and write "CONNECT <port>"
                     to reach the guest's port; the guest's connections to the host's port P
                     reach the Unix socket <path>_P (Firecracker's convention).
  --console ttyS0|hvc0
                     Where the guest's console is on this terminal: COM1 (default) or a
                     virtio-console (hvc0; the default command line then says console=hvc0).
  --cpus <n>         Virtual CPUs, 1 to 64 (default 1). With more than one the guest gets an MP
                     table and the legacy devices run on the main thread for all vCPUs.
  --timeout <s>      Stop the VM after this many seconds.
  --snapshot <file>  Where a snapshot of the running VM is written (Ctrl-A s, --snapshot-on);
                     resume it with 'kvm-rx restore <file>' (see docs/snapshots.md).
  --snapshot-on <text>
                     Write the snapshot once the console has printed <text> (\\n for a
                     newline), e.g. --snapshot-on 'Run /init'.
  --snapshot-exit    Stop the VM once that snapshot is written (exit status 0).
  --devices <module> Your own device models: a module whose default export is a
                     LinuxDeviceStage (see docs/vmm.md), run in the vCPU's thread in
                     front of the VM's devices. What it emits (ctx.emit) is printed on
                     stderr as "[kvm-rx] <channel>: <data>".
${GDB_USAGE}  -h, --help         Show this help.

Keys: Ctrl-A x quits; Ctrl-A s writes a snapshot (to --snapshot <file>, or
kvm-rx-<pid>-<n>.snap here); Ctrl-A Ctrl-A sends Ctrl-A. Everything else goes to the guest.
When standard input is not a terminal, its bytes are typed into the guest; its end does not
stop the VM.

Exit status:
  0    the guest reset the machine (reboot, or panic with panic=-1) or halted, or you quit
       with Ctrl-A x (or SIGINT/SIGTERM), or --snapshot-exit stopped it
  1    an error: the kernel or initrd file cannot be read or booted, or the guest did
       something the VMM cannot handle (the message names the exit and RIP)
  2    bad usage (unknown option, missing --kernel, bad value)
  124  --timeout expired
`;

/** @internal A command-line mistake (exit status 2). */
export class UsageError extends Error {}

function describeKernel(b: BootInfo): string {
  if (b.kind === 'elf') return 'ELF vmlinux';
  if (b.payload === 'elf' || b.payload === undefined) return 'bzImage (uncompressed vmlinux inside)';
  return `bzImage (${b.payload.toUpperCase()} payload decompressed on the host)`;
}

function readImage(what: 'kernel' | 'initrd', path: string): Uint8Array {
  let size: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw Object.assign(new Error('not a regular file'), { code: 'EISDIR' });
    size = st.size;
    const bytes = readFileSync(path);
    if (bytes.length !== size) size = bytes.length;
    return bytes;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === 'ENOENT' ? 'no such file' : err.code === 'EACCES' ? 'permission denied' : err.message;
    throw new BootImageError(
      what === 'kernel' ? 'ERR_KVM_BAD_KERNEL' : 'ERR_KVM_BAD_INITRD',
      `cannot read ${path}: ${why}`,
    );
  }
}

const mb = (n: number) => (n < 1e6 ? `${n} bytes` : `${(n / 1e6).toFixed(1)} MB`);
const hex = (n: number | bigint) => `0x${n.toString(16)}`;

/** The `--trace` report. */
export function formatTrace(outcome: LinuxOutcome): string {
  const lines: string[] = [];
  const s: ExitStatsSnapshot | undefined = outcome.stats;
  lines.push(`exits to userspace: ${outcome.exits}`);
  if (s) {
    const kinds = Object.entries(s.counts).sort((a, b) => (b[1] ?? 0) - (a[1] ?? 0));
    lines.push(`  by kind: ${kinds.map(([k, n]) => `${k} ${n}`).join(', ')}`);
    const ports = Object.entries(s.ports).sort((a, b) => b[1] - a[1]);
    if (ports.length) lines.push(`  by port: ${ports.map(([p, n]) => `${p} ${n}`).join(', ')}`);
    const addrs = Object.entries(s.addresses).sort((a, b) => b[1] - a[1]);
    if (addrs.length)
      lines.push(
        `  by MMIO address: ${addrs
          .slice(0, 16)
          .map(([a, n]) => `${a} ${n}`)
          .join(', ')}`,
      );
    if (s.latency.count)
      lines.push(
        `  mean time between exits: ${(s.latency.meanMs * 1000).toFixed(1)} µs (max ${s.latency.maxMs.toFixed(1)} ms)`,
      );
  }
  const e = outcome.emulation;
  lines.push(`emulation fallbacks: int3 ${e.int3}, fwait ${e.fwait}, clac ${e.clac}, stac ${e.stac}`);
  lines.push(`open-bus accesses (no device): ${outcome.openBus}`);
  return lines.map((l) => `[kvm-rx] ${l}\n`).join('');
}

function describeEnd(outcome: LinuxOutcome, why: StopWhy | undefined): string {
  const after = `after ${outcome.exits} exits, ${(outcome.wallMs / 1000).toFixed(2)} s`;
  switch (outcome.reason) {
    case 'reset':
      return `guest reset the machine (${outcome.resetBy === 'i8042' ? 'i8042 reset line' : 'triple fault'}) ${after}`;
    case 'halt':
      return `guest halted ${after}`;
    case 'stopped':
      return `VM stopped (${why === 'timeout' ? 'timeout' : why === 'quit' ? 'Ctrl-A x' : why === 'snapshot' ? 'after the snapshot' : why === 'signal' ? 'signal' : 'stopped'}) ${after}`;
    case 'error':
      return `VM failed ${after}: ${outcome.error?.message ?? 'unknown error'}`;
  }
}

/** The virtio devices asked for on the command line (`kvm-rx boot` and `kvm-rx restore`). */
export interface DeviceSpecs {
  disks: Array<{ path: string; readOnly: boolean }>;
  net?: { tap: string; mac?: string };
  rng: boolean;
  vsock?: { guestCid: number; uds?: string };
  hvcConsole: boolean;
}

/** The device options of {@link parseDeviceOptions}, for `parseArgs`. */
export const DEVICE_OPTIONS = {
  disk: { type: 'string', multiple: true },
  rng: { type: 'boolean' },
  net: { type: 'string' },
  vsock: { type: 'string' },
  console: { type: 'string' },
} as const;

/** @internal Parses --disk, --net, --rng, --vsock and --console (a UsageError for bad values). */
export function parseDeviceOptions(values: {
  disk?: string[];
  rng?: boolean;
  net?: string;
  vsock?: string;
  console?: string;
}): DeviceSpecs {
  let netSpec: DeviceSpecs['net'];
  let vsockSpec: DeviceSpecs['vsock'];
  if (values.console !== undefined && values.console !== 'ttyS0' && values.console !== 'hvc0')
    throw new UsageError(`--console must be ttyS0 or hvc0, not ${values.console}`);
  const hvcConsole = values.console === 'hvc0';
  if (values.net !== undefined) {
    const fields = Object.fromEntries(values.net.split(',').map((kv) => kv.split('=', 2) as [string, string]));
    const unknown = Object.keys(fields).filter((k) => k !== 'tap' && k !== 'mac');
    if (!fields.tap || unknown.length > 0)
      throw new UsageError(`--net must be tap=<name>[,mac=<mac>], not ${values.net}`);
    netSpec = { tap: fields.tap, ...(fields.mac !== undefined ? { mac: fields.mac } : {}) };
  }
  if (values.vsock !== undefined) {
    const [cidText, ...rest] = values.vsock.split(',');
    const guestCid = Number(cidText);
    const opts = Object.fromEntries(rest.map((kv) => kv.split('=', 2) as [string, string]));
    const unknown = Object.keys(opts).filter((k) => k !== 'uds');
    if (!Number.isInteger(guestCid) || guestCid < 3 || guestCid > 0xffff_fffe || unknown.length > 0 || opts.uds === '')
      throw new UsageError(`--vsock must be <cid>[,uds=<path>] with a CID from 3, not ${values.vsock}`);
    vsockSpec = { guestCid, ...(opts.uds !== undefined ? { uds: resolve(opts.uds) } : {}) };
  }
  const rng = values.rng === true;
  const disks = (values.disk ?? []).map((d) => {
    const ro = d.endsWith(',ro');
    const path = ro ? d.slice(0, -3) : d;
    if (path === '' || !existsSync(path)) throw new UsageError(`--disk: ${path || d} does not exist`);
    return { path: resolve(path), readOnly: ro };
  });
  const devices =
    disks.length + [rng, netSpec, vsockSpec, hvcConsole].filter((d) => d !== undefined && d !== false).length;
  if (devices > 8) throw new UsageError('at most 8 virtio devices (--disk, --net, --rng, --vsock, --console hvc0)');
  return { disks, rng, hvcConsole, ...(netSpec ? { net: netSpec } : {}), ...(vsockSpec ? { vsock: vsockSpec } : {}) };
}

/**
 * @internal Opens the devices of `specs`, in the order `kvm-rx boot` gives them to the guest:
 * disks, net, rng, vsock, console. Closes the TAP it opened when a later one fails.
 */
export function openDevices(
  specs: DeviceSpecs,
  hvcInput: Subject<Uint8Array>,
  output: (bytes: Uint8Array) => void,
): { virtio: VirtioDevice[]; tap: Tap | undefined } {
  const virtio: VirtioDevice[] = specs.disks.map((d) => virtioBlk({ path: d.path, readOnly: d.readOnly }));
  let tap: Tap | undefined;
  if (specs.net !== undefined) {
    try {
      tap = Tap.open(specs.net.tap);
    } catch (e) {
      throw Object.assign(new Error(`--net: cannot open the TAP interface ${specs.net.tap}: ${(e as Error).message}`), {
        code: 'ERR_INVALID_ARG_VALUE',
      });
    }
    virtio.push(virtioNet({ backend: tap, ...(specs.net.mac !== undefined ? { mac: specs.net.mac } : {}) }));
  }
  if (specs.rng) virtio.push(virtioRng());
  if (specs.vsock !== undefined) virtio.push(virtioVsock(specs.vsock));
  if (specs.hvcConsole) virtio.push(virtioConsole({ output, input: hvcInput }));
  return { virtio, tap };
}

/**
 * `kvm-rx boot …`: returns the exit status (see {@link BOOT_USAGE}).
 *
 * @example `process.exitCode = await cmdBoot(['--kernel', 'vmlinux', '--initrd', 'initramfs.cpio'])`
 */
export async function cmdBoot(argv: string[]): Promise<number> {
  let kernelPath: string;
  let initrdPath: string | undefined;
  let cmdline: string;
  let memMiB: number;
  let trace: boolean;
  let timeoutS: number | undefined;
  let devicesPath: string | undefined;
  let devs: DeviceSpecs;
  let snap: SnapshotCli;
  let cpus = 1;
  let hvcConsole = false;
  let gdb: GdbCli | undefined;
  try {
    let values;
    try {
      ({ values } = parseArgs({
        args: argv,
        options: {
          help: { type: 'boolean', short: 'h' },
          kernel: { type: 'string' },
          initrd: { type: 'string' },
          cmdline: { type: 'string' },
          append: { type: 'string', multiple: true },
          mem: { type: 'string' },
          trace: { type: 'boolean' },
          timeout: { type: 'string' },
          devices: { type: 'string' },
          ...DEVICE_OPTIONS,
          ...SNAPSHOT_OPTIONS,
          ...GDB_OPTIONS,
          cpus: { type: 'string' },
        },
        strict: true,
        allowPositionals: false,
      }));
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    if (values.help) {
      process.stdout.write(BOOT_USAGE);
      return BOOT_STATUS.ok;
    }
    if (values.kernel === undefined) throw new UsageError('--kernel <file> is required');
    kernelPath = values.kernel;
    initrdPath = values.initrd;
    devicesPath = values.devices;
    if (devicesPath !== undefined && !existsSync(devicesPath)) {
      throw new UsageError(`--devices: ${devicesPath} does not exist`);
    }
    devs = parseDeviceOptions(values);
    snap = parseSnapshotOptions(values);
    const g = parseGdbOptions(values);
    if (typeof g === 'string') throw new UsageError(g);
    gdb = g;
    hvcConsole = devs.hvcConsole;
    cmdline = values.cmdline ?? stockKernelCmdline(hostVirtualization());
    if (hvcConsole && values.cmdline === undefined) cmdline = cmdline.replace('console=ttyS0', 'console=hvc0');
    for (const extra of values.append ?? []) if (extra.trim() !== '') cmdline = `${cmdline} ${extra.trim()}`;
    memMiB = values.mem === undefined ? DEFAULT_MEM_SIZE >>> 20 : Number(values.mem);
    if (!Number.isInteger(memMiB) || memMiB < 16 || memMiB > 3072 || memMiB % 2 !== 0) {
      throw new UsageError(`--mem must be an even number of MiB from 16 to 3072, not ${values.mem}`);
    }
    trace = values.trace === true;
    if (values.cpus !== undefined) {
      cpus = Number(values.cpus);
      if (!Number.isInteger(cpus) || cpus < 1 || cpus > 64)
        throw new UsageError(`--cpus must be a whole number from 1 to 64, not ${values.cpus}`);
    }
    if (values.timeout !== undefined) {
      timeoutS = Number(values.timeout);
      if (!Number.isFinite(timeoutS) || timeoutS <= 0)
        throw new UsageError(`--timeout must be a positive number of seconds, not ${values.timeout}`);
    }
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`kvm-rx boot: ${e.message}\nTry 'kvm-rx boot --help'.\n`);
    return BOOT_STATUS.usage;
  }

  let vm;
  let tap: Tap | undefined;
  const hvcInput = new Subject<Uint8Array>();
  const watch = consoleWatch();
  // What `kvm-rx restore` needs to reopen the devices, kept in the snapshot.
  const cliMeta = { devices: devs, memMiB, cpus };
  try {
    const kernel = readImage('kernel', kernelPath);
    const initrd = initrdPath === undefined ? undefined : readImage('initrd', initrdPath);
    let virtio: VirtioDevice[];
    ({ virtio, tap } = openDevices(devs, hvcInput, (b) => watch.write(b)));
    const ac = new AbortController();
    let why: StopWhy | undefined;
    const stop = (w: StopWhy) => {
      why ??= w;
      ac.abort();
    };
    vm = {
      handle: bootLinux({
        kernel,
        ...(initrd ? { initrd } : {}),
        cmdline,
        memSize: memMiB << 20,
        cpus,
        trace,
        signal: ac.signal,
        output: (bytes) => watch.write(bytes),
        ...(gdb?.wait === true ? { paused: true } : {}),
        ...(devicesPath !== undefined ? { devices: { pipeline: resolve(devicesPath) } } : {}),
        ...(virtio.length > 0 ? { virtio, virtioLog: (m: string) => process.stderr.write(`\r\n[kvm-rx] ${m}\n`) } : {}),
      }),
      why: () => why,
      stop,
    };
    const b = vm.handle.boot;
    // Progress once the machine is built, so that a bad file gives one line and nothing else.
    process.stderr.write(
      `[kvm-rx] kernel ${kernelPath} (${mb(kernel.length)})${initrd ? `, initrd ${initrdPath} (${mb(initrd.length)})` : ''}, ${memMiB} MiB RAM\n`,
    );
    process.stderr.write(`[kvm-rx] cmdline: ${cmdline}\n`);
    process.stderr.write(
      `[kvm-rx] ${describeKernel(b)} at ${hex(b.kernel.low)}–${hex(b.kernel.high)}, entry ${hex(b.entry)}` +
        `${b.initrd ? `, initrd at ${hex(b.initrd.addr)}` : ''}; ${process.stdin.isTTY ? 'Ctrl-A x quits' : 'booting'}\n`,
    );
  } catch (e) {
    const err = e as Error & { code?: string };
    const fsError = typeof err.code === 'string' && /^E[A-Z]+$/.test(err.code) && 'syscall' in err; // a disk image
    if (
      e instanceof BootImageError ||
      fsError ||
      err.code === 'ERR_OUT_OF_RANGE' ||
      err.code === 'ERR_INVALID_ARG_VALUE'
    ) {
      tap?.close();
      process.stderr.write(`kvm-rx boot: ${err.message}\n`);
      return BOOT_STATUS.error;
    }
    throw e;
  }

  let gdbServer: GdbServer | undefined;
  if (gdb !== undefined) {
    try {
      gdbServer = await startGdb(vm.handle, gdb);
    } catch (e) {
      process.stderr.write(`kvm-rx boot: --gdb ${gdb.listen}: ${(e as Error).message}\n`);
      await vm.handle.stop();
      tap?.close();
      return BOOT_STATUS.error;
    }
  }
  try {
    return await superviseLinux({
      cmd: 'kvm-rx boot',
      vm,
      hvcConsole,
      hvcInput,
      tap,
      timeoutS,
      trace,
      devicesPath,
      snapshot: { ...snap, meta: { cli: cliMeta } },
      watch,
    });
  } finally {
    await gdbServer?.close();
  }
}

/** What {@link superviseLinux} runs: a VM started by `kvm-rx boot` or `kvm-rx restore`. */
export interface SupervisedLinux {
  cmd: string;
  vm: { handle: LinuxVm; why: () => StopWhy | undefined; stop: (why: StopWhy) => void };
  hvcConsole: boolean;
  hvcInput: Subject<Uint8Array>;
  tap: Tap | undefined;
  timeoutS: number | undefined;
  trace: boolean;
  devicesPath: string | undefined;
  snapshot: SnapshotCli & { meta: unknown };
  /** The console output watcher (see {@link consoleWatch}). */
  watch: ConsoleWatch;
}

/** Why `kvm-rx boot`/`restore` stopped a VM. */
export type StopWhy = 'quit' | 'timeout' | 'snapshot' | 'signal';

/** The snapshot options of `kvm-rx boot` and `kvm-rx restore`. */
export interface SnapshotCli {
  /** --snapshot: where Ctrl-A s and --snapshot-on write. */
  path?: string;
  /** --snapshot-on: take a snapshot once the console has printed this. */
  on?: string;
  /** --snapshot-exit: stop the VM after the snapshot. */
  exit: boolean;
}

/** Watches the guest's console output for a text; `write` is the console output sink. */
export interface ConsoleWatch {
  write(bytes: Uint8Array): void;
  /** Calls `fn` once, when the output has contained `text` (from now on). */
  onText(text: string, fn: () => void): void;
}

/** @internal A console sink to stdout that can watch for a text across chunk boundaries. */
export function consoleWatch(): ConsoleWatch {
  let tail = '';
  let want: { text: string; fn: () => void } | undefined;
  return {
    write(bytes) {
      process.stdout.write(bytes);
      if (want === undefined) return;
      tail += Buffer.from(bytes).toString('latin1');
      if (tail.includes(want.text)) {
        const { fn } = want;
        want = undefined;
        tail = '';
        fn();
      } else if (tail.length > 2 * want.text.length + 4096) tail = tail.slice(-want.text.length);
    },
    onText(text, fn) {
      want = { text, fn };
    },
  };
}

/** @internal Parses --snapshot, --snapshot-on and --snapshot-exit (a UsageError for bad use). */
export function parseSnapshotOptions(values: {
  snapshot?: string;
  'snapshot-on'?: string;
  'snapshot-exit'?: boolean;
}): SnapshotCli {
  const on = values['snapshot-on'];
  if (on !== undefined && values.snapshot === undefined)
    throw new UsageError('--snapshot-on needs --snapshot <path> (where to write it)');
  if (on === '') throw new UsageError('--snapshot-on needs a non-empty text');
  if (values['snapshot-exit'] === true && on === undefined)
    throw new UsageError('--snapshot-exit needs --snapshot-on <text>');
  return {
    ...(values.snapshot !== undefined ? { path: resolve(values.snapshot) } : {}),
    ...(on !== undefined ? { on: on.replace(/\\n/g, '\n') } : {}),
    exit: values['snapshot-exit'] === true,
  };
}

/** The parseArgs options of {@link parseSnapshotOptions}. */
export const SNAPSHOT_OPTIONS = {
  snapshot: { type: 'string' },
  'snapshot-on': { type: 'string' },
  'snapshot-exit': { type: 'boolean' },
} as const;

/**
 * @internal Runs a Linux VM with its console on the terminal until it ends: --timeout, Ctrl-A x,
 * Ctrl-A s and --snapshot-on, the device stage's events; returns the exit status.
 */
export async function superviseLinux(s: SupervisedLinux): Promise<number> {
  const { vm, hvcConsole, hvcInput, tap, timeoutS, trace, devicesPath } = s;
  let timer: NodeJS.Timeout | undefined;
  let stoppedAt: bigint | undefined;
  if (timeoutS !== undefined) {
    // Where the guest was when time ran out (a hung kernel's RIP), then stop.
    timer = setTimeout(() => {
      vm.handle
        .call('getRegs')
        .then((regs) => (stoppedAt = regs.rip))
        .catch(() => undefined)
        .finally(() => vm.stop('timeout'));
    }, timeoutS * 1000);
  }
  let snapshots = 0;
  let snapshotting = false;
  const takeSnapshot = (exitAfter: boolean): void => {
    if (snapshotting) return;
    snapshotting = true;
    const path = s.snapshot.path ?? resolve(`kvm-rx-${process.pid}-${++snapshots}.snap`);
    process.stderr.write(`\r\n[kvm-rx] snapshot to ${path} ...`);
    const t0 = performance.now();
    vm.handle
      .snapshot(path, { meta: s.snapshot.meta })
      .then(
        (h) => {
          process.stderr.write(
            ` written (${mb(h.fileSize)}, ${(performance.now() - t0).toFixed(0)} ms); restore with: kvm-rx restore ${path}\r\n`,
          );
          if (exitAfter) vm.stop('snapshot');
        },
        (e: unknown) => process.stderr.write(` failed: ${(e as Error).message}\r\n`),
      )
      .finally(() => (snapshotting = false));
  };
  if (s.snapshot.on !== undefined) s.watch.onText(s.snapshot.on, () => takeSnapshot(s.snapshot.exit));
  // SIGINT/SIGTERM stop the VM as Ctrl-A x does (devices closed, the end reported).
  const onSignal = () => vm.stop('signal');
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const console_ = attachConsole({
    onQuit: () => vm.stop('quit'),
    quitOnEnd: false,
    onSnapshotKey: () => takeSnapshot(false),
  });
  let outcome: LinuxOutcome;
  try {
    console_.connect((bytes) => (hvcConsole ? hvcInput.next(bytes) : vm.handle.send(bytes)));
    if (devicesPath !== undefined) {
      // The device stage's own channels (the VM's are handled above and by bootLinux).
      vm.handle.events$.subscribe(({ channel, data }) => {
        if (!LINUX_EVENT_CHANNELS.includes(channel)) {
          process.stderr.write(`\r\n[kvm-rx] ${channel}: ${inspect(data, { breakLength: Infinity })}\n`);
        }
      });
    }
    outcome = await vm.handle.done;
  } finally {
    if (timer) clearTimeout(timer);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    console_.close();
    hvcInput.complete();
    tap?.close();
  }
  const where = outcome.reason === 'stopped' && stoppedAt !== undefined ? `, at rip ${hex(stoppedAt)}` : '';
  process.stderr.write(`\r\n[kvm-rx] ${describeEnd(outcome, vm.why())}${where}\n`);
  if (trace) process.stderr.write(formatTrace(outcome));
  switch (outcome.reason) {
    case 'reset':
    case 'halt':
      return BOOT_STATUS.ok;
    case 'stopped':
      return vm.why() === 'timeout' ? BOOT_STATUS.timeout : BOOT_STATUS.ok;
    case 'error':
      return BOOT_STATUS.error;
  }
}
