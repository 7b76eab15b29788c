/**
 * What the leak specs count: kvm-rx's own fds and mappings exactly (by what they are, not how
 * many lines there are), and the rest of the process (all fds, all map lines, RSS) as growth per
 * batch of cycles, judged against the same loop measured in the same process.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/** kvm-rx's fds in /proc/self/fd, by target: `/dev/kvm`, `anon_inode:kvm-vm`, `anon_inode:kvm-vcpu:N`, eventfds. */
export interface OwnFds {
  kvm: number;
  vm: number;
  vcpu: number;
  eventfd: number;
}

/** The fds of this process, and ours among them by their link target. */
export function fdCensus(): { total: number; own: OwnFds } {
  const own: OwnFds = { kvm: 0, vm: 0, vcpu: 0, eventfd: 0 };
  const names = readdirSync('/proc/self/fd');
  for (const n of names) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${n}`);
    } catch {
      continue; // the fd readdir itself used, closed by now
    }
    if (target === '/dev/kvm') own.kvm++;
    else if (target === 'anon_inode:kvm-vm') own.vm++;
    else if (target.startsWith('anon_inode:kvm-vcpu')) own.vcpu++;
    else if (target === 'anon_inode:[eventfd]') own.eventfd++;
  }
  return { total: names.length, own };
}

/** One line of /proc/self/maps: its range and the rest of the line. */
interface MapLine {
  start: bigint;
  end: bigint;
  perms: string;
  path: string;
}

function mapLines(): MapLine[] {
  const out: MapLine[] = [];
  for (const line of readFileSync('/proc/self/maps', 'latin1').split('\n')) {
    if (line === '') continue;
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (m === null) continue;
    out.push({ start: BigInt(`0x${m[1]}`), end: BigInt(`0x${m[2]}`), perms: m[3], path: m[4] });
  }
  return out;
}

/**
 * All map lines, and ours among them: kvm_run mappings (backed by `anon_inode:kvm-vcpu`) and
 * shared mappings that contain one of `guestAddresses` (the `hostAddress` of every GuestMemory the
 * loop created; an address V8 reuses later for a private mapping is not ours).
 */
export function mapCensus(guestAddresses: Iterable<bigint> = []): { total: number; kvmRun: number; guest: number } {
  const lines = mapLines();
  const addrs = [...guestAddresses];
  return {
    total: lines.length,
    kvmRun: lines.filter((l) => l.path.startsWith('anon_inode:kvm-vcpu')).length,
    guest: lines.filter((l) => l.perms.endsWith('s') && addrs.some((a) => a >= l.start && a < l.end)).length,
  };
}

/**
 * Whether a quantity that is not ours grew linearly with the cycles. `samples[0]` is taken before
 * a warm-up batch, `samples[1]` after it, the others after each following batch of
 * `cyclesPerBatch` cycles. A per-cycle leak adds about the same to every batch; what V8 and glibc
 * do on their own comes in bursts and settles, so some batch grows by little. The bound is half of
 * the larger of: the smallest per-cycle leak (`leakUnit`: one fd, one map line, one page) over a
 * batch, and what the warm-up batch of the same loop grew in this process (its first-time costs,
 * plus any leak). The check fails when every batch grew by more than that: a leak larger than the
 * loop's own settling, which no constant measured on one machine decides.
 * Returns a description for the failure message.
 */
export function linearGrowth(
  samples: readonly number[],
  cyclesPerBatch: number,
  leakUnit: number,
): { linear: boolean; detail: string } {
  const growth = samples.slice(2).map((v, i) => v - samples[i + 1]);
  const warmUp = samples[1] - samples[0];
  const bound = Math.max(leakUnit * cyclesPerBatch, warmUp) / 2;
  const smallest = Math.min(...growth);
  return {
    linear: smallest > bound,
    detail: `warm-up +${warmUp}, batches of ${cyclesPerBatch} cycles: ${growth.map((g) => (g >= 0 ? `+${g}` : `${g}`)).join(' ')}; smallest ${smallest}, bound ${bound}`,
  };
}
