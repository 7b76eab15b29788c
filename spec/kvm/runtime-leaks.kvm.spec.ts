/**
 * Leaks of the worker runtime, measured in a child process with `--expose-gc` (jest's own heap
 * would blur the figures): cycles of Kvm + VM + memory slot + 2 vCPUs run through the runtime
 * (to Hlt through a worker pipeline, or kicked out of `jmp $` by stop() and by an AbortSignal),
 * then everything closed. `npm test`: 150 cycles per mode; `npm run stress`: 1,000.
 *
 * Tolerances (measured on this host, Linux 6.18 PVM, Node 20; see docs/reliability.md):
 * - fds: exact, no growth;
 * - our mappings (kvm_run `anon_inode:kvm-vcpu`, guest memory `/dev/zero (deleted)`): exact, 0 left;
 * - /proc/self/maps lines: +64 over the loop (V8 heap pages of the vCPU threads, whose garbage
 *   is collected only now and then: measured +16 to +46 over 1,000 cycles; a leaked run would add
 *   3 lines per cycle);
 * - RSS: +32 MiB (bounded) / +48 MiB (full) from the first sample to the last (measured +9 to
 *   +18 MiB over 1,000 cycles, again worker-heap garbage: flat when the workers are made to GC;
 *   the SharedArrayBuffer leak this spec found was +147 MiB per 1,000 cycles);
 * - `arrayBuffers`: +8 MiB (measured within ±0.1 MiB).
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describeKvm } from '../helpers/kvm';
import { STRESS, count, timeout } from '../helpers/stress';

interface Sample {
  fds: number;
  maps: number;
  ours: number;
  rss: number;
  ab: number;
}
interface LeakResult {
  mode: string;
  cycles: number;
  ms: number;
  base: Sample;
  points: Array<Sample & { cycle: number }>;
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
        const first = res.points[0];
        const last = res.points[res.points.length - 1];

        console.log(
          `${mode}: ${cycles} cycles in ${res.ms} ms; fds ${res.base.fds}→${last.fds}; maps ${res.base.maps}→${first.maps}→${last.maps}; ` +
            `RSS ${(first.rss / MiB).toFixed(1)}→${(last.rss / MiB).toFixed(1)} MiB; arrayBuffers ${(first.ab / MiB).toFixed(2)}→${(last.ab / MiB).toFixed(2)} MiB`,
        );
        for (const p of res.points) {
          expect({ cycle: p.cycle, fds: p.fds, ours: p.ours }).toEqual({ cycle: p.cycle, fds: res.base.fds, ours: 0 });
          expect(p.maps - res.base.maps).toBeLessThanOrEqual(64);
          expect(p.ab - first.ab).toBeLessThanOrEqual(8 * MiB);
        }
        expect(last.rss - first.rss).toBeLessThanOrEqual((STRESS ? 48 : 32) * MiB);
      },
      timeout(120_000, 700_000),
    );
  }
});
