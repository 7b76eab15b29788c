/**
 * virtio-net on a TAP interface, end to end, inside a network namespace this spec creates (its
 * TAP and addresses live only there; the namespace is deleted at the end): the guest kernel
 * configures eth0 by itself (`ip=`), and a process in the namespace opens TCP connections to it.
 * The guest kernel answers ARP and TCP (a RST for a closed port) with no user space, which guests
 * cannot have on PVM hosts.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describeGuestKernel } from '../helpers/guest-kernel';

const NS = `kvmrx-net-${process.pid}`;
const TAP = 'kvmrx0';
const HOST_IP = '10.99.0.1';
const GUEST_IP = '10.99.0.2';

const ip = (...args: string[]) => spawnSync('ip', args, { encoding: 'utf8' });
const canNetns = process.getuid?.() === 0 && existsSync('/dev/net/tun') && ip('-V').status === 0;

describeGuestKernel('virtio-net on a TAP in a private network namespace', (kernelPath) => {
  jest.setTimeout(600_000); // a bound on a boot that takes seconds to minutes by host, not a speed claim

  beforeAll(() => {
    if (!canNetns) throw new Error('needs root, /dev/net/tun and iproute2 (ip) to make a network namespace');
    for (const args of [
      ['netns', 'add', NS],
      ['-n', NS, 'link', 'set', 'lo', 'up'],
      ['-n', NS, 'tuntap', 'add', 'dev', TAP, 'mode', 'tap', 'vnet_hdr'],
      ['-n', NS, 'addr', 'add', `${HOST_IP}/24`, 'dev', TAP],
      ['-n', NS, 'link', 'set', TAP, 'up'],
    ]) {
      const r = ip(...args);
      if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
    }
  });

  afterAll(() => {
    ip('netns', 'del', NS); // deletes the TAP and its address with it
  });

  it('the guest configures eth0 and its kernel answers TCP from the namespace; frames cross both queues', () => {
    const fixture = join(__dirname, '../fixtures/net-guest.ts');
    const r = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        NS,
        process.execPath,
        '-r',
        'ts-node/register/transpile-only',
        fixture,
        kernelPath,
        TAP,
        GUEST_IP,
        HOST_IP,
      ],
      { cwd: join(__dirname, '../..'), encoding: 'utf8', timeout: 400_000 },
    );
    expect({ status: r.status, signal: r.signal }).toEqual({ status: 0, signal: null });
    const report = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as {
      reason: string;
      ready: boolean;
      probes: string[];
      stats: { txPackets: number; rxPackets: number; txDropped: number; rxDropped: number };
      errors: string[];
      eth0: string[];
    };
    expect({ ready: report.ready, reason: report.reason, errors: report.errors }).toEqual({
      ready: true,
      reason: 'stopped',
      errors: [],
    });
    expect(report.eth0.join('\n')).toContain(`ipaddr=${GUEST_IP}`);
    // Nothing listens on port 9 in the guest: its kernel answers every SYN with a RST.
    expect(report.probes).toEqual(['ECONNREFUSED', 'ECONNREFUSED', 'ECONNREFUSED']);
    // ARP request and three SYNs in; ARP reply and three RSTs out (at least).
    expect(report.stats.rxPackets).toBeGreaterThanOrEqual(4);
    expect(report.stats.txPackets).toBeGreaterThanOrEqual(4);
    expect(report.stats.txDropped).toBe(0);
  });
});
