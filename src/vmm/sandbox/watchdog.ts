/**
 * The time limit of sandbox calls: a watchdog thread that kicks the calling thread out of
 * `KVM_RUN` when a call runs past its deadline. One per thread that runs sandboxes, started on
 * first use and unreferenced (it does not keep the process alive).
 *
 * The calling thread arms it with a deadline before it enters the guest and disarms it after; the
 * watchdog sleeps in `Atomics.wait` until the deadline (no polling, and no wake-up per call while
 * calls come back to back), then sends the kick signal (the runtime's: an empty handler without
 * `SA_RESTART`) to the thread, so that `KVM_RUN` returns EINTR. It sends the signal only, without
 * writing `immediate_exit` (the kvm_run mapping belongs to the calling thread and may be unmapped
 * at any time), and repeats it every 2 ms while the same call is still armed past its deadline:
 * a signal that lands just before the thread enters `KVM_RUN` is followed by another one, and the
 * calling thread checks the deadline itself before every entry.
 *
 * @module
 */
import { Worker } from 'node:worker_threads';
import { loadAddon, packageRoot } from '../../backend/native';

const STATE = 0; // Int32 index: 0 idle, 1 armed
const GEN = 1; // Int32 index: bumped on every arm and disarm
const SLEEPING = 2; // Int32 index: 1 while the watchdog waits with no deadline
const DEADLINE = 2; // BigInt64 index: ns (process.hrtime.bigint clock)
const THREAD = 3; // BigInt64 index: pthread_t of the armed thread
const WAKE_AT = 4; // BigInt64 index: the deadline the watchdog sleeps towards (0: none)

const WORKER_SOURCE = `
'use strict';
const { workerData } = require('node:worker_threads');
const addon = require(workerData.nodeGypBuild)(workerData.root);
const i32 = new Int32Array(workerData.sab, 0, 4);
const i64 = new BigInt64Array(workerData.sab);
for (;;) {
  const gen = Atomics.load(i32, ${GEN});
  if (Atomics.load(i32, ${STATE}) === 0) {
    Atomics.store(i32, ${SLEEPING}, 1);
    i64[${WAKE_AT}] = 0n;
    if (Atomics.load(i32, ${STATE}) === 0 && Atomics.load(i32, ${GEN}) === gen) Atomics.wait(i32, ${GEN}, gen);
    Atomics.store(i32, ${SLEEPING}, 0);
    continue;
  }
  const deadline = i64[${DEADLINE}];
  const now = process.hrtime.bigint();
  if (now < deadline) {
    i64[${WAKE_AT}] = deadline;
    Atomics.wait(i32, ${GEN}, gen, Number(deadline - now) / 1e6 + 0.05);
    continue;
  }
  if (Atomics.load(i32, ${GEN}) !== gen || Atomics.load(i32, ${STATE}) !== 1) continue;
  try { addon.kick(i64[${THREAD}], 0n); } catch {}
  i64[${WAKE_AT}] = now + 2000000n;
  Atomics.wait(i32, ${GEN}, gen, 2);
}
`;

/** @internal A per-thread watchdog (see the module comment). */
export class Watchdog {
  static #instance: Watchdog | undefined;
  readonly #i32: Int32Array;
  readonly #i64: BigInt64Array;
  readonly #worker: Worker;

  private constructor() {
    const sab = new SharedArrayBuffer(64);
    this.#i32 = new Int32Array(sab, 0, 4);
    this.#i64 = new BigInt64Array(sab);
    const addon = loadAddon();
    addon.kickSignal(); // the empty handler, installed once per process
    this.#i64[THREAD] = addon.threadSelf();
    const nodeGypBuild = require.resolve('node-gyp-build');
    this.#worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { sab, nodeGypBuild, root: packageRoot() },
      stdout: false,
      stderr: false,
    });
    this.#worker.unref();
    this.#worker.on('error', () => {
      Watchdog.#instance = undefined;
    });
  }

  /** The calling thread's watchdog (started on first use). */
  static get(): Watchdog {
    Watchdog.#instance ??= new Watchdog();
    return Watchdog.#instance;
  }

  /** Arms the time limit: kick this thread from `deadline` (ns of `process.hrtime.bigint()`) on. */
  arm(deadline: bigint): void {
    this.#i64[DEADLINE] = deadline;
    Atomics.add(this.#i32, GEN, 1);
    Atomics.store(this.#i32, STATE, 1);
    const wakeAt = this.#i64[WAKE_AT];
    if (Atomics.load(this.#i32, SLEEPING) === 1 || wakeAt === 0n || deadline < wakeAt) Atomics.notify(this.#i32, GEN);
  }

  /** Disarms it (no wake-up of the watchdog). */
  disarm(): void {
    Atomics.store(this.#i32, STATE, 0);
    Atomics.add(this.#i32, GEN, 1);
  }
}
