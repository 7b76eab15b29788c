/**
 * `npm run bench`: the per-exit cost of kvm-rx's ways of handling a vCPU's exits, against a C
 * KVM_RUN loop (bench/c/kvm-bench.c, built with gcc into a temp dir and spawned once per
 * repetition, in this same run). Prints a table, or JSON with `--json`.
 *
 *   npm run bench -- [--json] [--reps 5] [--exits 100000] [--cpu 1] [--cpu2 0] [--only 2,4a] [--save out.json]
 *
 * Every PIO guest is the same program shape, for C and TypeScript alike (see `loopGuest`):
 * W warm-up iterations of the body, `in $0x12` (start marker), N measured iterations, `in $0x13`
 * (end marker), `hlt`. Whoever handles the markers takes the time, so each number is the time
 * between the two markers divided by the exits between them, measured in the same way in C.
 *
 * See docs/performance.md for the method and a recorded run.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { extname, join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { offsetOf } from '../src/abi/codec';
import { ioctls } from '../src/abi/kvm-constants';
import { kvm_run } from '../src/abi/layouts';
import { nativeBackend } from '../src/backend/native';
import { runInThread } from '../src/runtime/in-thread';
import type { VcpuRun } from '../src/runtime/vcpu-run';
import { VcpuRuntime } from '../src/runtime/pool';
import { GuestMemory } from '../src/wrappers/guest-memory';
import { Kvm } from '../src/wrappers/kvm';
import type { VcpuFd } from '../src/wrappers/vcpu-fd';
import type { VmFd } from '../src/wrappers/vm-fd';
import ioPipeline, { ioHandlers, ioState } from './pipelines/io';
import { enterRealMode } from '../src/testing/real-mode';
import { hostSummary } from '../src/vmm/doctor';
import { median, quantile } from './stats';

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  json: boolean;
  reps: number;
  exits: number;
  warmup: number;
  cpu: number;
  cpu2: number;
  kicks: number;
  coldCycles: number;
  only?: Set<string>;
  save?: string;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    json: false,
    reps: 5,
    exits: 100_000,
    warmup: 5_000,
    cpu: 1,
    cpu2: 0,
    kicks: 50,
    coldCycles: 100,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const num = () => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 0) throw new Error(`${a} needs a non-negative integer`);
      return v;
    };
    if (a === '--json') o.json = true;
    else if (a === '--reps') o.reps = Math.max(1, num());
    else if (a === '--exits') o.exits = Math.max(100, num());
    else if (a === '--warmup') o.warmup = Math.max(1, num());
    else if (a === '--cpu') o.cpu = num();
    else if (a === '--cpu2') o.cpu2 = num();
    else if (a === '--kicks') o.kicks = Math.max(1, num());
    else if (a === '--cold-cycles') o.coldCycles = Math.max(1, num());
    else if (a === '--only') o.only = new Set(argv[++i].split(','));
    else if (a === '--save') o.save = argv[++i]!;
    else if (a === '--help' || a === '-h') {
      process.stdout.write(
        'npm run bench -- [--json] [--reps 5] [--exits 100000] [--warmup 5000] [--cpu 1] [--cpu2 0] [--kicks 50] [--cold-cycles 100] [--only 2,3,4a,...] [--save results.json]\n',
      );
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// Guests

/** The loop bodies; each is one or two exits per iteration. */
const BODIES = {
  out: [0xe6, 0x10], //            out %al, $0x10
  in: [0xe4, 0x11], //             in $0x11, %al
  inout: [0xe6, 0x10, 0xe4, 0x11], // out %al, $0x10 ; in $0x11, %al
} as const;
type Body = keyof typeof BODIES;
const EXITS_PER_ITER: Record<Body, number> = { out: 1, in: 1, inout: 2 };

/**
 * Real mode at GPA 0:
 *   mov $W, %ecx ; 1: <body> ; dec %ecx ; jnz 1b ; in $0x12, %al
 *   mov $N, %ecx ; 2: <body> ; dec %ecx ; jnz 2b ; in $0x13, %al ; hlt
 * (66 b9 imm32 = mov $imm32,%ecx; 66 49 = dec %ecx; 75 rel8 = jnz; e4 12 = in $0x12,%al; f4 = hlt)
 */
function loopGuest(body: Body, warmIters: number, iters: number): Uint8Array {
  const out: number[] = [];
  const u32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
  const loop = (n: number) => {
    out.push(0x66, 0xb9, ...u32(n));
    const top = out.length;
    out.push(...BODIES[body], 0x66, 0x49);
    out.push(0x75, (top - (out.length + 2)) & 0xff);
  };
  loop(warmIters);
  out.push(0xe4, 0x12);
  loop(iters);
  out.push(0xe4, 0x13, 0xf4);
  return Uint8Array.from(out);
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** A fresh VM with one page of memory at GPA 0 holding `code`, and vCPU 0 in real mode at 0. */
class Guest {
  readonly kvm: Kvm;
  readonly vm: VmFd;
  readonly mem: GuestMemory;
  readonly vcpu: VcpuFd;
  constructor(code: Uint8Array, kvm?: Kvm) {
    this.kvm = kvm ?? new Kvm();
    this.vm = this.kvm.createVm();
    this.mem = GuestMemory.anonymous(0x1000);
    this.mem.bytes.set(code);
    this.vm.setUserMemoryRegion({
      slot: 0,
      guestPhysAddr: 0n,
      memory: this.mem,
    });
    this.vcpu = this.vm.createVcpu(0);
    enterRealMode(this.vcpu, { rip: 0n });
  }
  close(ownKvm = true): void {
    this.vm.close();
    if (ownKvm) this.kvm.close();
    this.mem.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The C baseline

let cBinary = '';

function buildC(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kvm-rx-bench-'));
  const bin = join(dir, 'kvm-bench');
  const src = join(__dirname, 'c', 'kvm-bench.c');
  const r = spawnSync('gcc', ['-O2', '-Wall', '-o', bin, src, '-lpthread'], {
    encoding: 'utf8',
  });
  if (r.error || r.status !== 0) throw new Error(`gcc failed: ${r.error?.message ?? r.stderr}`);
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  return bin;
}

function runC(args: string[]): { ns: number | number[]; exits?: number } {
  const r = spawnSync(cBinary, args, { encoding: 'utf8', timeout: 120_000 });
  if (r.error || r.status !== 0) throw new Error(`kvm-bench ${args[0]} failed: ${r.error?.message ?? r.stderr}`);
  return JSON.parse(r.stdout) as { ns: number | number[]; exits?: number };
}

// ---------------------------------------------------------------------------------------------
// Cases

const addon = () => nativeBackend().addon;
const now = () => process.hrtime.bigint();

interface Measured {
  /** The value (µs per exit, per cycle or per kick) of this repetition. */
  value: number;
  /** All samples of this repetition, when it has several (kicks). */
  samples?: number[];
}

interface CaseDef {
  id: string;
  title: string;
  /** Where the threads run, for the table. */
  placement: string;
  unit: 'µs/exit' | 'µs/cycle' | 'µs/kick';
  /** Target: ratio to C (`ratio`) or absolute µs (`abs`). */
  target?: { ratio?: number; abs?: number };
  /** The C run of this repetition (null: no C baseline). */
  c: ((o: Options) => Measured) | null;
  ts: (o: Options, runtime: VcpuRuntime) => Promise<Measured>;
}

function iterations(body: Body, o: Options) {
  const epi = EXITS_PER_ITER[body];
  const iters = Math.ceil(o.exits / epi);
  const warm = Math.max(1, Math.ceil(o.warmup / epi));
  // exits between the two time stamps: the measured iterations and the end marker
  return {
    iters,
    warm,
    measured: iters * epi + 1,
    total: (warm + iters) * epi + 3,
  };
}

function cLoop(body: Body, cpu: number) {
  return (o: Options): Measured => {
    const { iters, warm, measured } = iterations(body, o);
    const r = runC(['loop', hex(loopGuest(body, warm, iters)), String(cpu)]);
    return { value: (r.ns as number) / 1000 / measured };
  };
}

function checkExits(what: string, got: number, want: number) {
  if (got !== want) throw new Error(`${what}: the guest took ${got} exits, expected ${want}`);
}

/** Main-thread handling on `run.exits$`, through the same operators as the worker pipeline. */
async function mainThreadObservable(
  body: Body,
  o: Options,
  runtime: VcpuRuntime,
  posted: boolean,
  pinCpu: number,
  plain = false,
): Promise<Measured> {
  const { iters, warm, measured, total } = iterations(body, o);
  const g = new Guest(loopGuest(body, warm, iters));
  try {
    const run = runtime.start(g.vcpu, {
      pinCpu,
      ...(posted ? { posted: [{ port: 0x10 }] } : {}),
    });
    const s = ioState();
    if (plain) {
      // the same handling in one plain subscriber, without the operators
      run.exits$.subscribe((e) => {
        if (e.kind === 'IoOut' && e.port === 0x10) s.sum += e.data[0];
        else if (e.kind === 'IoIn' && e.port === 0x11) e.data[0] = s.counter++ & 0xff;
        else if (e.kind === 'IoIn' && e.port === 0x12) {
          s.t0 = now();
          e.data[0] = 0;
        } else if (e.kind === 'IoIn' && e.port === 0x13) {
          s.t1 = now();
          e.data[0] = 0;
        } else if (e.kind === 'Hlt') void run.stop();
        else throw new Error(`unexpected ${e.kind}`);
      });
    } else {
      run.exits$.pipe(ioHandlers(s)).subscribe((e) => {
        if (e.kind === 'Hlt') void run.stop();
        else throw new Error(`unexpected ${e.kind}`);
      });
    }
    const outcome = await run.done;
    checkExits('exits$', outcome.exits, total);
    return { value: Number(s.t1 - s.t0) / 1000 / measured };
  } finally {
    g.close();
  }
}

/** Pull mode: `for await (const exit of run)`. */
async function pullMode(body: Body, o: Options, runtime: VcpuRuntime, pinCpu: number): Promise<Measured> {
  const { iters, warm, measured, total } = iterations(body, o);
  const g = new Guest(loopGuest(body, warm, iters));
  try {
    const run: VcpuRun = runtime.start(g.vcpu, {
      pinCpu,
      ...(body === 'out' ? { posted: [{ port: 0x10 }] } : {}),
    });
    let t0 = 0n;
    let t1 = 0n;
    let sum = 0;
    let counter = 0;
    for await (const e of run) {
      if (e.kind === 'IoOut' && e.port === 0x10) sum += e.data[0];
      else if (e.kind === 'IoIn' && e.port === 0x11) e.data[0] = counter++ & 0xff;
      else if (e.kind === 'IoIn' && e.port === 0x12) {
        t0 = now();
        e.data[0] = 0;
      } else if (e.kind === 'IoIn' && e.port === 0x13) {
        t1 = now();
        e.data[0] = 0;
      } else if (e.kind === 'Hlt') break;
      else throw new Error(`unexpected ${e.kind}`);
    }
    if (sum < 0) throw new Error('unreachable'); // keeps the sum of the data alive
    const outcome = await run.done;
    checkExits('pull', outcome.exits, total);
    return { value: Number(t1 - t0) / 1000 / measured };
  } finally {
    g.close();
  }
}

/** The vCPU's own thread runs a KVM_RUN loop; the main thread kicks it (raw addon kick). */
function kickWorker(o: Options, workerCpu: number): Promise<Measured> {
  const g = new Guest(Uint8Array.of(0xeb, 0xfe)); // jmp $
  const run = g.vcpu.getKvmRun();
  const sab = new SharedArrayBuffer(64);
  const ctl = new Int32Array(sab, 0, 4); // [0] ready round, [1] returned round
  const stamp = new BigInt64Array(sab, 16, 2); // [0] thread id, [1] time KVM_RUN returned
  const worker = new Worker(
    `
    const { workerData: d } = require('node:worker_threads');
    const addon = require('node-gyp-build')(d.root);
    class KvmError extends Error { constructor(errno, syscall, o) { super(String(errno)); this.errno = -Math.abs(errno); } }
    addon.setErrorClass(KvmError);
    addon.kickSignal();
    addon.setAffinity(d.cpu);
    const ctl = new Int32Array(d.sab, 0, 4), stamp = new BigInt64Array(d.sab, 16, 2);
    const run = new Uint8Array(addon.view(d.runAddress, d.runSize));
    stamp[0] = addon.threadSelf();
    for (let i = 1; i <= d.rounds; i++) {
      Atomics.store(ctl, 0, i); Atomics.notify(ctl, 0);
      let errno = 0;
      try { addon.ioctl(d.fd, d.KVM_RUN); } catch (e) { errno = e.errno; }
      const t = process.hrtime.bigint();
      if (errno !== -4) throw new Error('KVM_RUN: errno ' + errno + ', not EINTR');
      run[d.ie] = 0;
      stamp[1] = t;
      Atomics.store(ctl, 1, i); Atomics.notify(ctl, 1);
    }
    addon.detach(run.buffer);
    `,
    {
      eval: true,
      workerData: {
        root: join(__dirname, '..'),
        sab,
        cpu: workerCpu,
        fd: g.vcpu.asRawFd(),
        runAddress: run.address,
        runSize: run.size,
        KVM_RUN: ioctls.KVM_RUN,
        ie: offsetOf(kvm_run, 'immediate_exit'),
        rounds: o.kicks,
      },
    },
  );
  const failed = new Promise<never>((_, reject) => worker.on('error', reject));
  const work = (async (): Promise<Measured> => {
    const samples: number[] = [];
    const sleeper = new Int32Array(new SharedArrayBuffer(4));
    for (let i = 1; i <= o.kicks; i++) {
      while (Atomics.load(ctl, 0) !== i) {
        Atomics.wait(ctl, 0, i - 1, 1000); // this benchmark may block the main thread
        await new Promise((r) => setImmediate(r)); // let a worker error surface
      }
      Atomics.wait(sleeper, 0, 0, 2); // the worker enters the guest
      const t0 = now();
      addon().kick(stamp[0], run.address);
      while (Atomics.load(ctl, 1) !== i) Atomics.wait(ctl, 1, i - 1, 1000);
      samples.push(Number(stamp[1] - t0) / 1000);
    }
    return { value: median(samples), samples };
  })();
  return Promise.race([work, failed]).finally(async () => {
    await worker.terminate();
    g.close();
  });
}

/**
 * The floor of a worker -> main -> worker round trip in Node without KVM: the worker posts and
 * sleeps in Atomics.wait, the main thread wakes through Atomics.waitAsync, answers and notifies.
 */
function handoffFloor(o: Options, workerCpu: number): Promise<Measured> {
  const sab = new SharedArrayBuffer(16);
  const ctl = new Int32Array(sab); // [0] doorbell, [1] mailbox (1 posted, 0 answered)
  const rounds = o.exits;
  const worker = new Worker(
    `
    const { workerData: d } = require('node:worker_threads');
    require('node-gyp-build')(d.root).setAffinity(d.cpu);
    const ctl = new Int32Array(d.sab);
    for (let i = 0; i < d.rounds; i++) {
      Atomics.store(ctl, 1, 1);
      Atomics.add(ctl, 0, 1); Atomics.notify(ctl, 0);
      while (Atomics.load(ctl, 1) === 1) Atomics.wait(ctl, 1, 1);
    }
    `,
    {
      eval: true,
      workerData: { root: join(__dirname, '..'), sab, cpu: workerCpu, rounds },
    },
  );
  return (async () => {
    let t0 = 0n;
    for (let i = 0; i < rounds; i++) {
      for (;;) {
        const seen = Atomics.load(ctl, 0);
        if (Atomics.load(ctl, 1) === 1) break;
        const r = Atomics.waitAsync(ctl, 0, seen);
        if (r.async) await r.value;
      }
      if (i === Math.floor(rounds / 10)) t0 = now();
      Atomics.store(ctl, 1, 0);
      Atomics.notify(ctl, 1);
    }
    const value = Number(now() - t0) / 1000 / (rounds - Math.floor(rounds / 10));
    await worker.terminate();
    return { value };
  })();
}

function cKick(cpu: number, cpu2: number) {
  return (o: Options): Measured => {
    const samples = (runC(['kick', String(o.kicks), String(cpu), String(cpu2)]).ns as number[]).map((n) => n / 1000);
    return { value: median(samples), samples };
  };
}

function defineCases(o: Options): CaseDef[] {
  const A = o.cpu;
  const B = o.cpu2;
  const one = `1 CPU (${A})`;
  const split = `vCPU ${B} / main ${A}`;
  return [
    {
      id: '2',
      title: 'worker pipeline: onIoOut + onIoIn in the vCPU thread (OUT+IN guest)',
      placement: one,
      unit: 'µs/exit',
      target: { ratio: 1.1 },
      c: cLoop('inout', A),
      ts: async (opts, runtime) => {
        const { iters, warm, measured, total } = iterations('inout', opts);
        const g = new Guest(loopGuest('inout', warm, iters));
        try {
          const pipeline = join(__dirname, 'pipelines', `io${extname(__filename)}`);
          const result = new SharedArrayBuffer(8);
          const run = runtime.start(g.vcpu, {
            pipeline,
            pipelineOptions: { result },
            pinCpu: A,
          });
          const outcome = await run.done;
          checkExits('worker pipeline', outcome.exits, total);
          return { value: new Float64Array(result)[0] / 1000 / measured };
        } finally {
          g.close();
        }
      },
    },
    {
      id: '2t',
      title: 'same pipeline, runInThread() on the main thread (no worker; reference)',
      placement: one,
      unit: 'µs/exit',
      c: cLoop('inout', A),
      ts: async (opts) => {
        const { iters, warm, measured, total } = iterations('inout', opts);
        const g = new Guest(loopGuest('inout', warm, iters));
        try {
          let ns = NaN;
          const outcome = await runInThread(g.vcpu, ioPipeline, {
            onEmit: (_c, d) => (ns = d as number),
          });
          checkExits('runInThread', outcome.exits, total);
          return { value: ns / 1000 / measured };
        } finally {
          g.close();
        }
      },
    },
    {
      id: '3',
      title: 'native fast path: posted OUT port, runFast in the worker, main drains the ring (OUT guest)',
      placement: split,
      unit: 'µs/exit',
      target: { ratio: 1.03 },
      c: cLoop('out', B),
      ts: (opts, runtime) => mainThreadObservable('out', opts, runtime, true, B),
    },
    {
      id: '4a',
      title: 'main thread exits$ (operators), IN answered on main (IN guest)',
      placement: one,
      unit: 'µs/exit',
      target: { ratio: 2.2 },
      c: cLoop('in', A),
      ts: (opts, runtime) => mainThreadObservable('in', opts, runtime, false, A),
    },
    {
      id: '4p',
      title: 'as 4a, one plain exits$ subscriber instead of the operators',
      placement: one,
      unit: 'µs/exit',
      c: cLoop('in', A),
      ts: (opts, runtime) => mainThreadObservable('in', opts, runtime, false, A, true),
    },
    {
      id: '4b',
      title: 'main thread exits$, posted OUT writes (runFast + ring, OUT guest)',
      placement: one,
      unit: 'µs/exit',
      target: { ratio: 1.3 },
      c: cLoop('out', A),
      ts: (opts, runtime) => mainThreadObservable('out', opts, runtime, true, A),
    },
    {
      id: '5a',
      title: 'pull mode: for await / run.next(), IN answered on main (IN guest)',
      placement: one,
      unit: 'µs/exit',
      c: cLoop('in', A),
      ts: (opts, runtime) => pullMode('in', opts, runtime, A),
    },
    {
      id: '5b',
      title: 'pull mode: for await / run.next(), posted OUT writes (OUT guest)',
      placement: one,
      unit: 'µs/exit',
      c: cLoop('out', A),
      ts: (opts, runtime) => pullMode('out', opts, runtime, A),
    },
    {
      id: '4h',
      title: 'reference: Node worker -> main (waitAsync) -> worker round trip, no KVM',
      placement: one,
      unit: 'µs/exit',
      c: null,
      ts: (opts) => handoffFloor(opts, A),
    },
    {
      id: '6a',
      title: 'cold start: VM + memory + vCPU + run to Hlt + destroy (sync wrappers)',
      placement: one,
      unit: 'µs/cycle',
      c: (opts) => ({
        value: (runC(['cold', String(opts.coldCycles), String(A)]).ns as number) / 1000 / opts.coldCycles,
      }),
      ts: (opts) => {
        const kvm = new Kvm();
        try {
          const t0 = now();
          for (let i = 0; i < opts.coldCycles; i++) {
            const g = new Guest(Uint8Array.of(0xf4), kvm);
            const exit = g.vcpu.run();
            if (exit.kind !== 'Hlt') throw new Error(`cold start: ${exit.kind}, not Hlt`);
            g.close(false);
          }
          return Promise.resolve({ value: Number(now() - t0) / 1000 / opts.coldCycles });
        } finally {
          kvm.close();
        }
      },
    },
    {
      id: '6b',
      title: 'cold start through VcpuRuntime (warm pool; Hlt handled on exits$)',
      placement: one,
      unit: 'µs/cycle',
      c: (opts) => ({
        value: (runC(['cold', String(opts.coldCycles), String(A)]).ns as number) / 1000 / opts.coldCycles,
      }),
      ts: async (opts, runtime) => {
        const kvm = new Kvm();
        try {
          const t0 = now();
          for (let i = 0; i < opts.coldCycles; i++) {
            const g = new Guest(Uint8Array.of(0xf4), kvm);
            const run = runtime.start(g.vcpu, { pinCpu: A });
            run.exits$.subscribe((e) => {
              if (e.kind === 'Hlt') void run.stop();
            });
            const outcome = await run.done;
            if (outcome.lastExit !== 'Hlt') throw new Error(`cold start: ${outcome.lastExit}, not Hlt`);
            g.close(false);
          }
          return { value: Number(now() - t0) / 1000 / opts.coldCycles };
        } finally {
          kvm.close();
        }
      },
    },
    {
      id: '7a',
      title: 'kick: addon kick() -> KVM_RUN returns EINTR (`jmp $` guest)',
      placement: one,
      unit: 'µs/kick',
      target: { abs: 50 },
      c: cKick(A, A),
      ts: (opts) => kickWorker(opts, A),
    },
    {
      id: '7b',
      title: 'kick: addon kick() -> KVM_RUN returns EINTR (`jmp $` guest)',
      placement: split,
      unit: 'µs/kick',
      target: { abs: 50 },
      c: cKick(A, B),
      ts: (opts) => kickWorker(opts, B),
    },
    {
      id: '7c',
      title: 'stop: run.stop() -> run.done resolved (kick + worker teardown), `jmp $` guest',
      placement: one,
      unit: 'µs/kick',
      c: null,
      ts: async (opts, runtime) => {
        const g = new Guest(Uint8Array.of(0xeb, 0xfe));
        const samples: number[] = [];
        try {
          for (let i = 0; i < opts.kicks; i++) {
            const run = runtime.start(g.vcpu, { pinCpu: A });
            while (!run.running) await new Promise((r) => setTimeout(r, 1));
            await new Promise((r) => setTimeout(r, 2));
            const t0 = now();
            const outcome = await run.stop();
            samples.push(Number(now() - t0) / 1000);
            if (outcome?.reason !== 'stopped') throw new Error(`stop: ${JSON.stringify(outcome)}`);
          }
        } finally {
          g.close();
        }
        return { value: median(samples), samples };
      },
    },
  ];
}

// ---------------------------------------------------------------------------------------------
// Main

interface CaseResult {
  id: string;
  title: string;
  placement: string;
  unit: string;
  ts: { median: number; reps: number[]; p90?: number; samples?: number };
  c?: { median: number; reps: number[]; p90?: number };
  ratio?: number;
  target?: string;
  met?: boolean;
}

function fmt(x: number | undefined, d = 2): string {
  return x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d);
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const ncpu = cpus().length;
  if (o.cpu >= ncpu || o.cpu2 >= ncpu) throw new Error(`--cpu/--cpu2 must be below the CPU count (${ncpu})`);
  const loadBefore = loadavg().map((x) => Number(x.toFixed(2)));
  cBinary = buildC();
  // Pin the main thread (and so every thread it creates and the C children, which inherit it).
  addon().setAffinity(o.cpu);
  const runtime = new VcpuRuntime({ maxVcpus: 1 });
  const log = (s: string) => {
    if (!o.json) process.stderr.write(s);
  };
  log(`${await hostSummary()}\n`);
  const results: CaseResult[] = [];
  try {
    const cases = defineCases(o).filter((c) => !o.only || o.only.has(c.id));
    for (const c of cases) {
      log(`${c.id} ${c.title} [${c.placement}] `);
      // one warm-up round of the TypeScript side (worker start, pipeline load, JIT)
      await c.ts(
        {
          ...o,
          exits: Math.min(o.exits, 10_000),
          kicks: Math.min(o.kicks, 5),
          coldCycles: Math.min(o.coldCycles, 10),
        },
        runtime,
      );
      const tsReps: Measured[] = [];
      const cReps: Measured[] = [];
      for (let r = 0; r < o.reps; r++) {
        if (c.c) cReps.push(c.c(o));
        tsReps.push(await c.ts(o, runtime));
        log('.');
      }
      const res: CaseResult = {
        id: c.id,
        title: c.title,
        placement: c.placement,
        unit: c.unit,
        ts: {
          median: median(tsReps.map((m) => m.value)),
          reps: tsReps.map((m) => m.value),
        },
      };
      const tsSamples = tsReps.flatMap((m) => m.samples ?? []);
      if (tsSamples.length > 0)
        Object.assign(res.ts, {
          p90: quantile(tsSamples, 0.9),
          samples: tsSamples.length,
        });
      if (c.c) {
        res.c = {
          median: median(cReps.map((m) => m.value)),
          reps: cReps.map((m) => m.value),
        };
        const cSamples = cReps.flatMap((m) => m.samples ?? []);
        if (cSamples.length > 0) res.c.p90 = quantile(cSamples, 0.9);
        res.ratio = res.ts.median / res.c.median;
      }
      if (c.target?.ratio !== undefined) {
        res.target = `<= ${c.target.ratio.toFixed(2)}x C`;
        res.met = res.ratio !== undefined && res.ratio <= c.target.ratio;
      } else if (c.target?.abs !== undefined) {
        res.target = `<= ${c.target.abs} µs`;
        res.met = res.ts.median <= c.target.abs;
      }
      results.push(res);
      log(` ${fmt(res.ts.median)} ${c.unit}${res.ratio !== undefined ? ` (${fmt(res.ratio)}x C)` : ''}\n`);
    }
  } finally {
    await runtime.close();
    addon().setAffinity(-1);
  }

  const meta = {
    date: new Date().toISOString(),
    node: process.version,
    kernel: spawnSync('uname', ['-r'], { encoding: 'utf8' }).stdout.trim(),
    cpus: ncpu,
    cpuModel: cpus()[0]?.model ?? '',
    scheduling: spawnSync('chrt', ['-p', String(process.pid)], {
      encoding: 'utf8',
    })
      .stdout.trim()
      .split('\n')
      .map((l) => l.replace(/^.*?: /, ''))
      .join(', '),
    loadavgBefore: loadBefore,
    loadavgAfter: loadavg().map((x) => Number(x.toFixed(2))),
    pinning: { main: o.cpu, other: o.cpu2 },
    reps: o.reps,
    exits: o.exits,
    warmup: o.warmup,
    kicks: o.kicks,
    coldCycles: o.coldCycles,
  };
  if (o.save !== undefined) writeFileSync(o.save, JSON.stringify({ meta, results }, null, 2) + '\n');
  if (o.json) {
    process.stdout.write(JSON.stringify({ meta, results }, null, 2) + '\n');
    return;
  }
  const rows = [['case', 'what', 'threads on', 'kvm-rx', 'C', 'x C', 'target', 'met']];
  for (const r of results) {
    const extra = r.ts.p90 !== undefined ? ` (p90 ${fmt(r.ts.p90, 1)})` : '';
    const cExtra = r.c?.p90 !== undefined ? ` (p90 ${fmt(r.c.p90, 1)})` : '';
    rows.push([
      r.id,
      r.title,
      r.placement,
      `${fmt(r.ts.median)} ${r.unit}${extra}`,
      r.c ? `${fmt(r.c.median)}${cExtra}` : '-',
      r.ratio !== undefined ? fmt(r.ratio) : '-',
      r.target ?? '-',
      r.met === undefined ? '' : r.met ? 'yes' : 'NO',
    ]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  const line = (row: string[]) => '| ' + row.map((cell, i) => cell.padEnd(widths[i])).join(' | ') + ' |';
  process.stdout.write(
    `kvm-rx bench, ${meta.date}, Node ${meta.node}, Linux ${meta.kernel}, ${ncpu} CPUs (${meta.cpuModel})\n` +
      `medians of ${o.reps} repetitions; each repetition spawns the C baseline, then runs the kvm-rx case; ` +
      `${o.exits} measured exits per PIO case after ${o.warmup} warm-up exits; threads pinned as shown\n` +
      `scheduling: ${meta.scheduling}; load average (1/5/15 min) before ${meta.loadavgBefore.join(' ')}, after ${meta.loadavgAfter.join(' ')}\n\n` +
      [line(rows[0]), line(widths.map((w) => '-'.repeat(w))), ...rows.slice(1).map(line)].join('\n') +
      '\n',
  );
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench failed: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exit(1);
  },
);
