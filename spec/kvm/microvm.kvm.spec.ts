/**
 * The micro-VM end to end, on real KVM, in one boot: the guest kernel on 2 vCPUs, its console on
 * hvc0, its root on virtio-blk from an ext4 image this spec makes with `mke2fs -d` (no loop
 * mount), `init=` naming a program that exists only in that image (a loop without system calls:
 * the kernel runs it and stays up), virtio-rng seeding its RNG, and virtio-net on a TAP inside a
 * network namespace this spec creates (the TAP and both addresses live only there; the namespace
 * is deleted at the end). From inside the namespace the host pings the guest and opens TCP
 * connections to a closed port, and a host program asks for a guest vsock port nobody listens on:
 * the guest kernel answers all of these by itself, as it must on PVM hosts,
 * where guest user space cannot make system calls.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTapNamespace, describeNetGuestKernel, ip } from '../helpers/netns';
import { loopInitElf } from '../../src/testing/loop-init';

const NS = `kvmrx-net-${process.pid}`;
const TAP = 'kvmrx0';
const HOST_IP = '10.99.0.1';
const GUEST_IP = '10.99.0.2';
const INIT = '/sbin/kvmrx-loop';

describeNetGuestKernel(
  'the micro-VM: 2 vCPUs, hvc0, root on virtio-blk, virtio-rng, virtio-vsock, virtio-net in a private netns',
  (kernelPath) => {
    jest.setTimeout(600_000); // a bound on a boot that takes seconds to minutes by host, not a speed claim
    let dir: string;

    beforeAll(() => {
      const missing = [
        process.getuid?.() === 0 ? '' : 'root (CAP_NET_ADMIN)',
        ip('-V').status === 0 ? '' : 'iproute2 (ip)',
        spawnSync('ping', ['-V']).status === 0 ? '' : 'ping (apt-get install iputils-ping)',
        spawnSync('mke2fs', ['-V']).status === 0 ? '' : 'mke2fs (e2fsprogs)',
      ].filter((m) => m !== '');
      if (missing.length > 0) throw new Error(`this end-to-end spec needs ${missing.join(', ')}`);
      dir = mkdtempSync(join(tmpdir(), 'kvmrx-microvm-'));
      const root = join(dir, 'root');
      mkdirSync(join(root, 'sbin'), { recursive: true });
      mkdirSync(join(root, 'dev'));
      writeFileSync(join(root, INIT), loopInitElf());
      chmodSync(join(root, INIT), 0o755);
      const mk = spawnSync(
        'mke2fs',
        ['-q', '-F', '-t', 'ext4', '-O', '^has_journal', '-d', root, join(dir, 'root.ext4'), '16M'],
        {
          encoding: 'utf8',
        },
      );
      if (mk.status !== 0) throw new Error(`mke2fs: ${mk.stderr}`);
      createTapNamespace(NS, TAP, HOST_IP);
    });

    afterAll(() => {
      ip('netns', 'del', NS); // deletes the TAP and its address with it
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it('boots, mounts its root and runs the init from it, answers ping and TCP through virtio-net, and refuses a vsock connection', () => {
      const fixture = join(__dirname, '../fixtures/microvm-guest.ts');
      const args = [fixture, kernelPath, TAP, GUEST_IP, HOST_IP, join(dir, 'root.ext4'), INIT, join(dir, 'vsock.sock')];
      const r = spawnSync(
        'ip',
        ['netns', 'exec', NS, process.execPath, '-r', 'ts-node/register/transpile-only', ...args],
        {
          cwd: join(__dirname, '../..'),
          encoding: 'utf8',
          timeout: 400_000,
        },
      );
      expect({ status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({ status: 0, signal: null, stderr: '' });
      const report = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as {
        reason: string;
        ready: boolean;
        probes: string[];
        ping: { status: number; stdout: string };
        vsock: { reply: string; closed: boolean; stats: { refusedByGuest: number; badPackets: number } };
        rngRequests: number;
        net: { txPackets: number; rxPackets: number; txDropped: number };
        errors: string[];
        devices: Array<[string, number, number]>;
        hvc: string[];
        serial: string[];
      };
      expect({ ready: report.ready, reason: report.reason, errors: report.errors }).toEqual({
        ready: true,
        reason: 'stopped',
        errors: [],
      });
      const hvc = report.hvc.join('\n');
      // Before hvc0 is registered the kernel prints on ttyS0 only; from then on, on hvc0.
      const serial = report.serial.join('\n');
      expect(serial).toContain('smp: Brought up 1 node, 2 CPUs');
      expect(serial).toContain('printk: console [hvc0] enabled');
      expect(hvc).toContain('VFS: Mounted root (ext4 filesystem) on device 254:0.');
      expect(hvc).toContain(`Run ${INIT} as init process`);
      expect(hvc).not.toContain('Kernel panic'); // the init from the disk runs: the kernel stays up
      expect(hvc).toContain(`IP-Config: Complete`);
      expect(report.rngRequests).toBeGreaterThan(0);
      expect({ status: report.ping.status, out: report.ping.stdout }).toEqual({
        status: 0,
        out: expect.stringMatching(/3 packets transmitted, [1-3] received/),
      });
      // Nothing listens on port 9 in the guest: its kernel answers every SYN with a RST.
      expect(report.probes).toEqual(['ECONNREFUSED', 'ECONNREFUSED', 'ECONNREFUSED']);
      expect(report.net.txDropped).toBe(0);
      // vsock: the guest kernel refuses a connection to a port nobody listens on (a RST), so the host
      // program's Unix socket is closed without OK.
      expect(report.vsock).toEqual({
        reply: '',
        closed: true,
        stats: expect.objectContaining({ refusedByGuest: 1, badPackets: 0 }),
      });
      expect(report.devices).toEqual([
        ['virtio-blk', 15, 0],
        ['virtio-net', 15, 0],
        ['virtio-rng', 15, 0],
        ['virtio-vsock', 15, 0],
        ['virtio-console', 15, 0],
      ]);
    });
  },
);
