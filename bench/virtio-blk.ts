/**
 * `npm run bench:virtio-blk`: virtio-blk through the whole queue pipeline, against the host
 * reading and writing the same file directly, in the same run.
 *
 *   npm run bench:virtio-blk -- [--sizes 4096,131072] [--depths 1,32] [--reps 3] [--file-mib 256]
 *                               [--run-mib 64] [--max-requests 8192] [--seconds 10]
 *
 * kvm-rx side: a real VM (`new Kvm().createVm()`, in-kernel irqchip, one guest memory slot, no
 * vCPU) with `virtioBlk` on a `VirtioMmioDevice`. The benchmark is the guest driver: it sets the
 * device up through the register file as Linux's virtio_mmio does, places requests in guest memory
 * as Linux's virtio_blk does (a 16-byte header, the data buffer, a 1-byte status: three
 * descriptors), publishes them on the split ring, and notifies by writing the queue index to
 * QueueNotify through `VirtioMmioRegisters` over `device.shared.state` (the path a notify that
 * exits takes: it rings the device's doorbell; a running guest's notify is taken by an ioeventfd
 * instead, without an exit). The device takes the chains off the ring, `virtioBlk` serves them
 * with async file I/O, and returns them on the used ring. There is no vCPU to take the interrupt,
 * so a hook after each `complete()` runs the driver's interrupt handler as a microtask (after the
 * device's own interrupt flush): it reads InterruptStatus, ACKs it, reaps the used ring, re-arms
 * `used_event`, submits the next requests and kicks only when `avail_event` asks for it (EVENT_IDX,
 * as `virtqueue_kick_prepare` does).
 *
 * Host side: a `FileHandle` of the same file, the same request size and number in flight.
 *
 * Throughput is bytes / wall time of a run (median of the repetitions); latency is per request,
 * from publishing it (or calling `read`/`write`) to reaping it (or the promise resolving), over
 * all requests of all repetitions. At the end the whole file is written and then read through the
 * device, and the bytes are checked against the file (sha256): a mismatch fails the run.
 *
 * See docs/performance.md ("virtio-blk through the queue pipeline") for a recorded run.
 */
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { VirtioBlkRequest, VirtioBlkStatus, virtioBlk } from '../src/devices/virtio/blk';
import { VirtioMmioDevice, type VirtioDevice } from '../src/devices/virtio/mmio-device';
import {
  VirtioFeature,
  VirtioInterrupt,
  VirtioMmioReg as R,
  VirtioMmioRegisters,
  VirtioStatus as S,
} from '../src/devices/virtio/mmio-transport';
import { GuestMemory } from '../src/wrappers/guest-memory';
import { Kvm } from '../src/wrappers/kvm';
import { hostSummary } from '../src/vmm/doctor';
import { runMain } from '../scripts/run-main';
import { SplitDriver } from '../spec/devices/virtio/split-driver';
import { median, quantile } from './stats';

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  sizes: number[];
  depths: number[];
  reps: number;
  fileMiB: number;
  runMiB: number;
  maxRequests: number;
  seconds: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    sizes: [4096, 131072],
    depths: [1, 32],
    reps: 3,
    fileMiB: 256,
    runMiB: 64,
    maxRequests: 8192,
    seconds: 10,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const num = (v: string = argv[++i]) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${a} needs positive integers; got ${v}`);
      return n;
    };
    const list = () => argv[++i].split(',').map((v) => num(v));
    if (a === '--sizes') o.sizes = list();
    else if (a === '--depths') o.depths = list();
    else if (a === '--reps') o.reps = num();
    else if (a === '--file-mib') o.fileMiB = num();
    else if (a === '--run-mib') o.runMiB = num();
    else if (a === '--max-requests') o.maxRequests = num();
    else if (a === '--seconds') o.seconds = num();
    else if (a === '--help' || a === '-h') {
      process.stdout.write(
        'npm run bench:virtio-blk -- [--sizes 4096,131072] [--depths 1,32] [--reps 3] [--file-mib 256] [--run-mib 64] [--max-requests 8192] [--seconds 10]\n',
      );
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  for (const s of o.sizes)
    if (s % 512 !== 0 || s > 4 << 20) throw new Error(`--sizes: ${s} is not whole sectors up to 4 MiB`);
  if (Math.max(...o.depths) > 64) throw new Error('--depths: at most 64 (3 descriptors each, a queue of 256)');
  if (o.fileMiB * (1 << 20) < Math.max(...o.sizes)) throw new Error('--file-mib is smaller than a request');
  return o;
}

// ---------------------------------------------------------------------------------------------
// Figures

type Op = 'read' | 'write';

/** One timed run of `count` requests. */
interface Run {
  requests: number;
  bytes: number;
  seconds: number;
  /** Per-request latency, µs. */
  latencies: number[];
  /** Process CPU (user + system, every thread) per request, µs. */
  cpuPerRequest: number;
  notifies: number;
  interrupts: number;
  /** kvm-rx: wall time in the benchmark's guest driver (submit, kick, interrupt handler) per request, µs. */
  driverPerRequest: number;
}

interface RunSpec {
  op: Op;
  size: number;
  depth: number;
  count: number;
  deadline: number;
  /** Fills request `i`'s data before a write is published (default: the buffer as it is). */
  fill?: (i: number, dst: Uint8Array) => void;
  /** Gets request `i`'s data once a read is reaped. */
  take?: (i: number, src: Uint8Array) => void;
}

// ---------------------------------------------------------------------------------------------
// kvm-rx: a VM, virtio-blk on virtio-mmio, and a Linux-style driver of its request queue

const BASE = 0xd000_0000n;
const QUEUE_SIZE = 256; // virtioBlk's default QueueNumMax, which Linux takes
const RINGS = 0x10_0000; // desc table, avail ring, used ring of the one queue
const HEADERS = 0x20_0000; // 16 bytes per slot
const STATUSES = 0x21_0000; // 1 byte per slot
const DATA = 0x40_0000; // one data buffer per slot, of the largest size

interface Slot {
  readonly index: number;
  readonly hdr: number;
  readonly status: number;
  readonly data: number;
  head: number;
  request: number;
  t0: number;
  op: Op;
  len: number;
}

class BlkGuest {
  readonly kvm = new Kvm();
  readonly vm = this.kvm.createVm();
  readonly memory: GuestMemory;
  readonly dev: VirtioMmioDevice;
  readonly regs: VirtioMmioRegisters;
  readonly q: SplitDriver;
  readonly slots: Slot[] = [];
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  readonly #byHead = new Map<number, Slot>();
  #published = 0;
  #irqScheduled = false;
  /** The interrupt handler of the run in progress. */
  #onInterrupt: () => void = () => undefined;
  readonly errors: string[] = [];

  constructor(path: string, maxDepth: number, maxSize: number) {
    this.vm.createIrqChip(); // the irqfd needs one
    const ram = DATA + maxDepth * maxSize;
    this.memory = GuestMemory.anonymous(Math.ceil(ram / 0x20_0000) * 0x20_0000);
    this.vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory: this.memory });
    this.#bytes = this.memory.bytes;
    this.#view = new DataView(this.#bytes.buffer, this.#bytes.byteOffset, this.#bytes.byteLength);
    const blk = virtioBlk({
      path,
      concurrency: maxDepth,
      queueSize: QUEUE_SIZE,
      onError: (m) => this.errors.push(m),
    });
    // Where the interrupt would reach a guest: right after the device's own flush (a microtask
    // queued by its first completion of the tick), once per tick.
    const model: VirtioDevice = {
      ...blk,
      activate: (ctx) =>
        blk.activate({
          ...ctx,
          queues: ctx.queues.map((q) => ({
            index: q.index,
            chains$: q.chains$,
            complete: (chain, len) => {
              q.complete(chain, len);
              if (this.#irqScheduled) return;
              this.#irqScheduled = true;
              queueMicrotask(() => {
                this.#irqScheduled = false;
                this.#onInterrupt();
              });
            },
          })),
        }),
    };
    this.dev = new VirtioMmioDevice(this.vm, model, { base: BASE, gsi: 5, log: (m) => this.errors.push(m) });
    this.regs = new VirtioMmioRegisters(this.dev.shared.state);
    this.q = this.#probe();
    for (let i = 0; i < maxDepth; i++)
      this.slots.push({
        index: i,
        hdr: HEADERS + 16 * i,
        status: STATUSES + i,
        data: DATA + i * maxSize,
        head: -1,
        request: -1,
        t0: 0,
        op: 'read',
        len: 0,
      });
  }

  /** Linux's virtio_mmio probe and virtio_blk's init_vq: reset, negotiate, one queue, DRIVER_OK. */
  #probe(): SplitDriver {
    const { regs } = this;
    regs.write(R.status, 4, 0);
    regs.write(R.status, 4, S.acknowledge);
    regs.write(R.status, 4, S.acknowledge | S.driver);
    regs.write(R.deviceFeaturesSel, 4, 1);
    const hi = BigInt(regs.read(R.deviceFeatures, 4));
    regs.write(R.deviceFeaturesSel, 4, 0);
    const offered = (hi << 32n) | BigInt(regs.read(R.deviceFeatures, 4));
    if ((offered & VirtioFeature.ringEventIdx) === 0n) throw new Error('virtio-blk does not offer EVENT_IDX');
    regs.write(R.driverFeaturesSel, 4, 1);
    regs.write(R.driverFeatures, 4, Number(offered >> 32n));
    regs.write(R.driverFeaturesSel, 4, 0);
    regs.write(R.driverFeatures, 4, Number(offered & 0xffff_ffffn));
    regs.write(R.status, 4, S.acknowledge | S.driver | S.featuresOk);
    if ((regs.read(R.status, 4) & S.featuresOk) === 0) throw new Error('virtio-blk refused the features');
    regs.write(R.queueSel, 4, 0);
    if (regs.read(R.queueNumMax, 4) < QUEUE_SIZE) throw new Error(`QueueNumMax below ${QUEUE_SIZE}`);
    const config = {
      size: QUEUE_SIZE,
      descTable: BigInt(RINGS),
      availRing: BigInt(RINGS + 0x4000),
      usedRing: BigInt(RINGS + 0x8000),
      eventIdx: true,
    };
    regs.write(R.queueNum, 4, QUEUE_SIZE);
    regs.write(R.queueDescLow, 4, RINGS);
    regs.write(R.queueDriverLow, 4, RINGS + 0x4000);
    regs.write(R.queueDeviceLow, 4, RINGS + 0x8000);
    regs.write(R.queueReady, 4, 1);
    regs.write(R.status, 4, S.acknowledge | S.driver | S.featuresOk | S.driverOk);
    return new SplitDriver(this.vm.guestMemory, config);
  }

  /** virtio_blk's queue_rq: header, data, status as three descriptors; not published yet. */
  #add(slot: Slot, op: Op, request: number, position: number, len: number): void {
    const v = this.#view;
    v.setUint32(slot.hdr, op === 'read' ? VirtioBlkRequest.in : VirtioBlkRequest.out, true);
    v.setUint32(slot.hdr + 4, 0, true); // ioprio
    v.setBigUint64(slot.hdr + 8, BigInt(position / 512), true);
    this.#bytes[slot.status] = 0xff;
    const hdr = { addr: BigInt(slot.hdr), len: 16 };
    const data = { addr: BigInt(slot.data), len };
    const status = { addr: BigInt(slot.status), len: 1 };
    slot.head = op === 'read' ? this.q.add([hdr], [data, status], false) : this.q.add([hdr, data], [status], false);
    slot.request = request;
    slot.op = op;
    slot.len = len;
    this.#byHead.set(slot.head, slot);
    slot.t0 = performance.now();
  }

  /** virtqueue_kick_prepare + notify: publish avail.idx, notify only if avail_event asks for it. */
  #kick(): boolean {
    const old = this.#published;
    const now = this.q.availIdx;
    if (old === now) return false;
    this.q.setAvailIdx(now);
    this.#published = now;
    const event = this.q.availEvent();
    if (((now - event - 1) & 0xffff) >= ((now - old) & 0xffff)) return false;
    this.regs.write(R.queueNotify, 4, 0);
    return true;
  }

  /** The guest's data buffer of a slot. */
  buffer(slot: Slot, len: number): Uint8Array {
    return this.#bytes.subarray(slot.data, slot.data + len);
  }

  /** Runs `spec.count` sequential requests with `spec.depth` in flight. */
  run(spec: RunSpec): Promise<Run> {
    const { op, size, depth, count } = spec;
    const fileBytes = fileSize;
    const latencies: number[] = [];
    let next = 0;
    let done = 0;
    let inflight = 0;
    let notifies = 0;
    let interrupts = 0;
    let driverMs = 0;
    let lastProgress = Date.now();
    return new Promise<Run>((resolve, reject) => {
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      const submit = (slot: Slot) => {
        const i = next++;
        if (op === 'write' && spec.fill) spec.fill(i, this.buffer(slot, size));
        this.#add(slot, op, i, (i * size) % fileBytes, size);
        inflight++;
      };
      const finish = () => {
        clearInterval(watchdog);
        this.#onInterrupt = () => undefined;
        const seconds = (performance.now() - t0) / 1000;
        const cpu = process.cpuUsage(cpu0);
        resolve({
          requests: done,
          bytes: done * size,
          seconds,
          latencies,
          cpuPerRequest: (cpu.user + cpu.system) / done,
          notifies,
          interrupts,
          driverPerRequest: (driverMs * 1000) / done,
        });
      };
      const fail = (why: string) => {
        clearInterval(watchdog);
        this.#onInterrupt = () => undefined;
        reject(
          new Error(
            `kvm-rx ${op} ${size} B x${depth}: ${why}${this.errors.length ? `; ${this.errors.join('; ')}` : ''}`,
          ),
        );
      };
      // virtblk_done: ACK, reap until the ring is empty with used_event re-armed, refill, kick.
      const handle = () => {
        const isr = this.regs.read(R.interruptStatus, 4);
        if ((isr & VirtioInterrupt.usedBuffer) === 0) return; // suppressed: no interrupt was raised
        this.regs.write(R.interruptAck, 4, isr);
        interrupts++;
        const free: Slot[] = [];
        for (;;) {
          for (const e of this.q.getUsed()) {
            const now = performance.now();
            const slot = this.#byHead.get(e.id);
            if (slot === undefined) return fail(`used id ${e.id} is no request's head`);
            this.#byHead.delete(e.id);
            const status = this.#bytes[slot.status];
            if (status !== VirtioBlkStatus.ok) return fail(`request ${slot.request}: status ${status}`);
            const want = slot.op === 'read' ? slot.len + 1 : 1;
            if (e.len !== want) return fail(`request ${slot.request}: used length ${e.len}, expected ${want}`);
            latencies.push((now - slot.t0) * 1000);
            if (slot.op === 'read' && spec.take) spec.take(slot.request, this.buffer(slot, slot.len));
            done++;
            inflight--;
            free.push(slot);
          }
          this.q.setUsedEvent(this.q.lastUsed);
          if (this.q.usedIdx() === this.q.lastUsed) break;
        }
        lastProgress = Date.now();
        const open = next < count && performance.now() < spec.deadline;
        for (const slot of free) if (open && next < count) submit(slot);
        if (this.#kick()) notifies++;
        return inflight === 0;
      };
      this.#onInterrupt = () => {
        const h0 = performance.now();
        const last = handle();
        driverMs += performance.now() - h0;
        if (last === true) finish();
      };
      const watchdog = setInterval(() => {
        if (Date.now() - lastProgress > 30_000) fail(`no completion for 30 s (${inflight} in flight)`);
      }, 1000);
      const h0 = performance.now();
      for (let k = 0; k < Math.min(depth, count); k++) submit(this.slots[k]);
      if (this.#kick()) notifies++;
      driverMs += performance.now() - h0;
    });
  }

  close(): void {
    this.dev.close();
    this.vm.close();
    this.memory.close();
    this.kvm.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The host: the same file through a FileHandle

async function hostRun(file: FileHandle, spec: RunSpec, buffers: Buffer[]): Promise<Run> {
  const { op, size, depth, count } = spec;
  const latencies: number[] = [];
  let next = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const worker = async (buf: Buffer) => {
    while (next < count && performance.now() < spec.deadline) {
      const i = next++;
      const position = (i * size) % fileSize;
      if (op === 'write' && spec.fill) spec.fill(i, buf);
      const s = performance.now();
      const r =
        op === 'read'
          ? (await file.read(buf, 0, size, position)).bytesRead
          : (await file.write(buf, 0, size, position)).bytesWritten;
      latencies.push((performance.now() - s) * 1000);
      if (r !== size) throw new Error(`host ${op} at ${position}: ${r} of ${size} bytes`);
      if (op === 'read' && spec.take) spec.take(i, buf);
    }
  };
  await Promise.all(buffers.slice(0, depth).map(worker));
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  return {
    requests: latencies.length,
    bytes: latencies.length * size,
    seconds,
    latencies,
    cpuPerRequest: (cpu.user + cpu.system) / latencies.length,
    notifies: 0,
    interrupts: 0,
    driverPerRequest: 0,
  };
}

// ---------------------------------------------------------------------------------------------
// Content and the final check

let fileSize = 0;
const CHUNK = 128 << 10;

/** The expected bytes of the file's chunk `i` in pass `seed`: random bytes, each sector stamped. */
function chunkFiller(base: Buffer, seed: number) {
  return (i: number, dst: Uint8Array) => {
    dst.set(base.subarray(0, dst.length));
    const v = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
    for (let s = 0; s < dst.length; s += 512) {
      v.setUint32(s, (i * CHUNK + s) / 512, true);
      v.setUint32(s + 4, seed, true);
    }
  };
}

/** Hashes chunks that may arrive out of order, in file order. */
function orderedHash() {
  const h = createHash('sha256');
  const pending = new Map<number, Buffer>();
  let want = 0;
  return {
    add(i: number, data: Uint8Array) {
      pending.set(i, Buffer.from(data));
      for (let b = pending.get(want); b !== undefined; b = pending.get(want)) {
        h.update(b);
        pending.delete(want++);
      }
    },
    digest(): string {
      if (pending.size > 0) throw new Error(`${pending.size} chunks never came in order`);
      return h.digest('hex');
    },
    get count() {
      return want;
    },
  };
}

function fileHash(path: string): string {
  const h = createHash('sha256');
  const fd = openSync(path, 'r');
  const buf = Buffer.alloc(4 << 20);
  try {
    for (let n = readSync(fd, buf); n > 0; n = readSync(fd, buf)) h.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

// ---------------------------------------------------------------------------------------------
// Main

interface CaseResult {
  op: Op;
  size: number;
  depth: number;
  kvm: Run[];
  host: Run[];
}

const fmt = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const sizeName = (n: number) => (n % (1 << 20) === 0 ? `${n >> 20} MiB` : n % 1024 === 0 ? `${n >> 10} KiB` : `${n} B`);
const mbps = (runs: Run[]) => median(runs.map((r) => r.bytes / r.seconds / 1e6));

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const started = new Date();
  const loadBefore = loadavg().map((x) => x.toFixed(2));
  const dir = mkdtempSync(join(tmpdir(), 'kvm-rx-blk-bench-'));
  const path = join(dir, 'disk.img');
  fileSize = o.fileMiB << 20;
  const maxDepth = Math.max(...o.depths);
  const maxSize = Math.max(...o.sizes, CHUNK);
  const fsType = spawnSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' }).stdout.trim() || '?';
  let guest: BlkGuest | undefined;
  let host: FileHandle | undefined;
  try {
    console.log(await hostSummary());
    console.log(
      `bench:virtio-blk ${started.toISOString()}, Node ${process.version}, ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), ` +
        `load average before ${loadBefore.join(' ')}`,
    );
    // The file, written by the host: its pages are in the page cache for both sides.
    const base = randomBytes(CHUNK);
    {
      const fd = openSync(path, 'w');
      const chunk = new Uint8Array(CHUNK);
      const fill = chunkFiller(base, 0);
      for (let i = 0; i < fileSize / CHUNK; i++) {
        fill(i, chunk);
        writeSync(fd, chunk, 0, CHUNK, i * CHUNK);
      }
      closeSync(fd);
    }
    console.log(
      `file: ${o.fileMiB} MiB at ${path} (${fsType}), written just before: reads hit the page cache, writes stay in it (no flush)`,
    );
    guest = new BlkGuest(path, maxDepth, maxSize);
    host = await open(path, 'r+');
    const hostBuffers = Array.from({ length: maxDepth }, () => Buffer.alloc(maxSize));
    const pattern = base.subarray(0, maxSize > CHUNK ? CHUNK : maxSize);
    for (const b of hostBuffers) b.set(pattern.subarray(0, Math.min(b.length, pattern.length)));
    for (const s of guest.slots) guest.buffer(s, pattern.length).set(pattern);

    const results: CaseResult[] = [];
    for (const op of ['read', 'write'] as const)
      for (const size of o.sizes)
        for (const depth of o.depths) {
          const count = Math.max(depth, Math.min(o.maxRequests, Math.floor((o.runMiB << 20) / size)));
          const spec = (n: number): RunSpec => ({
            op,
            size,
            depth,
            count: n,
            deadline: performance.now() + o.seconds * 1000,
          });
          process.stderr.write(`${op} ${sizeName(size)} x${depth}, ${count} requests per run `);
          // warm-up of both sides (JIT, the device's file open, the thread pool)
          await guest.run(spec(Math.min(count, 512)));
          await hostRun(host, spec(Math.min(count, 512)), hostBuffers);
          const r: CaseResult = { op, size, depth, kvm: [], host: [] };
          for (let k = 0; k < o.reps; k++) {
            // alternate which side goes first
            if (k % 2 === 0) {
              r.kvm.push(await guest.run(spec(count)));
              r.host.push(await hostRun(host, spec(count), hostBuffers));
            } else {
              r.host.push(await hostRun(host, spec(count), hostBuffers));
              r.kvm.push(await guest.run(spec(count)));
            }
            process.stderr.write('.');
          }
          process.stderr.write(` ${fmt(mbps(r.kvm))} MB/s vs ${fmt(mbps(r.host))} MB/s\n`);
          results.push(r);
        }

    // Correctness: write the whole file through the device, then read it back through the device.
    const seed = 0x5eed;
    const chunks = fileSize / CHUNK;
    const fill = chunkFiller(base, seed);
    const expected = createHash('sha256');
    {
      const c = new Uint8Array(CHUNK);
      for (let i = 0; i < chunks; i++) {
        fill(i, c);
        expected.update(c);
      }
    }
    const forever = () => performance.now() + 600_000;
    await guest.run({ op: 'write', size: CHUNK, depth: maxDepth, count: chunks, deadline: forever(), fill });
    const onDisk = fileHash(path);
    const readBack = orderedHash();
    await guest.run({
      op: 'read',
      size: CHUNK,
      depth: maxDepth,
      count: chunks,
      deadline: forever(),
      take: (i, d) => readBack.add(i, d),
    });
    const want = expected.digest('hex');
    const got = readBack.digest();
    if (guest.errors.length > 0) throw new Error(`the device reported: ${guest.errors.join('; ')}`);
    if (onDisk !== want || got !== want || readBack.count !== chunks)
      throw new Error(
        `CHECKSUM MISMATCH: expected ${want}, the file holds ${onDisk}, the device read ${got} (${readBack.count}/${chunks} chunks)`,
      );

    // The table
    const rows = [
      [
        'op',
        'size',
        'QD',
        'kvm-rx MB/s',
        'host MB/s',
        'kvm-rx / host',
        'kvm-rx p50 / p99 µs',
        'host p50 / p99 µs',
        'CPU µs/req kvm-rx / host',
        'kvm-rx driver µs/req',
        'kicks, irqs / req',
      ],
    ];
    for (const r of results) {
      const kl = r.kvm.flatMap((x) => x.latencies);
      const hl = r.host.flatMap((x) => x.latencies);
      const reqs = r.kvm.reduce((n, x) => n + x.requests, 0);
      rows.push([
        r.op,
        sizeName(r.size),
        String(r.depth),
        fmt(mbps(r.kvm)),
        fmt(mbps(r.host)),
        fmt(mbps(r.kvm) / mbps(r.host), 2),
        `${fmt(median(kl))} / ${fmt(quantile(kl, 0.99))}`,
        `${fmt(median(hl))} / ${fmt(quantile(hl, 0.99))}`,
        `${fmt(median(r.kvm.map((x) => x.cpuPerRequest)))} / ${fmt(median(r.host.map((x) => x.cpuPerRequest)))}`,
        fmt(median(r.kvm.map((x) => x.driverPerRequest))),
        `${fmt(r.kvm.reduce((n, x) => n + x.notifies, 0) / reqs, 2)}, ${fmt(r.kvm.reduce((n, x) => n + x.interrupts, 0) / reqs, 2)}`,
      ]);
    }
    const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
    const line = (row: string[]) => '| ' + row.map((cell, i) => cell.padEnd(widths[i])).join(' | ') + ' |';
    console.log(
      `medians of ${o.reps} repetitions (each: kvm-rx and the host on the same file, alternating which goes first), ` +
        `after one warm-up run each; at most ${o.runMiB} MiB, ${o.maxRequests} requests or ${o.seconds} s per run; ` +
        `latency percentiles over every request of the repetitions; MB = 10^6 bytes\n`,
    );
    console.log([line(rows[0]), line(widths.map((w) => '-'.repeat(w))), ...rows.slice(1).map(line)].join('\n'));
    console.log(
      `\nchecked: ${o.fileMiB} MiB written then read through the device, sha256 ${want.slice(0, 16)}… ` +
        `= the file's = what the device read`,
    );
    console.log(
      `load average after ${loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}`,
    );
    return 0;
  } finally {
    await host?.close();
    guest?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

runMain(main);
