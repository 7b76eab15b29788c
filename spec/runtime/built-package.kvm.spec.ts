/**
 * The runtime as the installed package runs it (the compiled dist/, not these TypeScript
 * sources, which give their workers ts-node themselves): a TypeScript pipeline gets a loader in
 * the worker on demand, one without any loader installed is refused by start(), and the worker
 * threads inherit the process's own Node options (a --require preload, as `node --import tsx`).
 * `npm install` and `.ci/run` build dist/ before the specs run.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeKvm } from '../helpers/kvm';

const ROOT = join(__dirname, '../..');
const RUNNER = join(ROOT, 'spec/fixtures/run-built-pipeline.js');
const MODULES = join(ROOT, 'spec/fixtures/modules');

function runBuilt(pipeline: string, nodeArgs: string[] = [], cwd = ROOT): Array<Record<string, unknown>> {
  const r = spawnSync(process.execPath, [...nodeArgs, RUNNER, pipeline], { cwd, encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`runner exited ${r.status}: ${r.stderr}`);
  return r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describeKvm('the built package (dist/)', () => {
  beforeAll(() => {
    const built = statSync(join(ROOT, 'dist/src/runtime/pipeline.js'), { throwIfNoEntry: false });
    const source = statSync(join(ROOT, 'src/runtime/pipeline.ts'));
    if (built === undefined || built.mtimeMs < source.mtimeMs)
      throw new Error('dist/ is missing or older than src/: run `npm run build` first');
  });

  it('runs a TypeScript pipeline: the worker registers a loader (ts-node here) on demand', () => {
    expect(runBuilt(join(MODULES, 'ts-default.ts'))).toEqual([
      { outcome: { reason: 'completed', exits: 3, lastExit: 'Hlt' } },
    ]);
  });

  it('refuses, in start(), a TypeScript pipeline that no installed loader can run', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kvm-rx-noloader-'));
    try {
      const file = join(dir, 'pipeline.ts');
      writeFileSync(file, 'export default (exits$: unknown) => exits$;\n');
      // cwd outside the repository: neither the module's folder nor the cwd resolves tsx/ts-node.
      expect(runBuilt(file, [], dir)).toEqual([
        {
          error: {
            name: 'TypeError',
            code: 'ERR_INVALID_ARG_VALUE',
            message: expect.stringContaining(`pipeline module ${file} is TypeScript, and the worker has no loader`),
          },
        },
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("gives the worker threads the process's own Node options (a --require preload)", () => {
    const pipeline = join(MODULES, 'reports-preload.js');
    expect(runBuilt(pipeline, ['--require', join(MODULES, 'preload.js')])).toEqual([
      { event: { channel: 'preloaded', data: true } },
      { outcome: { reason: 'completed', exits: 3, lastExit: 'Hlt' } },
    ]);
    expect(runBuilt(pipeline)).toEqual([
      { event: { channel: 'preloaded', data: false } },
      { outcome: { reason: 'completed', exits: 3, lastExit: 'Hlt' } },
    ]);
  });
});
