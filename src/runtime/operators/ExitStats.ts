/**
 * {@link ExitStats}: what `traceExits` records.
 *
 * @module
 */
import type { VcpuExit } from '../../wrappers/vcpu-exit';
import { checkObject, invalidType } from '../../abi/validate';

/** Options of {@link ExitStats}. */
export interface ExitStatsOptions {
  /** The clock, in milliseconds (default `performance.now`). Inject `() => scheduler.now()` in tests. */
  now?: () => number;
}

/** Upper bounds (ms) of the latency histogram's buckets: 1 µs, 2 µs, 4 µs, … 2^20 µs (~1 s), then Infinity. */
export const LATENCY_BUCKETS_MS: readonly number[] = Object.freeze([
  ...Array.from({ length: 21 }, (_, i) => 2 ** i / 1000),
  Infinity,
]);

/** A plain, JSON-friendly copy of an {@link ExitStats}. */
export interface ExitStatsSnapshot {
  /** Exits seen. */
  total: number;
  /** Exits by kind. */
  counts: Partial<Record<VcpuExit['kind'], number>>;
  /** I/O exits (`IoIn`, `IoOut`) by port, keyed `'0x3f8'`. */
  ports: Record<string, number>;
  /** MMIO exits (`MmioRead`, `MmioWrite`) by address, keyed `'0xfee00000'`. */
  addresses: Record<string, number>;
  /** Time from an exit's arrival to the next exit's arrival (handling plus guest run time). */
  latency: {
    count: number;
    minMs: number;
    maxMs: number;
    meanMs: number;
    /** `count` latencies were `<= leMs` and above the previous bucket's bound. */
    buckets: Array<{ leMs: number; count: number }>;
  };
}

/**
 * Counters filled by `traceExits`: exits by kind, by port, by MMIO address, and a histogram of the
 * latency between consecutive exits.
 *
 * @example
 * ```ts
 * const stats = new ExitStats();
 * exits$.pipe(traceExits(stats), untilHalt(), onIoOut(0x3f8, (e) => process.stdout.write(e.data)));
 * // later
 * console.log(stats.counts.get('IoOut'), stats.snapshot().latency.meanMs);
 * ```
 */
export class ExitStats {
  /** Exits seen. */
  total = 0;
  /** Exits by kind. */
  readonly counts = new Map<VcpuExit['kind'], number>();
  /** I/O exits by port. */
  readonly ports = new Map<number, number>();
  /** MMIO exits by guest-physical address. */
  readonly addresses = new Map<bigint, number>();
  /** Latency histogram: `histogram[i]` counts latencies in `(LATENCY_BUCKETS_MS[i-1], LATENCY_BUCKETS_MS[i]]`. */
  readonly histogram: number[] = LATENCY_BUCKETS_MS.map(() => 0);
  /** Latencies recorded, and their sum, minimum and maximum (ms). */
  latencyCount = 0;
  latencySum = 0;
  latencyMin = Infinity;
  latencyMax = 0;
  /** The clock (ms). */
  readonly now: () => number;

  /** @param options - `now`: the clock in milliseconds (default `performance.now()`) */
  constructor(options: ExitStatsOptions = {}) {
    checkObject('options', options);
    if (options.now !== undefined && typeof options.now !== 'function')
      invalidType('options.now', 'a function', options.now);
    this.now = options.now ?? (() => performance.now());
  }

  /** Counts one exit. */
  record(exit: VcpuExit): void {
    checkObject('exit', exit);
    this.total++;
    this.counts.set(exit.kind, (this.counts.get(exit.kind) ?? 0) + 1);
    if (exit.kind === 'IoIn' || exit.kind === 'IoOut') this.ports.set(exit.port, (this.ports.get(exit.port) ?? 0) + 1);
    else if (exit.kind === 'MmioRead' || exit.kind === 'MmioWrite')
      this.addresses.set(exit.addr, (this.addresses.get(exit.addr) ?? 0) + 1);
  }

  /** Adds one latency (ms) to the histogram. */
  recordLatency(ms: number): void {
    if (typeof ms !== 'number') invalidType('ms', 'of type number', ms);
    this.latencyCount++;
    this.latencySum += ms;
    this.latencyMin = Math.min(this.latencyMin, ms);
    this.latencyMax = Math.max(this.latencyMax, ms);
    this.histogram[LATENCY_BUCKETS_MS.findIndex((le) => ms <= le)]++;
  }

  /** Clears every counter. */
  reset(): void {
    this.total = 0;
    this.counts.clear();
    this.ports.clear();
    this.addresses.clear();
    this.histogram.fill(0);
    this.latencyCount = 0;
    this.latencySum = 0;
    this.latencyMin = Infinity;
    this.latencyMax = 0;
  }

  /** A plain copy of the counters (safe to keep, log or post to another thread). */
  snapshot(): ExitStatsSnapshot {
    const hex = (v: number | bigint): string => `0x${v.toString(16)}`;
    return {
      total: this.total,
      counts: Object.fromEntries(this.counts),
      ports: Object.fromEntries([...this.ports].map(([p, n]) => [hex(p), n])),
      addresses: Object.fromEntries([...this.addresses].map(([a, n]) => [hex(a), n])),
      latency: {
        count: this.latencyCount,
        minMs: this.latencyCount === 0 ? 0 : this.latencyMin,
        maxMs: this.latencyMax,
        meanMs: this.latencyCount === 0 ? 0 : this.latencySum / this.latencyCount,
        buckets: LATENCY_BUCKETS_MS.map((leMs, i) => ({ leMs, count: this.histogram[i] })),
      },
    };
  }
}
