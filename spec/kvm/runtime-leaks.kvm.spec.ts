/**
 * Leaks of the worker runtime, measured in a child process with `--expose-gc` (jest's own heap
 * would blur the figures): cycles of Kvm + VM + memory slot + 2 vCPUs run through the runtime
 * (to Hlt through a worker pipeline, or kicked out of `jmp $` by stop() and by an AbortSignal),
 * then everything closed. `npm test`: 150 cycles per mode; `npm run stress`: 1,000.
 *
 * What is checked (no tolerance measured on one machine; docs/testing.md, "Host-defined behaviours"):
 * - kvm-rx's own resources, exactly: fds by target (`/dev/kvm`, `anon_inode:kvm-vm`,
 *   `anon_inode:kvm-vcpu:N`, eventfds) at every point as after the warm-up, and as before the
 *   runtime existed once it is closed; kvm_run mappings (`anon_inode:kvm-vcpu`) and guest memory
 *   (shared mappings at the GuestMemory addresses): none left at any point;
 * - everything else (all fds, all map lines, RSS, `arrayBuffers`) per batch of cycles against the
 *   first batch of the same loop in the same process (`linearGrowth`, spec/helpers/resources.ts): a
 *   per-cycle leak grows every batch, the heaps of V8 and of the vCPU threads grow in bursts. The
 *   SharedArrayBuffer leak this spec found (+147 MiB per 1,000 cycles) grows every batch by far
 *   more than half the warm-up.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describeKvm } from '../helpers/kvm';
import { linearGrowth, type OwnFds } from '../helpers/resources';
import { count, timeout } from '../helpers/stress';

interface Sample {
  fds: number;
  ownFds: OwnFds;
  maps: number;
  kvmRun: number;
  guest: number;
  rss: number;
  ab: number;
}
interface LeakResult {
  mode: string;
  cycles: number;
  ms: number;
  before: Sample;
  base: Sample;
  points: Array<Sample & { cycle: number }>;
  after: Sample;
}

const MiB = 1 << 20;

function leakLoop(mode: 'hlt' | 'kick', cycles: number): LeakResult {
  const r = spawnSync(
    process.execPath,
    [
      '--expose-gc',
      '-r',
      'ts-node/register/transpile-only',
      join(__dirname, '../fixtures/runtime-leak.ts'),
      '--cycles',
      String(cycles),
      '--mode',
      mode,
    ],
    { cwd: join(__dirname, '../..'), encoding: 'utf8', timeout: timeout(90_000, 600_000) },
  );
  if (r.signal !== null || r.status !== 0)
    throw new Error(`the leak loop ended with ${r.signal ?? `status ${r.status}`}\nstderr: ${r.stderr.slice(-2000)}`);
  const line = r.stdout.split('\n').find((l) => l.startsWith('LEAK_RESULT '));
  if (line === undefined)
    throw new Error(
      `the leak loop printed no LEAK_RESULT line\nstdout: ${r.stdout.slice(-1000)}\nstderr: ${r.stderr.slice(-2000)}`,
    );
  return JSON.parse(line.slice('LEAK_RESULT '.length)) as LeakResult;
}

describeKvm('worker runtime leaks (child process)', () => {
  const cycles = count(150, 1000);
  for (const mode of ['hlt', 'kick'] as const) {
    it(
      `${cycles} cycles of VM + memory + 2 vCPUs ${mode === 'hlt' ? 'run to Hlt' : 'kicked out of jmp $ by stop() and abort'} through the runtime: fds, mappings and RSS stay flat`,
      () => {
        const res = leakLoop(mode, cycles);
        const last = res.points[res.points.length - 1];
        const perBatch = res.points[1].cycle - res.points[0].cycle;
        // the first batch after the warm-up is the baseline (the warm-up itself starts the threads)
        const series = (f: (s: Sample) => number) => [res.base, ...res.points].map(f);
        const growth = {
          fds: linearGrowth(
            series((s) => s.fds),
            perBatch,
            1,
          ),
          maps: linearGrowth(
            series((s) => s.maps),
            perBatch,
            1,
          ),
          rss: linearGrowth(
            series((s) => s.rss),
            perBatch,
            4096,
          ),
          ab: linearGrowth(
            series((s) => s.ab),
            perBatch,
            4096,
          ),
        };
        console.log(
          `${mode}: ${cycles} cycles in ${res.ms} ms; RSS ${(res.base.rss / MiB).toFixed(1)}→${(last.rss / MiB).toFixed(1)} MiB\n` +
            Object.entries(growth)
              .map(([k, g]) => `  ${k}: ${g.detail}`)
              .join('\n'),
        );
        for (const p of res.points) {
          expect({ cycle: p.cycle, ownFds: p.ownFds, kvmRun: p.kvmRun, guest: p.guest }).toEqual({
            cycle: p.cycle,
            ownFds: res.base.ownFds,
            kvmRun: 0,
            guest: 0,
          });
        }
        // once the runtime is closed, not even its own fds are left
        expect({ ownFds: res.after.ownFds, kvmRun: res.after.kvmRun, guest: res.after.guest }).toEqual({
          ownFds: res.before.ownFds,
          kvmRun: 0,
          guest: 0,
        });
        expect({
          fds: growth.fds.linear,
          maps: growth.maps.linear,
          rss: growth.rss.linear,
          ab: growth.ab.linear,
        }).toEqual({ fds: false, maps: false, rss: false, ab: false });
      },
      timeout(120_000, 700_000),
    );
  }
});
