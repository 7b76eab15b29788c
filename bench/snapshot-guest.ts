/**
 * The VM side of `bench/snapshot.ts`, run inside the network namespace that bench creates (the TAP
 * `kvmrx0` with the host end 10.99.0.1 and a permanent neighbour entry for the guest's MAC). One
 * process per measurement, so that every restore starts as a real one does: a fresh Node, nothing
 * of kvm-rx loaded or compiled yet, the snapshot file only in the page cache. Prints one line,
 * `result <JSON>`, and exits.
 *
 *   ip netns exec <ns> node -r ts-node/register/transpile-only bench/snapshot-guest.ts take <bzImage> <MiB> <dir> <track 0|1>
 *   … snapshot-guest.ts restore <snapshot> <warm|cold> [prepared]
 *   … snapshot-guest.ts pieces <snapshot> <reps> [<diff snapshot>]
 *   … snapshot-guest.ts series <snapshot> <n> [prepared]
 *
 * - `take`: boots the guest kernel (virtio-net on the TAP, virtio-rng, the loop init), times
 *   bootLinux() to `Run /init`, then a full snapshot (`<dir>/<MiB>.full.snap`); with track=1 it
 *   boots with `trackDirtyPages`, writes `<dir>/<MiB>.base.snap`, lets the guest run 1 s, pings it
 *   once and writes the diff `<dir>/<MiB>.diff.snap`.
 * - `restore`: restoreLinux() of the snapshot, timed to its return, to the vCPU running, to the
 *   first echo reply (a `ping` started before the clock, whose requests wait in the TAP), on a
 *   runtime whose thread is already started and has loaded the Linux device pipeline (`warm`) or a
 *   new one (`cold`).
 * - `prepared` (restore, series): each restore into a VM made before its clock (`prepareLinuxRestore`).
 * - `series`: `n` restores as `restore warm` does them, one after the other in this process on one
 *   warm runtime (each VM stopped before the next): the first is this process's first restore,
 *   the others what a long-lived service restoring again and again sees.
 * - `pieces`: the steps of restoreLinux() one by one (as `restoreLinuxMachine` does them), `reps`
 *   times in this process (the first in a fresh process, the others warm), and the cost of a bare
 *   worker thread.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { readFileSync, statSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { virtioNet } from '../src/devices/virtio/net';
import { virtioRng } from '../src/devices/virtio/rng';
import { VirtioMmioDevice } from '../src/devices/virtio/mmio-device';
import { VcpuRuntime } from '../src/runtime/pool';
import type { VcpuRun } from '../src/runtime/vcpu-run';
import { loopInitramfs } from '../src/testing/loop-init';
import { enterRealMode } from '../src/testing/real-mode';
import { KVM_MAX_CPUID_ENTRIES } from '../src/wrappers/fam';
import { GuestMemory } from '../src/wrappers/guest-memory';
import { Kvm } from '../src/wrappers/kvm';
import { Tap } from '../src/wrappers/tap';
import { BOOT_LAYOUT } from '../src/vmm/boot';
import { hostVirtualization, stockKernelCmdline } from '../src/vmm/host';
import { bootLinux, restoreLinux, type LinuxVm } from '../src/vmm/linux';
import { checkLinuxSnapshotState, prepareLinuxRestore } from '../src/vmm/linux-snapshot';
import {
  checkSnapshotHost,
  mapSnapshotMemory,
  readSnapshotChain,
  readSnapshotFile,
  snapshotHost,
} from '../src/vmm/snapshot-file';
import { restoreVcpuState, restoreVmState } from '../src/vmm/vcpu-state';
import type { VcpuFd } from '../src/wrappers/vcpu-fd';

export const TAP = 'kvmrx0';
export const HOST_IP = '10.99.0.1';
export const GUEST_IP = '10.99.0.2';
export const GUEST_MAC = '52:54:00:12:34:56';

const now = () => performance.now();
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const say = (r: unknown) =>
  process.stdout.write(`result ${JSON.stringify(r, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}\n`);
const devices = (tap: Tap) => [virtioNet({ backend: tap, mac: GUEST_MAC }), virtioRng()];

/** Resolves when `test()` holds (polled every `everyMs`, 0 = each turn of the event loop), or rejects after `limitMs`. */
function until(test: () => boolean, limitMs: number, what: string, everyMs = 0): Promise<number> {
  const t0 = now();
  return new Promise((resolve, reject) => {
    const poll = () => {
      if (test()) return resolve(now());
      if (now() - t0 > limitMs) return reject(new Error(`no ${what} within ${limitMs} ms`));
      if (everyMs === 0) setImmediate(poll);
      else setTimeout(poll, everyMs);
    };
    poll();
  });
}

function fileFigures(path: string) {
  const st = statSync(path);
  return { bytes: st.size, diskBytes: st.blocks * 512 };
}

/** One `ping -c 1`; resolves with whether it was answered. */
function pingOnce(): Promise<boolean> {
  return new Promise((resolve) => {
    const p = spawn('ping', ['-n', '-c', '1', '-W', '3', GUEST_IP], { stdio: 'ignore' });
    p.on('exit', (code) => resolve(code === 0));
    p.on('error', () => resolve(false));
  });
}

async function take(kernelPath: string, mib: number, dir: string, track: boolean): Promise<void> {
  const tap = Tap.open(TAP);
  let text = '';
  let runInit: number | undefined;
  const t0 = now();
  const linux = bootLinux({
    kernel: readFileSync(kernelPath),
    initrd: loopInitramfs(),
    memSize: mib * 2 ** 20,
    cmdline: `${stockKernelCmdline(hostVirtualization())} ip=${GUEST_IP}::${HOST_IP}:255.255.255.0::eth0:off`,
    virtio: devices(tap),
    trackDirtyPages: track,
    signal: AbortSignal.timeout(150_000),
    output: (b) => {
      text += Buffer.from(b).toString('latin1');
      if (runInit === undefined && text.includes('Run /init')) runInit = now();
    },
  });
  try {
    let ended = false;
    void linux.done.then(() => (ended = true));
    await until(() => ended || (runInit !== undefined && text.includes('IP-Config: Complete')), 150_000, 'Run /init');
    if (ended) throw new Error(`the guest ended before Run /init: ${JSON.stringify((await linux.done).reason)}`);
    const bootMs = (runInit as number) - t0;
    await sleep(300); // the init runs
    const out: Record<string, unknown> = { mib, track, bootMs };
    // One exchange before the snapshot, so the saved guest knows the host's MAC (as any guest that
    // has been on the network does): the restored one then answers the first echo request at once.
    out.pingedBefore = await pingOnce();
    const full = join(dir, `${mib}.${track ? 'base' : 'full'}.snap`);
    let t = now();
    await linux.snapshot(full);
    out.fullMs = now() - t;
    out.full = { path: full, ...fileFigures(full) };
    if (track) {
      await sleep(1000);
      out.pinged = await pingOnce();
      const diff = join(dir, `${mib}.diff.snap`);
      t = now();
      const h = await linux.snapshot(diff, { diff: true });
      out.diffMs = now() - t;
      out.diff = { path: diff, pages: h.memory[0].dirty?.pages, ...fileFigures(diff) };
    }
    const o = await linux.stop();
    out.outcome = o.reason;
    if (o.error) out.error = o.error.message;
    say(out);
  } finally {
    await linux.stop();
    tap.close();
  }
}

/** Runs a tiny real-mode guest (`hlt`) through the Linux device pipeline: the thread starts and loads it. */
async function warmUp(runtime: VcpuRuntime, kvm: Kvm): Promise<number> {
  const t0 = now();
  const vm = kvm.createVm();
  const mem = GuestMemory.anonymous(0x1000);
  try {
    mem.bytes[0] = 0xf4; // hlt
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory: mem });
    const vcpu = enterRealMode(vm.createVcpu(0), { rip: 0n });
    const pipeline = join(__dirname, '../src/vmm/linux-devices.ts');
    const run = runtime.start(vcpu, { pipeline, pipelineOptions: { memSize: 0x1000, com1Irq: false } });
    const o = await run.done;
    if (o.lastExit !== 'Hlt') throw new Error(`warm-up ended at ${o.lastExit}`);
  } finally {
    vm.close();
    mem.close();
  }
  return now() - t0;
}

/** Captures the VcpuRun that restoreLinux() starts on `runtime`. */
function capture(runtime: VcpuRuntime): { run?: VcpuRun } {
  const got: { run?: VcpuRun } = {};
  const start = runtime.start.bind(runtime);
  runtime.start = (vcpu: VcpuFd, options) => (got.run = start(vcpu, options));
  return got;
}

/** A runtime whose thread is started and has run the Linux device pipeline once, and how long that took. */
async function warmRuntime(): Promise<{ runtime: VcpuRuntime; warmUpMs: number }> {
  const runtime = new VcpuRuntime({ maxVcpus: 1 });
  const kvm = new Kvm();
  try {
    return { runtime, warmUpMs: await warmUp(runtime, kvm) };
  } finally {
    kvm.close();
  }
}

async function restore(path: string, mode: 'warm' | 'cold', prepared: boolean): Promise<void> {
  const warm = mode === 'warm' ? await warmRuntime() : undefined;
  const out = await restoreOnce(path, warm?.runtime, prepared);
  if (warm) {
    const tc = now();
    await warm.runtime.close();
    out.closeMs = now() - tc;
  }
  say({ path, mode, prepared, ...(warm ? { warmUpMs: warm.warmUpMs } : {}), ...out });
}

/** `n` restores one after the other in this process, on one warm runtime: a service restoring again and again. */
async function series(path: string, n: number, prepared: boolean): Promise<void> {
  const warm = await warmRuntime();
  const restores: Array<Record<string, unknown>> = [];
  try {
    for (let i = 0; i < n; i++) restores.push(await restoreOnce(path, warm.runtime, prepared));
  } finally {
    await warm.runtime.close();
  }
  say({ path, prepared, warmUpMs: warm.warmUpMs, restores });
}

/**
 * One restoreLinux() of `path`, timed, on `runtime` (or a new one, whose start then counts, closed
 * at the end); the VM is stopped at the end.
 */
async function restoreOnce(
  path: string,
  warmRuntime: VcpuRuntime | undefined,
  prepare: boolean,
): Promise<Record<string, unknown>> {
  const tap = Tap.open(TAP);
  const virtio = devices(tap);
  const out: Record<string, unknown> = {};
  let runtime = warmRuntime;
  // The echo requests wait in the TAP's queue until the restored virtio-net takes them.
  let replyAt: number | undefined;
  // Every 50 ms: one or two wait in the TAP before the clock starts. Faster floods leave hundreds
  // queued while a cold worker starts, and the guest's first reply then came seconds late in
  // some runs (not understood; never with a short queue).
  const ping = spawn('ping', ['-n', '-i', '0.05', '-w', '20', GUEST_IP], { stdio: ['ignore', 'pipe', 'ignore'] });
  ping.stdout.on('data', (b: Buffer) => {
    if (replyAt === undefined && b.toString().includes('bytes from')) replyAt = now();
  });
  // A prepared VM is made before the clock, as a service keeps one ready for its next restore.
  const prepared = prepare
    ? prepareLinuxRestore({ memSize: (readSnapshotFile(path).state as { memSize: number }).memSize })
    : undefined;
  await sleep(30);
  let linux: LinuxVm | undefined;
  try {
    const t0 = now();
    runtime ??= new VcpuRuntime({ maxVcpus: 1 });
    const got = capture(runtime);
    linux = restoreLinux(path, {
      virtio,
      runtime,
      signal: AbortSignal.timeout(30_000),
      ...(prepared ? { prepared } : {}),
    });
    const tReturn = now();
    const run = got.run as VcpuRun;
    const net = virtio[0] as ReturnType<typeof virtioNet>;
    // Frames the device took from the TAP's queue while restoreLinux() ran, before any vCPU did.
    const rxAtReturn = net.stats.rxPackets;
    const vm = linux;
    // Everything watched at once, on every turn of the event loop, each first time kept.
    const at: Record<string, number> = {};
    const exits0 = run.exitCount;
    const mark = (k: string, cond: boolean) => {
      if (cond && at[k] === undefined) at[k] = now() - t0;
    };
    await until(
      () => {
        mark('runningMs', run.running);
        if (at.runningMs !== undefined && at.regsAsked === undefined) {
          at.regsAsked = now() - t0;
          void vm.call('getRegs').then(() => mark('regsMs', true));
        }
        mark('firstExitMs', run.exitCount > exits0);
        mark('rxMs', net.stats.rxPackets > 0);
        mark('txMs', net.stats.txPackets > 0);
        if (replyAt !== undefined) mark('pingMs', true);
        return ['runningMs', 'regsMs', 'firstExitMs', 'rxMs', 'txMs', 'pingMs'].every((k) => at[k] !== undefined);
      },
      20_000,
      'running vCPU, exit and echo reply',
    );
    // When the worker entered KVM_RUN, by its own clock reading: this thread may be busy then (the
    // devices' deferred restore work runs here while the guest runs), and would see it late.
    const since = run.runningSince;
    if (since !== undefined) at.runningMs = since - performance.timeOrigin - t0;
    Object.assign(out, { returnMs: tReturn - t0, ...at, rxAtReturn });
    if (replyAt !== undefined) out.pingMs = replyAt - t0;
    out.net = { ...net.stats };
    const ts = now();
    const o = await linux.stop();
    out.stopMs = now() - ts;
    out.outcome = o.reason;
    out.exits = o.exits;
    if (o.error) out.error = o.error.message;
  } catch (e) {
    out.error = (e as Error).message;
  } finally {
    ping.kill();
    await linux?.stop();
    prepared?.close(); // nothing, once a restore took it
    if (warmRuntime === undefined) {
      const tc = now();
      await runtime?.close();
      out.closeMs = now() - tc;
    }
    tap.close();
  }
  return out;
}

/** The steps of restoreLinux() / restoreLinuxMachine() one by one. */
function restoreSteps(path: string, tap: Tap): Record<string, number> {
  const ms: Record<string, number> = {};
  let t = now();
  const lap = (k: string) => {
    const n = now();
    ms[k] = (ms[k] ?? 0) + (n - t);
    t = n;
  };
  const kvm = new Kvm();
  lap('openKvm');
  const chain = readSnapshotChain(path);
  lap('readSnapshotChain');
  const state = checkLinuxSnapshotState(chain[chain.length - 1]);
  checkSnapshotHost(chain[chain.length - 1], snapshotHost(kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES).entries));
  lap('checkState+host');
  const vm = kvm.createVm();
  lap('KVM_CREATE_VM');
  const [memory] = mapSnapshotMemory(chain, vm.backend);
  lap('mmap');
  try {
    // In restoreLinux()'s order: the slot before the irqchip (after it, it costs 4-12 ms here).
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory });
    lap('SET_USER_MEMORY_REGION');
    vm.setTssAddress(BOOT_LAYOUT.tss);
    vm.setIdentityMapAddress(BOOT_LAYOUT.identityMap);
    vm.createIrqChip();
    vm.createPit2({ flags: 0 });
    lap('TSS+irqchip+PIT');
    const vcpus = state.vcpus.map((v) => vm.createVcpu(v.id));
    lap('KVM_CREATE_VCPU');
    for (const [i, v] of state.vcpus.entries()) restoreVcpuState(vcpus[i], v);
    lap('vCPU restore ioctls');
    restoreVmState(vm, state.vm);
    lap('VM restore ioctls');
    if (memory.bytes.length !== memory.size) throw new Error('the RAM view is short'); // what the virtio queues read guest memory through
    lap('RAM view (external ArrayBuffer)');
    for (const [i, d] of devices(tap).entries()) {
      const saved = state.virtio[i];
      new VirtioMmioDevice(vm, d, { base: BigInt(saved.base), gsi: saved.gsi }).restoreState(saved.state);
    }
    lap('virtio devices');
  } finally {
    vm.close();
    memory.close();
    kvm.close();
    lap('close');
  }
  return ms;
}

/** A bare worker thread: start to its first message (Node's floor for a cold vCPU thread). */
function bareWorker(): Promise<number> {
  const t0 = now();
  const w = new Worker("require('node:worker_threads').parentPort.postMessage(1)", { eval: true });
  return new Promise((resolve, reject) => {
    w.once('message', () => {
      const ms = now() - t0;
      void w.terminate().then(() => resolve(ms));
    });
    w.once('error', reject);
  });
}

async function pieces(path: string, reps: number, diffPath?: string): Promise<void> {
  const tap = Tap.open(TAP);
  try {
    const runs: Array<Record<string, number>> = [];
    for (let i = 0; i < reps; i++) runs.push(restoreSteps(path, tap));
    const chain: Array<Record<string, number>> = [];
    if (diffPath !== undefined) for (let i = 0; i < reps; i++) chain.push(restoreSteps(diffPath, tap));
    const worker: number[] = [];
    for (let i = 0; i < 3; i++) worker.push(await bareWorker());
    say({ path, runs, diffPath, chain, bareWorkerMs: worker });
  } finally {
    tap.close();
  }
}

async function main(): Promise<void> {
  const [mode, ...a] = process.argv.slice(2);
  if (mode === 'take') await take(a[0], Number(a[1]), a[2], a[3] === '1');
  else if (mode === 'restore') await restore(a[0], a[1] === 'warm' ? 'warm' : 'cold', a[2] === 'prepared');
  else if (mode === 'pieces') await pieces(a[0], Number(a[1]), a[2] || undefined);
  else if (mode === 'series') await series(a[0], Number(a[1]), a[2] === 'prepared');
  else throw new Error(`unknown mode ${mode}`);
}

if (require.main === module)
  main().then(
    () => process.exit(0),
    (e: unknown) => {
      console.error(e);
      process.exit(1);
    },
  );
