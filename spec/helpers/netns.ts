/**
 * The private network namespace of the end-to-end specs: a TAP with the host's address inside it,
 * nothing on any other interface. `describeNetGuestKernel` skips (with the reason) only where
 * /dev/net/tun cannot be opened.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { describeGuestKernel } from './guest-kernel';

/** `ip …`, its output as text. */
export const ip = (...args: string[]) => spawnSync('ip', args, { encoding: 'utf8' });

/** Why /dev/net/tun cannot be opened here, if it cannot (the one reason these specs are skipped). */
function tunUnavailable(): string | undefined {
  try {
    closeSync(openSync('/dev/net/tun', 'r+'));
    return undefined;
  } catch (e) {
    return `/dev/net/tun cannot be opened: ${(e as Error).message}`;
  }
}
const noTun = tunUnavailable();

/** `describeGuestKernel`, skipped with the reason where /dev/net/tun cannot be opened. */
export const describeNetGuestKernel: typeof describeGuestKernel = noTun
  ? (name, fn) => describe.skip(`${name} [skipped: ${noTun}]`, () => fn(''))
  : describeGuestKernel;

/**
 * Creates namespace `ns` with loopback up and TAP `tap` (vnet_hdr) holding `hostIp`/24, up.
 * Delete it with `ip('netns', 'del', ns)` (which deletes the TAP and its address with it).
 *
 * @throws `Error` naming the `ip` command that failed
 */
export function createTapNamespace(ns: string, tap: string, hostIp: string): void {
  for (const args of [
    ['netns', 'add', ns],
    ['-n', ns, 'link', 'set', 'lo', 'up'],
    ['-n', ns, 'tuntap', 'add', 'dev', tap, 'mode', 'tap', 'vnet_hdr'],
    ['-n', ns, 'addr', 'add', `${hostIp}/24`, 'dev', tap],
    ['-n', ns, 'link', 'set', tap, 'up'],
  ]) {
    const r = ip(...args);
    if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
  }
}
