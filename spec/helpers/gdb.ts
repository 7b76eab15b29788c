/**
 * Debian's gdb for the GDB stub's end-to-end specs: `describeGdb` runs them where `gdb` is
 * installed (and /dev/kvm opens), and skips them with the reason elsewhere. `runGdb` runs gdb in
 * batch mode without blocking this process's event loop (the stub answers on it).
 */
import { execFile, spawnSync } from 'node:child_process';
import { describeKvm } from './kvm';

function probe(): { version: string } | { reason: string } {
  const r = spawnSync('gdb', ['--version'], { encoding: 'utf8' });
  if (r.error !== undefined || r.status !== 0) return { reason: 'gdb is not installed (apt-get install gdb)' };
  return { version: r.stdout.split('\n')[0] };
}

/** gdb's version line, or why there is no gdb. */
export const gdbAvailable = probe();

/** `describeKvm` that also needs gdb: skipped, with the reason in the title, where it is absent. */
export function describeGdb(name: string, fn: () => void): void {
  if ('reason' in gdbAvailable) describe.skip(`${name} [skipped: ${gdbAvailable.reason}]`, fn);
  else describeKvm(name, fn);
}

/** What a gdb run printed. */
export interface GdbRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** `gdb -batch -nx [file] -ex …` for each command, bounded by `timeoutMs` (killed after it). */
export function runGdb(commands: string[], options: { file?: string; timeoutMs: number }): Promise<GdbRun> {
  const args = ['-batch', '-nx', ...(options.file ? [options.file] : []), ...commands.flatMap((c) => ['-ex', c])];
  return new Promise((resolve) => {
    execFile(
      'gdb',
      args,
      { timeout: options.timeoutMs, maxBuffer: 16 << 20, encoding: 'utf8' },
      (error, stdout, stderr) => {
        const e = error as (Error & { code?: number | string; signal?: NodeJS.Signals }) | null;
        resolve({
          status: e === null ? 0 : typeof e.code === 'number' ? e.code : null,
          signal: e?.signal ?? null,
          stdout,
          stderr,
        });
      },
    );
  });
}
