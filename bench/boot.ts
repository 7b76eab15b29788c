/**
 * Linux boot: kvm-rx against a C VMM, on the same machine in the same run.
 *
 * Builds the native baseline (bench/c/linux-boot.c: the same guest layout, CPUID, in-kernel
 * irqchip/PIT and devices as bootLinux(), in a plain KVM_RUN loop), boots the guest fetched by
 * `npm run guest:fetch` with it, then boots the same kernel, initrd, command line and RAM size
 * with kvm-rx (`scripts/e2e-linux.ts`, i.e. bootLinux() on the worker runtime), one after the
 * other so that they do not compete for CPUs. Prints the time to `Run /init as init process`,
 * the time to the reset, CPU and exit counts, and the ratios kvm-rx / C.
 *
 *   npm run bench:boot   (env: GUEST_DIR, CMDLINE, MEM_MIB, RUNS (pairs, default 1),
 *                         TIMEOUT_S (per boot, default 900), SAVE=1 to write bench/results/<start time>-boot.txt)
 *
 * On this PVM host one pair takes 8 minutes or more: guest kernel code runs in KVM's emulator.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostSummary } from '../src/vmm/doctor';
import { hostVirtualization, stockKernelCmdline } from '../src/vmm/host';
import { runMain } from '../scripts/run-main';

interface BootFigures {
  ok: boolean;
  reason: string;
  runInitWall: number | null;
  runInitGuest: number | null;
  totalWall: number;
  cpuSystem: number;
  cpuUser: number;
  exits: number;
}

const root = join(__dirname, '..');
const guestDir = process.env.GUEST_DIR ?? join(root, '.guest');
const kernel = join(guestDir, 'vmlinux');
const initrd = join(guestDir, 'initramfs.cpio');
const mode = hostVirtualization();
const cmdline = process.env.CMDLINE ?? stockKernelCmdline(mode);
const memMiB = Number(process.env.MEM_MIB ?? 256);
const runs = Number(process.env.RUNS ?? 1);
const timeoutS = Number(process.env.TIMEOUT_S ?? 900);

function buildBaseline(dir: string): string {
  const exe = join(dir, 'linux-boot');
  const cc = spawnSync('cc', ['-O2', '-Wall', '-o', exe, join(root, 'bench/c/linux-boot.c')], { encoding: 'utf8' });
  if (cc.status !== 0) throw new Error(`cannot build the C baseline:\n${cc.stderr}`);
  return exe;
}

/** Runs the C VMM; console lines are timestamped as they arrive (its stdout is line-buffered). */
function bootC(exe: string): Promise<BootFigures> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(exe, ['-m', String(memMiB), '-t', String(timeoutS), kernel, initrd, cmdline], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let runInitWall: number | null = null;
    let runInitGuest: number | null = null;
    let pending = '';
    child.stdout.setEncoding('latin1');
    child.stdout.on('data', (chunk: string) => {
      pending += chunk;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const l = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (runInitWall === null && l.includes('Run /init as init process')) {
          runInitWall = Number(process.hrtime.bigint() - t0) / 1e9;
          const g = /^\[\s*(\d+\.\d+)\]/.exec(l);
          if (g) runInitGuest = Number(g[1]);
        }
      }
    });
    let err = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (c: string) => (err += c));
    child.on('error', reject);
    child.on('close', (status) => {
      const r = /RESULT reason=(\S+) exits=(\d+) .*wall=([\d.]+) sys=([\d.]+) user=([\d.]+)/.exec(err);
      if (!r) return reject(new Error(`the C VMM ended (status ${status}) without a RESULT line:\n${err}`));
      resolve({
        ok: status === 0 && runInitWall !== null,
        reason: r[1],
        runInitWall,
        runInitGuest,
        totalWall: Number(r[3]),
        cpuSystem: Number(r[4]),
        cpuUser: Number(r[5]),
        exits: Number(r[2]),
      });
    });
  });
}

/** Runs scripts/e2e-linux.ts (bootLinux) in its own process and reads its JSON summary. */
function bootKvmRx(dir: string): Promise<BootFigures> {
  const json = join(dir, 'kvm-rx.json');
  rmSync(json, { force: true });
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['-r', 'ts-node/register/transpile-only', join(root, 'scripts/e2e-linux.ts')],
      {
        cwd: root,
        stdio: ['ignore', 'ignore', 'inherit'],
        env: {
          ...process.env,
          QUIET: '1',
          E2E_JSON: json,
          GUEST_DIR: guestDir,
          CMDLINE: cmdline,
          MEM_MIB: String(memMiB),
          TIMEOUT_S: String(timeoutS),
        },
      },
    );
    child.on('error', reject);
    child.on('close', (status) => {
      if (!existsSync(json)) return reject(new Error(`e2e-linux ended (status ${status}) without a summary`));
      resolve(JSON.parse(readFileSync(json, 'utf8')) as BootFigures);
    });
  });
}

const fmt = (v: number | null) => (v === null ? '—' : v.toFixed(2));
const ratio = (a: number | null, b: number | null) => (a === null || b === null || b === 0 ? '—' : (a / b).toFixed(3));

async function main(): Promise<number> {
  if (!existsSync(kernel)) {
    console.error(`no kernel at ${kernel}: run \`npm run guest:fetch\` first`);
    return 1;
  }
  const started = new Date();
  const dir = mkdtempSync(join(tmpdir(), 'kvm-rx-boot-bench-'));
  const lines: string[] = [];
  const say = (l: string) => {
    console.log(l);
    lines.push(l);
  };
  try {
    const exe = buildBaseline(dir);
    say(`bench:boot ${started.toISOString()} host ${mode}, ${memMiB} MiB, kernel ${kernel}`);
    say(`cmdline: ${cmdline}`);
    say(await hostSummary());
    say('run  VMM     Run /init wall (guest)   reset wall   CPU sys+user   exits   result');
    const pairs: { c: BootFigures; k: BootFigures }[] = [];
    for (let i = 1; i <= runs; i++) {
      const c = await bootC(exe);
      say(row(i, 'C', c));
      const k = await bootKvmRx(dir);
      say(row(i, 'kvm-rx', k));
      pairs.push({ c, k });
    }
    for (const [i, { c, k }] of pairs.entries()) {
      say(
        `pair ${i + 1}: kvm-rx / C = ${ratio(k.runInitWall, c.runInitWall)} to Run /init (wall), ` +
          `${ratio(k.totalWall, c.totalWall)} to the reset (wall), ` +
          `${ratio(k.cpuSystem + k.cpuUser, c.cpuSystem + c.cpuUser)} in CPU`,
      );
    }
    if (process.env.SAVE === '1') {
      const stamp = started.toISOString().slice(0, 16).replace(':', '');
      const out = join(root, 'bench/results', `${stamp}-boot.txt`);
      writeFileSync(out, lines.join('\n') + '\n');
      console.log(`saved to ${out}`);
    }
    return pairs.every((p) => p.c.ok && p.k.ok) ? 0 : 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function row(i: number, who: string, f: BootFigures): string {
  return (
    `${String(i).padStart(3)}  ${who.padEnd(6)}  ${fmt(f.runInitWall).padStart(8)} s (${fmt(f.runInitGuest).padStart(7)} s)` +
    `   ${fmt(f.totalWall).padStart(8)} s   ${(f.cpuSystem + f.cpuUser).toFixed(1).padStart(7)} s  ${String(f.exits).padStart(6)}   ` +
    `${f.ok ? 'ok' : 'FAILED'} (${f.reason})`
  );
}

runMain(main);
