/**
 * Snapshots of the micro-VM end to end, on real KVM, each step in a process of its own inside a
 * network namespace this spec creates (its TAP and addresses live only there; deleted at the end):
 *
 * 1. `kvm-rx boot` boots the guest kernel with virtio-blk (an ext4 root made with `mke2fs -d`),
 *    virtio-net and virtio-rng, and writes a snapshot once the console says `IP-Config: Complete`
 *    (`--snapshot-on … --snapshot-exit`): the network is up, the root not yet mounted;
 * 2. a new process restores it (`restoreLinux`): the kernel goes on, mounts its root from the
 *    disk (virtio-blk reads after the restore), runs the init it finds there, answers ping
 *    through the reopened TAP; its printk clock goes on from where it was, with no soft-lockup
 *    or clocksource warning; then it writes a diff snapshot;
 * 3. a third process restores the diff (the chain: full + diff) and the guest answers ping again;
 * 4. `kvm-rx restore` of a damaged copy is refused with exit status 1, naming the file.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTapNamespace, describeNetGuestKernel, ip } from '../helpers/netns';
import { loopInitElf } from '../../src/testing/loop-init';

const NS = `kvmrx-snap-${process.pid}`;
const TAP = 'kvmrx0';
const HOST_IP = '10.98.0.1';
const GUEST_IP = '10.98.0.2';
const INIT = '/sbin/kvmrx-loop';
const ROOT = join(__dirname, '../..');

const inNs = (args: string[], timeout: number) =>
  spawnSync('ip', ['netns', 'exec', NS, process.execPath, '-r', 'ts-node/register/transpile-only', ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout,
    input: '',
  });

/** The printk timestamps of a console text, in seconds. */
const stamps = (text: string): number[] => [...text.matchAll(/^\[\s*(\d+\.\d+)\]/gm)].map((m) => Number(m[1]));

interface Restored {
  reason: string;
  error?: string;
  restoreMs: number;
  ready: boolean;
  ping?: { status: number | null; stdout: string };
  diff?: { kind: string; parent: { id: string; path: string }; pages: number };
  diffError?: string;
  errors: string[];
  devices: Array<[string, number, number]>;
  serial: string;
}

describeNetGuestKernel('snapshots of the micro-VM, restored in other processes', (kernelPath) => {
  jest.setTimeout(900_000); // a bound on boots that take seconds to minutes by host, not a speed claim
  let dir: string;
  let disk: string;
  let snap: string;
  let bootOut: string;
  let restored: Restored;

  beforeAll(() => {
    const missing = [
      process.getuid?.() === 0 ? '' : 'root (CAP_NET_ADMIN)',
      ip('-V').status === 0 ? '' : 'iproute2 (ip)',
      spawnSync('ping', ['-V']).status === 0 ? '' : 'ping (apt-get install iputils-ping)',
      spawnSync('mke2fs', ['-V']).status === 0 ? '' : 'mke2fs (e2fsprogs)',
    ].filter((m) => m !== '');
    if (missing.length > 0) throw new Error(`this end-to-end spec needs ${missing.join(', ')}`);
    dir = mkdtempSync(join(tmpdir(), 'kvmrx-snapshot-'));
    const root = join(dir, 'root');
    mkdirSync(join(root, 'sbin'), { recursive: true });
    mkdirSync(join(root, 'dev'));
    writeFileSync(join(root, INIT), loopInitElf());
    chmodSync(join(root, INIT), 0o755);
    disk = join(dir, 'root.ext4');
    snap = join(dir, 'booted.snap');
    const mk = spawnSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-O', '^has_journal', '-d', root, disk, '16M'], {
      encoding: 'utf8',
    });
    if (mk.status !== 0) throw new Error(`mke2fs: ${mk.stderr}`);
    createTapNamespace(NS, TAP, HOST_IP);
  });

  afterAll(() => {
    ip('netns', 'del', NS); // deletes the TAP and its address with it
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('kvm-rx boot --snapshot-on writes a snapshot once the guest has configured its network, and stops', () => {
    const r = inNs(
      [
        'src/cli/kvm-rx.ts',
        'boot',
        '--kernel',
        kernelPath,
        '--disk',
        disk,
        '--net',
        `tap=${TAP},mac=52:54:00:12:34:56`,
        '--rng',
        '--append',
        `root=/dev/vda rw init=${INIT} ip=${GUEST_IP}::${HOST_IP}:255.255.255.0::eth0:off`,
        '--snapshot',
        snap,
        '--snapshot-on',
        'IP-Config: Complete',
        '--snapshot-exit',
      ],
      400_000,
    );
    bootOut = r.stdout;
    expect({ status: r.status, signal: r.signal }).toEqual({ status: 0, signal: null });
    expect(r.stderr).toContain(`written (`);
    expect(r.stderr).toContain('VM stopped (after the snapshot)');
    expect(bootOut).toContain('IP-Config: Complete');
    expect(bootOut).not.toContain('VFS: Mounted root'); // the snapshot came first
  });

  it('restores in a new process: the kernel mounts its root from the disk, runs init, answers ping; its clock goes on', () => {
    const r = inNs(
      [
        'spec/fixtures/snapshot-guest.ts',
        snap,
        TAP,
        GUEST_IP,
        disk,
        `Run ${INIT} as init process`,
        join(dir, 'later.snap'),
      ],
      300_000,
    );
    expect({ status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({ status: 0, signal: null, stderr: '' });
    restored = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Restored;
    expect({
      ready: restored.ready,
      reason: restored.reason,
      errors: restored.errors,
      diffError: restored.diffError,
    }).toEqual({
      ready: true,
      reason: 'stopped',
      errors: [],
      diffError: undefined,
    });
    expect(restored.serial).toContain('VFS: Mounted root (ext4 filesystem)');
    expect(restored.serial).toContain(`Run ${INIT} as init process`);
    expect(restored.serial).not.toMatch(/Kernel panic|soft lockup|BUG:|clocksource.*unstable|hung_task/);
    expect({ status: restored.ping?.status, out: restored.ping?.stdout }).toEqual({
      status: 0,
      out: expect.stringMatching(/3 packets transmitted, [1-3] received/),
    });
    // The guest's clock: the restored kernel's first timestamps are not before the last ones the
    // booting kernel printed, and go on increasing.
    const before = stamps(bootOut);
    const after = stamps(restored.serial);
    expect(before.length).toBeGreaterThan(0);
    expect(after.length).toBeGreaterThan(0);
    expect(after[0]).toBeGreaterThanOrEqual(before[before.length - 1]);
    expect(after).toEqual([...after].sort((a, b) => a - b));
    expect(restored.devices.map(([name, , failures]) => [name, failures])).toEqual([
      ['virtio-blk', 0],
      ['virtio-net', 0],
      ['virtio-rng', 0],
    ]);
    expect(restored.diff).toEqual({
      kind: 'diff',
      parent: expect.objectContaining({ path: 'booted.snap' }),
      pages: expect.any(Number),
    });
    expect(restored.diff?.pages).toBeGreaterThan(0);
  });

  it('restores the diff (full + diff) in a third process, and the guest answers ping again', () => {
    const r = inNs(['spec/fixtures/snapshot-guest.ts', join(dir, 'later.snap'), TAP, GUEST_IP, disk, '', '-'], 300_000);
    expect({ status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({ status: 0, signal: null, stderr: '' });
    const again = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Restored;
    expect({ reason: again.reason, errors: again.errors }).toEqual({ reason: 'stopped', errors: [] });
    expect({ status: again.ping?.status, out: again.ping?.stdout }).toEqual({
      status: 0,
      out: expect.stringMatching(/3 packets transmitted, [1-3] received/),
    });
    expect(again.serial).not.toMatch(/Kernel panic|soft lockup|BUG:/);
  });

  it('kvm-rx restore resumes it in another process: the guest answers ping; SIGTERM stops it cleanly', async () => {
    const child = spawn(
      'ip',
      [
        'netns',
        'exec',
        NS,
        process.execPath,
        '-r',
        'ts-node/register/transpile-only',
        'src/cli/kvm-rx.ts',
        'restore',
        snap,
        '--timeout',
        '240',
      ],
      { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString('latin1')));
    child.stderr.on('data', (b: Buffer) => (err += b.toString('latin1')));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    // Bounded: the restored kernel runs its init within seconds to minutes by host.
    const started = await Promise.race([
      new Promise<boolean>((resolve) => {
        const check = () => (out.includes(`Run ${INIT} as init process`) ? resolve(true) : setTimeout(check, 100));
        check();
      }),
      exited.then(() => false),
    ]);
    expect({ started, err: started ? '' : err }).toEqual({ started: true, err: '' });
    const ping = spawnSync('ip', ['netns', 'exec', NS, 'ping', '-c', '3', '-i', '0.5', '-W', '5', GUEST_IP], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    child.kill('SIGTERM');
    const status = await exited;
    expect({ ping: ping.status, out: ping.stdout }).toEqual({
      ping: 0,
      out: expect.stringMatching(/3 packets transmitted, [1-3] received/),
    });
    expect(status).toBe(0);
    expect(err).toMatch(/restored .*booted\.snap \(256 MiB RAM, 1 vCPU, 3 virtio devices\)/);
    expect(err).toContain('VM stopped (signal)');
  });

  it('kvm-rx restore refuses a damaged snapshot with exit status 1 and says why', () => {
    const bad = join(dir, 'bad.snap');
    const bytes = readFileSync(snap);
    bytes[4096 + 10] ^= 0xff; // in the machine state: its checksum no longer matches
    writeFileSync(bad, bytes);
    const r = inNs(['src/cli/kvm-rx.ts', 'restore', bad], 60_000);
    expect({ status: r.status, stdout: r.stdout }).toEqual({ status: 1, stdout: '' });
    expect(r.stderr).toBe(
      `kvm-rx restore: cannot restore snapshot ${bad}: the state checksum does not match (ERR_KVM_SNAPSHOT_CORRUPT)\n`,
    );
  });
});
