/**
 * `--gdb` and `--gdb-wait` of `kvm-rx run` and `kvm-rx boot`, spawned as users run them: usage
 * errors (exit 2), and `kvm-rx run --gdb <socket> --gdb-wait` with Debian's gdb attaching, finding
 * the guest at its first instruction, detaching, and the guest then echoing what is typed.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeGdb, runGdb } from '../helpers/gdb';

const ROOT = join(__dirname, '..', '..');
const CLI = join(ROOT, 'src', 'cli', 'kvm-rx.ts');
const NODE_ARGS = ['-r', 'ts-node/register/transpile-only', CLI];

function cli(args: string[]) {
  return spawnSync(process.execPath, [...NODE_ARGS, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
}

async function waitFor(get: () => string, text: string, ms: number): Promise<void> {
  const t0 = Date.now();
  while (!get().includes(text)) {
    if (Date.now() - t0 > ms)
      throw new Error(`timed out waiting for ${JSON.stringify(text)} in ${JSON.stringify(get())}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('kvm-rx --gdb: usage', () => {
  it('--gdb-wait without --gdb, and a --gdb that is not loopback, are usage errors (exit 2)', () => {
    const a = cli(['run', '--gdb-wait']);
    expect({ status: a.status, stderr: a.stderr }).toEqual({
      status: 2,
      stderr: "kvm-rx run: --gdb-wait needs --gdb <port|path>\nTry 'kvm-rx run --help'.\n",
    });
    const b = cli(['boot', '--kernel', '/nonexistent', '--gdb', '10.1.2.3:1234']);
    expect(b.status).toBe(2);
    expect(b.stderr).toMatch(/^kvm-rx boot: --gdb: .*loopback/);
    const c = cli(['run', '--gdb', '99999']);
    expect(c.status).toBe(2);
    expect(c.stderr).toMatch(/--gdb: .*port from 0 to 65535/);
    expect(cli(['run', '--help']).stdout).toContain('--gdb-wait');
    expect(cli(['boot', '--help']).stdout).toContain('--gdb <port|path>');
  });
});

describeGdb('kvm-rx run --gdb', () => {
  jest.setTimeout(120_000); // a bound for ts-node, gdb and the guest: not a speed claim

  it('--gdb-wait: gdb finds the guest at its first instruction; after detach it echoes; exit 0', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kvmrx-gdb-cli-'));
    const sock = join(dir, 'demo.gdb');
    const child = spawn(process.execPath, [...NODE_ARGS, 'run', '--gdb', sock, '--gdb-wait', '--timeout', '90'], {
      cwd: ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString('latin1')));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString('latin1')));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      await waitFor(() => stderr, `gdb stub on ${sock}`, 60_000);
      expect(stdout).toBe(''); // waiting for gdb: not a byte of the banner yet
      const r = await runGdb([`target remote ${sock}`, 'info registers rip', 'detach'], { timeoutMs: 60_000 });
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(/^rip\s+0x1000\s/m);
      expect(r.stdout).toContain('[Inferior 1 (Remote target) detached]');
      await waitFor(() => stdout, 'Ctrl-A x quits.', 30_000);
      child.stdin.write('hi\r');
      await waitFor(() => stdout, 'hi\r\n', 30_000);
      child.stdin.end(); // the end of input stops the VM once the guest is quiet
      expect(await exited).toBe(0);
      expect(stderr).toContain('session ends: detach');
    } finally {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
