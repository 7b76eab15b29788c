/**
 * The micro-VM: how long the guest kernel (`npm run guest:kernel`) takes to reach `Run /init`
 * under kvm-rx, against Debian's cloud kernel in the same run (when `npm run guest:fetch` has
 * fetched it), and the network round trip through virtio-net: `ping` (median and p99 of 200
 * echoes, 10 ms apart) and `ping -f` (packets per second) from inside a network namespace this
 * bench creates and deletes.
 *
 *   npm run bench:microvm    (env: RUNS (guest-kernel boots, default 3), CLOUD=0 to skip the cloud
 *                             kernel, NET=0 to skip the network, TIMEOUT_S (cloud boot, default 900))
 *
 * Boot times are the guest's own printk timestamp of `Run /init as init process` and the host's
 * wall time from bootLinux() to that line.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loopInitramfs } from '../src/testing/loop-init';
import { hostSummary } from '../src/vmm/doctor';
import { hostVirtualization, stockKernelCmdline } from '../src/vmm/host';
import { bootLinux } from '../src/vmm/linux';
import { runMain } from '../scripts/run-main';
import { median, quantile } from './stats';

const root = join(__dirname, '..');
const runs = Number(process.env.RUNS ?? 3);
const timeoutS = Number(process.env.TIMEOUT_S ?? 900);
const cmdline = stockKernelCmdline(hostVirtualization());

function guestKernel(): string {
  const fromEnv = process.env.KVMRX_GUEST_KERNEL;
  if (fromEnv) return fromEnv;
  const r = spawnSync('bash', [join(root, 'scripts/guest-kernel.sh'), '--cached'], { encoding: 'utf8' });
  const path = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !existsSync(path)) throw new Error('no guest kernel built: run npm run guest:kernel');
  return path;
}

interface Boot {
  guestS: number;
  wallS: number;
}

/** Boots `kernel` until `Run /init`, then stops it. */
async function bootToInit(kernel: Uint8Array, initrd: Uint8Array, cpus: number, limitS: number): Promise<Boot> {
  const ac = new AbortController();
  const t0 = performance.now();
  let text = '';
  let found: Boot | undefined;
  const vm = bootLinux({
    kernel,
    initrd,
    cpus,
    cmdline,
    signal: AbortSignal.any([ac.signal, AbortSignal.timeout(limitS * 1000)]),
    output: (b) => {
      text += Buffer.from(b).toString('latin1');
      const m = /\[\s*([\d.]+)\] Run \/init as init process/.exec(text);
      if (!found && m) {
        found = { guestS: Number(m[1]), wallS: (performance.now() - t0) / 1000 };
        ac.abort();
      }
    },
  });
  const o = await vm.done;
  if (!found) throw new Error(`no 'Run /init' (${o.reason}${o.error ? `: ${o.error.message}` : ''})`);
  return found;
}

async function network(kernelPath: string): Promise<string[]> {
  const ns = `kvmrx-bench-${process.pid}`;
  const ip = (...a: string[]) => spawnSync('ip', a, { encoding: 'utf8' });
  const out: string[] = [];
  try {
    for (const a of [
      ['netns', 'add', ns],
      ['-n', ns, 'link', 'set', 'lo', 'up'],
      ['-n', ns, 'tuntap', 'add', 'dev', 'kvmrx0', 'mode', 'tap', 'vnet_hdr'],
      ['-n', ns, 'addr', 'add', '10.99.0.1/24', 'dev', 'kvmrx0'],
      ['-n', ns, 'link', 'set', 'kvmrx0', 'up'],
    ]) {
      const r = ip(...a);
      if (r.status !== 0) throw new Error(`ip ${a.join(' ')}: ${r.stderr.trim()}`);
    }
    const child = spawn(
      'ip',
      [
        'netns',
        'exec',
        ns,
        process.execPath,
        '-r',
        'ts-node/register/transpile-only',
        join(__dirname, 'microvm-guest.ts'),
        kernelPath,
        'kvmrx0',
        '10.99.0.2',
        '10.99.0.1',
        '1',
      ],
      { cwd: root, stdio: ['pipe', 'pipe', 'inherit'] },
    );
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      child.stdout.on('data', (b: Buffer) => {
        buf += b.toString();
        if (/^ready /m.test(buf)) resolve();
      });
      child.on('exit', (c) => reject(new Error(`the VM exited (${c}) before it was ready: ${buf}`)));
    });
    const ping = spawnSync('ip', ['netns', 'exec', ns, 'ping', '-c', '200', '-i', '0.01', '-W', '2', '10.99.0.2'], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    const rtts = [...ping.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
    const flood = spawnSync('ip', ['netns', 'exec', ns, 'ping', '-f', '-c', '2000', '-w', '60', '10.99.0.2'], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    const f = /(\d+) packets transmitted, (\d+) received.*time (\d+)ms/.exec(flood.stdout);
    child.stdin.end();
    await new Promise((r) => child.on('exit', r));
    out.push(
      `| ping (200 × 10 ms apart)   | ${rtts.length} replies: median ${median(rtts).toFixed(3)} ms, p99 ${quantile(rtts, 0.99).toFixed(3)} ms, max ${Math.max(...rtts).toFixed(3)} ms |`,
    );
    out.push(
      f
        ? `| ping -f (2000)             | ${f[2]}/${f[1]} received in ${f[3]} ms: ${Math.round((Number(f[1]) / Number(f[3])) * 1000)} packets/s |`
        : `| ping -f                    | no summary: ${flood.stdout.slice(-200)} |`,
    );
  } finally {
    ip('netns', 'del', ns);
  }
  return out;
}

async function main(): Promise<number> {
  const kernelPath = guestKernel();
  process.stdout.write(
    `kvm-rx bench:microvm, ${new Date().toISOString()}, Node ${process.version}\n${await hostSummary()}\n`,
  );
  process.stdout.write(`guest kernel: ${kernelPath}\n`);
  const kernel = readFileSync(kernelPath);
  const initrd = loopInitramfs();
  const boots: Boot[] = [];
  for (let i = 0; i < runs; i++) boots.push(await bootToInit(kernel, initrd, 1, 300));
  const smp = await bootToInit(kernel, initrd, 2, 300);
  const rows = [
    '| what | figure |',
    '| ---- | ------ |',
    `| guest kernel to Run /init, 1 vCPU (${runs} boots) | guest ${boots.map((b) => b.guestS.toFixed(2)).join(', ')} s; wall ${boots.map((b) => b.wallS.toFixed(2)).join(', ')} s (median ${median(boots.map((b) => b.wallS)).toFixed(2)} s) |`,
    `| guest kernel to Run /init, 2 vCPUs | guest ${smp.guestS.toFixed(2)} s; wall ${smp.wallS.toFixed(2)} s |`,
  ];
  const cloud = join(root, '.guest', 'vmlinux');
  if (process.env.CLOUD !== '0' && existsSync(cloud) && existsSync(join(root, '.guest', 'initramfs.cpio'))) {
    const c = await bootToInit(readFileSync(cloud), readFileSync(join(root, '.guest', 'initramfs.cpio')), 1, timeoutS);
    rows.push(
      `| Debian cloud kernel to Run /init, 1 vCPU | guest ${c.guestS.toFixed(2)} s; wall ${c.wallS.toFixed(2)} s |`,
    );
    rows.push(`| guest kernel / cloud kernel (wall) | ${(median(boots.map((b) => b.wallS)) / c.wallS).toFixed(3)} |`);
  } else rows.push('| Debian cloud kernel | not run (CLOUD=0, or no .guest/: npm run guest:fetch) |');
  if (process.env.NET !== '0') {
    const canNet = process.getuid?.() === 0 && existsSync('/dev/net/tun') && spawnSync('ping', ['-V']).status === 0;
    if (canNet) rows.push(...(await network(kernelPath)));
    else rows.push('| network | not run: needs root, /dev/net/tun and ping |');
  }
  process.stdout.write(`\n${rows.join('\n')}\n`);
  return 0;
}

runMain(main);
