/**
 * The `kvm-rx` command line, spawned as users run it (from the TypeScript sources through
 * ts-node): help, usage errors (exit 2), bad kernel files, the demo guest with piped input, and a real
 * `kvm-rx boot` of a tiny crafted 64-bit kernel.
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeKvm } from '../helpers/kvm';
import { buildElf } from '../vmm/images';
import { hostVirtualization, stockKernelCmdline } from '../../src/vmm/host';

const ROOT = join(__dirname, '..', '..');
const CLI = join(ROOT, 'src', 'cli', 'kvm-rx.ts');

function cli(args: string[], input?: string | Buffer, timeoutMs = 60_000): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', CLI, ...args], {
    cwd: ROOT,
    input: input ?? '',
    encoding: 'utf8',
    timeout: timeoutMs,
    env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' },
  });
}

/** A failure message is one line, with no stack trace. */
function expectOneLine(stderr: string): void {
  const lines = stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  expect(stderr).not.toMatch(/^\s+at /m);
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kvm-rx-cli-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('kvm-rx: help and usage', () => {
  jest.setTimeout(120_000);

  it.each([
    [['--help'], 0, /^Usage: kvm-rx <command>[\s\S]*boot [\s\S]*doctor /],
    [['run', '--help'], 0, /^Usage: kvm-rx run[\s\S]*Ctrl-A x quits/],
    [['boot', '--help'], 0, /^Usage: kvm-rx boot --kernel <file>[\s\S]*Exit status:[\s\S]*124 {2}--timeout expired/],
  ])('kvm-rx %j prints its usage (exit %i)', (args, status, usage) => {
    const r = cli(args);
    expect(r.status).toBe(status);
    expect(r.stdout).toMatch(usage);
  });

  it.each([
    [[] as string[], /^kvm-rx: no command given \(run, boot, restore or doctor\)\nTry 'kvm-rx --help'\.\n$/],
    [['frobnicate'], /^kvm-rx: unknown command 'frobnicate'\nTry 'kvm-rx --help'\.\n$/],
    [['--frob'], /^kvm-rx: unknown option '--frob'\nTry 'kvm-rx --help'\.\n$/],
    [['run', '--bogus'], /^kvm-rx run: Unknown option '--bogus'.*\nTry 'kvm-rx run --help'\.\n$/],
    [['run', 'extra'], /^kvm-rx run: .*'extra'.*\nTry 'kvm-rx run --help'\.\n$/],
    [
      ['run', '--timeout', '0'],
      /^kvm-rx run: --timeout must be a positive number of seconds, not 0\nTry 'kvm-rx run --help'\.\n$/,
    ],
    [['doctor', '--bogus'], /^kvm-rx doctor: Unknown option '--bogus'.*\nTry 'kvm-rx doctor --help'\.\n$/],
  ])('bad usage kvm-rx %j: exit 2, a message and where to look, nothing on stdout', (args, message) => {
    const r = cli(args);
    expect({ status: r.status, stdout: r.stdout }).toEqual({ status: 2, stdout: '' });
    expect(r.stderr).toMatch(message);
  });

  it('boot without --kernel, or with an unknown option, is a usage error (exit 2)', () => {
    const a = cli(['boot']);
    expect(a.status).toBe(2);
    expect(a.stderr).toMatch(/^kvm-rx boot: --kernel <file> is required/);
    const b = cli(['boot', '--kernel', 'x', '--frob']);
    expect(b.status).toBe(2);
    expect(b.stderr).toMatch(/Unknown option '--frob'/);
    const c = cli(['boot', '--kernel', 'x', '--mem', '100.5']);
    expect(c.status).toBe(2);
    expect(c.stderr).toMatch(/--mem must be an even number of MiB/);
  });
});

describe('kvm-rx boot: bad kernel and initrd files', () => {
  jest.setTimeout(120_000);

  it('a missing kernel file: exit 1, one clear line', () => {
    const missing = join(dir, 'no-such-vmlinux');
    const r = cli(['boot', '--kernel', missing]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`kvm-rx boot: bad kernel image: cannot read ${missing}: no such file\n`);
  });

  it('a corrupt kernel file: exit 1, one line saying what it is not', () => {
    const corrupt = join(dir, 'corrupt');
    writeFileSync(corrupt, Buffer.from('this is not a kernel, just text'));
    const r = cli(['boot', '--kernel', corrupt]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(
      /^kvm-rx boot: bad kernel image: neither an ELF vmlinux .* nor a bzImage .*; starts with 74 68 69 73\n$/,
    );
    expectOneLine(r.stderr);
  });

  it('a truncated ELF kernel and an empty initrd: exit 1, one line each', () => {
    const elf = buildElf({
      entry: 0x200000n,
      segments: [{ paddr: 0x200000, data: new Uint8Array(64), memsz: 0x1000 }],
    });
    const truncated = join(dir, 'truncated');
    writeFileSync(truncated, elf.subarray(0, 100));
    const a = cli(['boot', '--kernel', truncated]);
    expect(a.status).toBe(1);
    expect(a.stderr).toMatch(/^kvm-rx boot: bad kernel image: /);
    expectOneLine(a.stderr);
    const good = join(dir, 'good');
    writeFileSync(good, elf);
    const empty = join(dir, 'empty');
    writeFileSync(empty, '');
    const b = cli(['boot', '--kernel', good, '--initrd', empty]);
    expect(b.status).toBe(1);
    expect(b.stderr).toMatch(/^kvm-rx boot: bad initrd image: the initrd is empty\n$/m);
  });

  it.each([
    [['--console', 'com2'], /^kvm-rx boot: --console must be ttyS0 or hvc0, not com2\n/],
    [['--net', 'tap='], /^kvm-rx boot: --net must be tap=<name>\[,mac=<mac>\], not tap=\n/],
    [['--net', 'tap=t0,speed=10'], /^kvm-rx boot: --net must be tap=<name>\[,mac=<mac>\], not tap=t0,speed=10\n/],
    [['--cpus', '0'], /^kvm-rx boot: --cpus must be a whole number from 1 to 64, not 0\n/],
  ])('boot %j is a usage error (exit 2), before anything is opened', (args, message) => {
    const r = cli(['boot', '--kernel', 'x', ...args]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toContain("Try 'kvm-rx boot --help'.");
  });

  it('--disk: a missing image is a usage error (exit 2); one that is not whole sectors fails (exit 1), one line each', () => {
    const elf = buildElf({
      entry: 0x200000n,
      segments: [{ paddr: 0x200000, data: new Uint8Array(64), memsz: 0x1000 }],
    });
    const good = join(dir, 'good-for-disk');
    writeFileSync(good, elf);
    const missing = join(dir, 'no-such.img');
    const a = cli(['boot', '--kernel', good, '--disk', `${missing},ro`]);
    expect(a.status).toBe(2);
    expect(a.stderr).toBe(`kvm-rx boot: --disk: ${missing} does not exist\nTry 'kvm-rx boot --help'.\n`);
    const odd = join(dir, 'odd.img');
    writeFileSync(odd, new Uint8Array(1000));
    const b = cli(['boot', '--kernel', good, '--disk', odd]);
    expect(b.status).toBe(1);
    expect(b.stderr).toMatch(
      /^kvm-rx boot: options\.path: the image's size \(1000 bytes\) must be a multiple of 512\n$/,
    );
    expectOneLine(b.stderr);
  });
});

describeKvm('kvm-rx on the real kernel', () => {
  jest.setTimeout(120_000);

  it('run: piped "hello\\r" is echoed by the demo guest; Ctrl-D (0x04) resets it: exit 0', () => {
    const r = cli(['run'], Buffer.from('hello\r\x04', 'latin1'));
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('hello');
    expect(r.stderr).toMatch(/guest reset the machine/);
  });

  it('run: piped "abc" is echoed; the end of input stops the VM once the guest is quiet (exit 0, before --timeout)', () => {
    // No Ctrl-D: only the end of stdin can stop this VM before the 120 s --timeout. The reason in
    // the last line tells which of the two did; the old fixed 5 s wait is covered by console.spec.ts.
    const r = cli(['run', '--timeout', '120'], 'abc', 150_000);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/Ctrl-A x quits\.\r\n[\s\S]*abc/);
    expect(r.stderr).toMatch(/\[kvm-rx\] VM stopped \(input ended\) after \d+ exits/);
    expect(r.stderr).not.toMatch(/timeout/);
  });

  it('boot: a tiny crafted ELF kernel prints through the UART and resets through the i8042: exit 0, text on stdout', () => {
    // 0x200000: lea msg(%rip),%rsi; mov $0x3f8,%dx; mov $28,%ecx; rep outsb; mov $0xfe,%al;
    //           out %al,$0x64; 1: hlt; jmp 1b; msg: "hello from the tiny kernel\r\n"
    const code = [
      0x48,
      0x8d,
      0x35,
      0x12,
      0x00,
      0x00,
      0x00,
      0x66,
      0xba,
      0xf8,
      0x03,
      0xb9,
      0x1c,
      0x00,
      0x00,
      0x00,
      0xf3,
      0x6e,
      0xb0,
      0xfe,
      0xe6,
      0x64,
      0xf4,
      0xeb,
      0xfd,
      ...Buffer.from('hello from the tiny kernel\r\n', 'latin1'),
    ];
    const kernel = join(dir, 'tiny.elf');
    writeFileSync(
      kernel,
      buildElf({ entry: 0x200000n, segments: [{ paddr: 0x200000, data: Uint8Array.from(code), memsz: 0x1000 }] }),
    );
    const r = cli(['boot', '--kernel', kernel, '--mem', '32', '--trace', '--timeout', '60']);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('hello from the tiny kernel\r\n');
    // rep outsb takes one exit per byte on an emulating host, fewer with VMX/SVM: count, don't assume.
    const exits = Number(/guest reset the machine \(i8042 reset line\) after (\d+) exits/.exec(r.stderr)?.[1]);
    const com1 = Number(/by port: 0x3f8 (\d+), 0x64 1\n/.exec(r.stderr)?.[1]);
    expect(com1).toBeGreaterThanOrEqual(1);
    expect(exits).toBe(com1 + 1);
  });

  it('boot --devices: your device stage answers the guest, its events go to stderr', () => {
    // 0x200000: mov $0x510,%dx; mov $7,%al; out %al,(%dx); in (%dx),%al; mov $0x3f8,%dx;
    //           out %al,(%dx); mov $0xfe,%al; out %al,$0x64; hlt
    const code = Uint8Array.of(
      0x66, 0xba, 0x10, 0x05, 0xb0, 0x07, 0xee, 0xec, 0x66, 0xba, 0xf8, 0x03, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
    ); // prettier-ignore
    const kernel = join(dir, 'dev.elf');
    writeFileSync(kernel, buildElf({ entry: 0x200000n, segments: [{ paddr: 0x200000, data: code, memsz: 0x1000 }] }));
    const fixture = join(__dirname, '../fixtures/linux-extra-device.ts');
    const r = cli(['boot', '--kernel', kernel, '--mem', '32', '--timeout', '60', '--devices', fixture]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('B'); // 0x42 from the stage's register
    expect(r.stderr).toMatch(/\[kvm-rx\] mydev: 7\n/);
    const missing = cli(['boot', '--kernel', kernel, '--devices', join(dir, 'nope.js')]);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/--devices: .*nope\.js does not exist/);
  });

  it('boot: the kernel gets the default cmdline for this host, or --cmdline, with --append at the end', () => {
    // 0x200000: mov 0x228(%rsi),%esi (cmd_line_ptr); mov $0x3f8,%dx; 1: lodsb; test %al,%al; jz 2f;
    //           out %al,(%dx); jmp 1b; 2: mov $0xfe,%al; out %al,$0x64; hlt
    const code = Uint8Array.of(
      0x8b, 0xb6, 0x28, 0x02, 0x00, 0x00, 0x66, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8,
      0xb0, 0xfe, 0xe6, 0x64, 0xf4,
    ); // prettier-ignore
    const kernel = join(dir, 'cmdline.elf');
    writeFileSync(kernel, buildElf({ entry: 0x200000n, segments: [{ paddr: 0x200000, data: code, memsz: 0x1000 }] }));
    const byDefault = cli(['boot', '--kernel', kernel, '--mem', '32', '--timeout', '120']);
    expect(byDefault.status).toBe(0);
    expect(byDefault.stdout).toBe(stockKernelCmdline(hostVirtualization()));
    const mine = cli([
      'boot',
      '--kernel',
      kernel,
      '--mem',
      '32',
      '--cmdline',
      'console=ttyS0 reboot=k',
      '--append',
      ' x=1 ',
    ]);
    expect(mine.status).toBe(0);
    expect(mine.stdout).toBe('console=ttyS0 reboot=k x=1');
    expect(mine.stderr).toContain('[kvm-rx] cmdline: console=ttyS0 reboot=k x=1\n');
  });

  it('boot --timeout: a kernel that spins is stopped, exit 124', () => {
    const kernel = join(dir, 'spin.elf');
    writeFileSync(
      kernel,
      buildElf({ entry: 0x200000n, segments: [{ paddr: 0x200000, data: Uint8Array.of(0xeb, 0xfe), memsz: 0x1000 }] }),
    ); // jmp .
    const r = cli(['boot', '--kernel', kernel, '--mem', '32', '--timeout', '1']);
    expect(r.status).toBe(124);
    expect(r.stderr).toMatch(/VM stopped \(timeout\) after \d+ exits, [\d.]+ s, at rip 0x200000\n/); // where it spun
  });
});
