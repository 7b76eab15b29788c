/**
 * Snapshots of the micro-VM: the guest kernel (`npm run guest:kernel`) with virtio-net on a TAP in a
 * network namespace this bench creates (and deletes at the end, also on failure or Ctrl-C) and
 * virtio-rng, at two RAM sizes side by side (128 MiB and 2 GiB by default):
 *
 * 1. cold boot: bootLinux() to the console's `Run /init`;
 * 2. a full snapshot of the booted guest (`linux.snapshot(path)`): time, file size, disk blocks;
 * 3. with `trackDirtyPages`: a full snapshot, 1 s of running, one ping, then a diff snapshot;
 * 4. restore, each in a new process (`bench/snapshot-guest.ts`, so nothing is loaded or compiled
 *    yet and the file is only in the page cache), RUNS / COLD_RUNS times: (a) restoreLinux() to
 *    its return, (b) to the vCPU running (when the worker entered its first KVM_RUN, by the time it
 *    wrote: `run.runningSince`; the main thread may be busy then with the devices' deferred work);
 *    also getRegs answered once running, and the first exit to userspace, (c) to the first echo
 *    reply from the restored guest; on a runtime whose thread was started and loaded the Linux
 *    device pipeline before the clock (warm) or a new one (cold: the thread's start counts); then
 *    SERIES restores one after the other in one process (a service restoring again and again):
 *    the first, and the others; and the same series with each restore into a VM prepared before
 *    its clock (`prepareLinuxRestore`);
 * 5. the pieces of a restore one by one, in a fresh process and then warm: readSnapshotChain,
 *    KVM_CREATE_VM, the irqchip, the mmap of RAM, the memory slot, the vCPU and VM restore ioctls,
 *    the virtio devices; and a bare Node worker thread's start.
 *
 *   npm run bench:snapshot   (env: RUNS (restores per size on a warm runtime, default 10), COLD_RUNS
 *                             (on a new runtime, default 3), SIZES (MiB, default 128,2048),
 *                             PIECES (repetitions, default 5), SERIES (restores in one process,
 *                             default 10))
 *
 * Needs root (the namespace and the TAP), /dev/net/tun, ping and the guest kernel. Prints a table and
 * writes bench/results/<start time>-snapshot.{txt,json}.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostSummary } from '../src/vmm/doctor';
import { runMain } from '../scripts/run-main';
import { median, quantile } from './stats';
import { GUEST_IP, GUEST_MAC, HOST_IP, TAP } from './snapshot-guest';

const root = join(__dirname, '..');
const runs = Number(process.env.RUNS ?? 10);
const coldRuns = Number(process.env.COLD_RUNS ?? 3);
const sizes = (process.env.SIZES ?? '128,2048').split(',').map(Number);
const pieceReps = Number(process.env.PIECES ?? 5);
const seriesN = Number(process.env.SERIES ?? 10);
const ns = `kvmrx-snap-${process.pid}`;

function guestKernel(): string {
  const fromEnv = process.env.KVMRX_GUEST_KERNEL;
  if (fromEnv) return fromEnv;
  const r = spawnSync('bash', [join(root, 'scripts/guest-kernel.sh'), '--cached'], { encoding: 'utf8' });
  const path = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !existsSync(path)) throw new Error('no guest kernel built: run npm run guest:kernel');
  return path;
}

const ip = (...a: string[]) => spawnSync('ip', a, { encoding: 'utf8' });

function createNetns(): void {
  for (const a of [
    ['netns', 'add', ns],
    ['-n', ns, 'link', 'set', 'lo', 'up'],
    ['-n', ns, 'tuntap', 'add', 'dev', TAP, 'mode', 'tap', 'vnet_hdr'],
    ['-n', ns, 'addr', 'add', `${HOST_IP}/24`, 'dev', TAP],
    ['-n', ns, 'link', 'set', TAP, 'up'],
    // The guest's MAC is fixed, so the host needs no ARP exchange (whose retries are 1 s apart)
    // before its first echo request reaches a restored guest; the entry outlives the TAP's carrier.
    ['-n', ns, 'neigh', 'replace', GUEST_IP, 'lladdr', GUEST_MAC, 'dev', TAP, 'nud', 'permanent'],
  ]) {
    const r = ip(...a);
    if (r.status !== 0) throw new Error(`ip ${a.join(' ')}: ${r.stderr.trim()}`);
  }
}

/** Runs bench/snapshot-guest.ts in the namespace and returns its `result` line, parsed. */
function child(args: string[], limitMs: number): Promise<Record<string, unknown>> {
  const p = spawn(
    'ip',
    [
      'netns',
      'exec',
      ns,
      process.execPath,
      '-r',
      'ts-node/register/transpile-only',
      join(__dirname, 'snapshot-guest.ts'),
      ...args,
    ],
    { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  p.stdout.on('data', (b: Buffer) => (out += b.toString()));
  p.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const kill = setTimeout(() => p.kill('SIGKILL'), limitMs);
  return new Promise((resolve, reject) => {
    p.on('close', (code, signal) => {
      clearTimeout(kill);
      const line = out.split('\n').find((l) => l.startsWith('result '));
      if (code === 0 && line) return resolve(JSON.parse(line.slice(7)) as Record<string, unknown>);
      reject(
        new Error(
          `snapshot-guest ${args[0]} ended (${signal ?? code}${signal === 'SIGKILL' ? `, over ${limitMs} ms` : ''}): ${err.slice(-1500)}${out.slice(-500)}`,
        ),
      );
    });
  });
}

interface FileFigures {
  path: string;
  bytes: number;
  diskBytes: number;
  pages?: number;
}
interface Take {
  mib: number;
  bootMs: number;
  fullMs: number;
  full: FileFigures;
  diffMs?: number;
  diff?: FileFigures;
  pinged?: boolean;
  outcome: string;
}
interface Restore {
  mode: 'warm' | 'cold';
  prepared?: boolean;
  warmUpMs?: number;
  returnMs: number;
  runningMs: number;
  regsMs: number;
  firstExitMs: number;
  pingMs: number;
  rxMs: number;
  rxAtReturn: number;
  txMs: number;
  outcome: string;
  error?: string;
}
interface Pieces {
  runs: Array<Record<string, number>>;
  chain: Array<Record<string, number>>;
  bareWorkerMs: number[];
}
interface SizeResult {
  mib: number;
  take: Take;
  takeTracked: Take;
  restores: Restore[];
  /** SERIES restores one after the other in one process; the same into prepared VMs. */
  series: Restore[];
  seriesPrepared: Restore[];
  pieces: Pieces;
}

const mb = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
const ms = (n: number | undefined) =>
  n === undefined ? '—' : n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2);
const stat = (xs: number[]) => (xs.length === 0 ? '—' : `${ms(median(xs))} (p90 ${ms(quantile(xs, 0.9))})`);

function table(results: SizeResult[]): string[] {
  const head = `| what | ${results.map((r) => (r.mib >= 1024 ? `${r.mib / 1024} GiB` : `${r.mib} MiB`)).join(' | ')} |`;
  const rows: string[] = [head, `| ---- |${results.map(() => ' ---- |').join('')}`];
  const row = (what: string, f: (r: SizeResult) => string) => rows.push(`| ${what} | ${results.map(f).join(' | ')} |`);
  row(
    '1. cold boot: bootLinux() to `Run /init` (ms)',
    (r) => `${ms(r.take.bootMs)} (tracked: ${ms(r.takeTracked.bootMs)})`,
  );
  row('2. full snapshot of the booted guest (ms)', (r) => ms(r.take.fullMs));
  row('   its file: size / disk blocks × 512', (r) => `${mb(r.take.full.bytes)} / ${mb(r.take.full.diskBytes)}`);
  row('3. full snapshot with trackDirtyPages (ms)', (r) => ms(r.takeTracked.fullMs));
  row('   diff snapshot after 1 s and a ping (ms)', (r) => ms(r.takeTracked.diffMs));
  row(
    '   diff: pages / size / disk',
    (r) =>
      `${r.takeTracked.diff?.pages ?? '—'} / ${mb(r.takeTracked.diff?.bytes ?? 0)} / ${mb(r.takeTracked.diff?.diskBytes ?? 0)}${r.takeTracked.pinged ? '' : ' (ping unanswered)'}`,
  );
  for (const mode of ['warm', 'cold'] as const) {
    const of = (r: SizeResult) => r.restores.filter((x) => x.mode === mode && x.error === undefined);
    const n = (r: SizeResult) => `${of(r).length}/${r.restores.filter((x) => x.mode === mode).length}`;
    row(`4. restore, ${mode} runtime: runs ok`, n);
    row(`   (a) restoreLinux() returns (ms, median, p90)`, (r) => stat(of(r).map((x) => x.returnMs)));
    row(`   (b) vCPU running: run state word (ms)`, (r) => stat(of(r).map((x) => x.runningMs)));
    row(`   getRegs answered, asked once running (ms)`, (r) => stat(of(r).map((x) => x.regsMs)));
    row(`   first exit to userspace (ms)`, (r) => stat(of(r).map((x) => x.firstExitMs)));
    row(
      `   first frame into the guest (frames already in at the return) / first out of it (ms)`,
      (r) =>
        `${stat(of(r).map((x) => x.rxMs))} (${median(of(r).map((x) => x.rxAtReturn))}) / ${stat(of(r).map((x) => x.txMs))}`,
    );
    row(`   (c) first echo reply (ms)`, (r) => stat(of(r).map((x) => x.pingMs)));
    if (mode === 'warm')
      row(`   warm-up before the clock: thread + pipeline load (ms)`, (r) => stat(of(r).map((x) => x.warmUpMs ?? 0)));
  }
  for (const prep of [false, true]) {
    const list = (r: SizeResult) => (prep ? r.seriesPrepared : r.series);
    const ok = (r: SizeResult) => list(r).filter((x) => x.error === undefined);
    const later = (r: SizeResult, k: 'returnMs' | 'runningMs' | 'pingMs') =>
      `${ms(ok(r)[0]?.[k])}; ${stat(
        ok(r)
          .slice(1)
          .map((x) => x[k]),
      )}`;
    const what = prep ? ', each into a VM prepared before its clock' : '';
    row(
      `4. restore ${seriesN} times in one process, warm runtime${what}: runs ok`,
      (r) => `${ok(r).length}/${list(r).length}`,
    );
    row('   (a) restoreLinux() returns (ms: the first; the others)', (r) => later(r, 'returnMs'));
    row('   (b) vCPU running (ms: the first; the others)', (r) => later(r, 'runningMs'));
    row('   (c) first echo reply (ms: the first; the others)', (r) => later(r, 'pingMs'));
  }
  const steps = Object.keys(results[0]?.pieces.runs[0] ?? {});
  for (const s of steps)
    row(`5. ${s} (ms: fresh process; then warm median)`, (r) => {
      const v = r.pieces.runs.map((x) => x[s]);
      return `${ms(v[0])}; ${ms(median(v.slice(1)))}`;
    });
  row('   sum of the steps (fresh; warm)', (r) => {
    const sums = r.pieces.runs.map((x) => Object.values(x).reduce((a, b) => a + b, 0));
    return `${ms(sums[0])}; ${ms(median(sums.slice(1)))}`;
  });
  row('   readSnapshotChain + mmap of full + diff (warm)', (r) =>
    ms(median(r.pieces.chain.slice(1).map((x) => x.readSnapshotChain + x.mmap))),
  );
  row('   bare Node worker thread: start to first message (ms)', (r) => stat(r.pieces.bareWorkerMs));
  return rows;
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0 || !existsSync('/dev/net/tun') || spawnSync('ping', ['-V']).status !== 0) {
    console.error('bench:snapshot needs root (a network namespace and a TAP), /dev/net/tun and ping');
    return 1;
  }
  const kernelPath = guestKernel();
  const started = new Date();
  const header = [
    `kvm-rx bench:snapshot, ${started.toISOString()}, Node ${process.version}, load ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
    await hostSummary(),
    `guest kernel: ${kernelPath}; sizes ${sizes.join(', ')} MiB; restores per size: ${runs} warm, ${coldRuns} cold`,
  ];
  process.stderr.write(`${header.join('\n')}\n`);
  const dir = mkdtempSync(join(tmpdir(), 'kvmrx-snap-bench-'));
  const cleanup = () => {
    ip('netns', 'del', ns); // the TAP and its address go with it
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = (sig: NodeJS.Signals) => {
    cleanup();
    process.kill(process.pid, sig);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const results: SizeResult[] = [];
  try {
    createNetns();
    for (const mib of sizes) {
      const progress = (s: string) => process.stderr.write(`[${mib} MiB] ${s}\n`);
      progress('boot + full snapshot');
      const take = (await child(['take', kernelPath, String(mib), dir, '0'], 200_000)) as unknown as Take;
      progress(`boot ${ms(take.bootMs)} ms, full snapshot ${ms(take.fullMs)} ms; boot with trackDirtyPages + diff`);
      const takeTracked = (await child(['take', kernelPath, String(mib), dir, '1'], 200_000)) as unknown as Take;
      progress(`diff snapshot ${ms(takeTracked.diffMs)} ms; pieces`);
      const pieces = (await child(
        ['pieces', take.full.path, String(pieceReps), takeTracked.diff?.path ?? ''],
        120_000,
      )) as unknown as Pieces;
      const restores: Restore[] = [];
      for (let i = 0; i < Math.max(runs, coldRuns); i++)
        for (const mode of ['cold', 'warm'] as const) {
          if (i >= (mode === 'warm' ? runs : coldRuns)) continue;
          const r = (await child(['restore', take.full.path, mode], 60_000)) as unknown as Restore;
          restores.push(r);
          progress(
            `restore ${mode} ${i + 1}: ${r.error ?? `return ${ms(r.returnMs)}, running ${ms(r.runningMs)}, ping ${ms(r.pingMs)} ms`}`,
          );
        }
      progress(`${seriesN} restores in one process`);
      const { restores: series } = (await child(
        ['series', take.full.path, String(seriesN)],
        30_000 * seriesN,
      )) as unknown as {
        restores: Restore[];
      };
      progress(`series: running ${series.map((r) => ms(r.runningMs)).join(', ')} ms`);
      const { restores: seriesPrepared } = (await child(
        ['series', take.full.path, String(seriesN), 'prepared'],
        30_000 * seriesN,
      )) as unknown as { restores: Restore[] };
      progress(`series, prepared: running ${seriesPrepared.map((r) => ms(r.runningMs)).join(', ')} ms`);
      results.push({ mib, take, takeTracked, restores, series, seriesPrepared, pieces });
    }
  } finally {
    cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  const text = [...header, '', ...table(results)].join('\n');
  process.stdout.write(`${text}\n`);
  const stamp = started.toISOString().slice(0, 16).replace(':', '');
  mkdirSync(join(root, 'bench/results'), { recursive: true });
  const base = join(root, 'bench/results', `${stamp}-snapshot`);
  writeFileSync(`${base}.txt`, `${text}\n`);
  writeFileSync(
    `${base}.json`,
    `${JSON.stringify({ started: started.toISOString(), node: process.version, load: loadavg(), kernel: kernelPath, host: header[1], runs, coldRuns, results }, null, 2)}\n`,
  );
  process.stderr.write(`written: ${base}.{txt,json}\n`);
  return 0;
}

runMain(main);
