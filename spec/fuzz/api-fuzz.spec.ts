/**
 * The public API under random and hostile arguments, in a child process (`api-fuzz.ts`), so a
 * crash shows as a signal or a non-zero exit instead of killing jest. `npm test` makes a few
 * thousand calls per backend; `npm run stress` makes 100,000 on the real kernel (and 20,000 on the
 * mock). Every call must return or throw a classified error (TypeError/RangeError with an `ERR_`
 * code, KvmError, `ERR_KVM_*`), and the native run must give back every fd it took.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describeKvm } from '../helpers/kvm';
import { count, timeout } from '../helpers/stress';

const SCRIPT = join(__dirname, 'api-fuzz.ts');
const ROOT = join(__dirname, '../..');

interface Summary {
  seed: number;
  calls: number;
  returned: number;
  expected: Record<string, number>;
  unexpected: number;
  unexpectedSamples: Record<string, string>;
  kicks: number;
  pending: number;
  fds: { before: number; after: number; added?: string[] };
  ms: number;
  members: number;
}

function fuzz(backend: 'native' | 'mock', calls: number, seed: number, limitMs: number): Summary {
  const r = spawnSync(
    process.execPath,
    [
      '-r',
      'ts-node/register/transpile-only',
      SCRIPT,
      '--calls',
      String(calls),
      '--seed',
      String(seed),
      '--backend',
      backend,
    ],
    {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: limitMs,
      maxBuffer: 64 << 20,
    },
  );
  const where = `(reproduce: node -r ts-node/register/transpile-only spec/fuzz/api-fuzz.ts --calls ${calls} --seed ${seed} --backend ${backend} --trace /tmp/trace.txt)`;
  // A crash (SIGSEGV, SIGABRT, …) or a hang (killed by the timeout) is a signal; an uncaught error is a non-zero status.
  expect({ signal: r.signal, status: r.status, stderr: r.stderr.slice(-2000), where }).toEqual({
    signal: null,
    status: 0,
    stderr: expect.any(String),
    where,
  });
  const line = r.stdout.split('\n').find((l) => l.startsWith('FUZZ_RESULT '));
  expect(line).toBeDefined();
  return JSON.parse(line!.slice('FUZZ_RESULT '.length)) as Summary;
}

const seed = Number(process.env.KVMRX_FUZZ_SEED ?? Date.now() % 1_000_000);

describeKvm('fuzzed public API, native backend, in a child process', () => {
  const calls = count(5_000, 100_000);
  it(
    `${calls} calls with hostile arguments: no crash, every error classified, no fd leaked (seed ${seed})`,
    () => {
      const s = fuzz('native', calls, seed, timeout(60_000, 900_000));
      expect(s.calls).toBe(calls);
      expect({ unexpected: s.unexpected, samples: s.unexpectedSamples, seed }).toEqual({
        unexpected: 0,
        samples: {},
        seed,
      });
      // every member of every class was in the table (the classes' prototypes, not a hand-written list)
      expect(s.members).toBeGreaterThan(500);
      // most calls are refused, but a fair share must get through the checks to the kernel
      expect(s.returned).toBeGreaterThan(calls * 0.15);
      expect(Object.keys(s.expected).some((k) => k.startsWith('KvmError '))).toBe(true);
      expect({ fds: s.fds.after - s.fds.before <= 0, added: s.fds.added }).toEqual({ fds: true, added: undefined });
    },
    timeout(60_000, 900_000),
  );
});

describe('fuzzed public API, mock backend, in a child process', () => {
  const calls = count(3_000, 20_000);
  it(
    `${calls} calls: no crash, every error classified (seed ${seed})`,
    () => {
      const s = fuzz('mock', calls, seed, timeout(60_000, 600_000));
      expect(s.calls).toBe(calls);
      expect({ unexpected: s.unexpected, samples: s.unexpectedSamples, seed }).toEqual({
        unexpected: 0,
        samples: {},
        seed,
      });
    },
    timeout(60_000, 600_000),
  );
});
