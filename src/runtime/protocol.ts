/**
 * The shared-memory protocol between a vCPU's worker thread and the main thread.
 *
 * One SharedArrayBuffer per running vCPU holds:
 * - a control block of Int32 words (state, stop request, doorbell, mailbox, ring indices) and the
 *   worker's thread id (for the kick);
 * - a ring of fixed-size records: posted writes (IoOut/MmioWrite the vCPU did not wait for) and,
 *   when someone watches `monitor$`, a summary of every exit;
 * - a mailbox laid out like the start of `struct kvm_run` plus its PIO data page, holding the exit
 *   the vCPU is stopped at while the main thread answers it. `decodeExit()` reads it exactly as it
 *   reads kvm_run, so main-thread handlers get the same `VcpuExit` objects, with views into the
 *   mailbox; the worker copies the answer back into kvm_run before it resumes the vCPU.
 *
 * Nothing ever spins: both sides sleep in `Atomics.wait` (worker) / `Atomics.waitAsync` (main).
 *
 * @module
 */

import type { MessagePort } from 'node:worker_threads';
import type { RecordedExit } from './recording';
import type { IoOutExit, MmioWriteExit } from '../wrappers/vcpu-exit';

/** Int32 word indices of the control block. */
export const W = {
  /** {@link State}. */
  state: 0,
  /** 1 once a stop was requested. */
  stop: 1,
  /** Incremented (and notified) by the worker on every event the main thread must look at. */
  doorbell: 2,
  /** {@link Mailbox}. */
  mailbox: 3,
  /** Records written to the ring (worker) / read from it (main). Monotonic counters. */
  ringWrite: 4,
  ringRead: 5,
  /** 1 while the main thread wants a record of every exit (`monitor$` has subscribers). */
  monitor: 6,
  /** Number of exits the worker has seen. */
  exits: 7,
  /** Set by the main thread when it sent input (`run.send`): the worker yields to its event loop. */
  wake: 8,
} as const;

export const State = { starting: 0, running: 1, ended: 2 } as const;
export const Mailbox = { empty: 0, posted: 1, answered: 2 } as const;

/** Byte layout of the SharedArrayBuffer. */
export const CONTROL_BYTES = 64;
/** BigInt64 index (in a BigInt64Array over the SAB) of the worker's pthread id. */
export const THREAD_SLOT = 5; // byte 40
export const RING_RECORDS = 1024;
export const RECORD_BYTES = 64;
export const RECORD_DATA_BYTES = 40;
export const RING_OFFSET = CONTROL_BYTES;
export const MAILBOX_OFFSET = RING_OFFSET + RING_RECORDS * RECORD_BYTES;
/** The mailbox mirrors kvm_run's first page and the PIO data page (io.data_offset is 4096 on x86). */
export const MAILBOX_BYTES = 8192;
export const SAB_BYTES = MAILBOX_OFFSET + MAILBOX_BYTES;

/** Record kinds in the ring. */
export const Rec = {
  /** An IoOut the vCPU did not wait for (posted). */
  postedIo: 1,
  /** An MmioWrite the vCPU did not wait for (posted). */
  postedMmio: 2,
  /** A monitoring summary of an exit. */
  monitor: 3,
} as const;

/** Where an exit was handled, in monitoring records. */
export const Where = { worker: 0, posted: 1, main: 2, unhandled: 3 } as const;

/**
 * One ring record (64 bytes, little-endian):
 * 0 u8 record kind, 1 u8 where, 2 u8 size, 3 u8 data length, 4 u32 exit kind (index in VCPU_EXIT_KINDS),
 * 8 u16 port, 10 u16 reserved, 12 u32 count, 16 u64 address, 24 data[40].
 */
export const R = { kind: 0, where: 1, size: 2, len: 3, reason: 4, port: 8, count: 12, addr: 16, data: 24 } as const;

/** A port or MMIO range whose writes need no answer, so the vCPU resumes at once. */
export type PostedRange = { port: number; to?: number } | { mmio: bigint; size: number | bigint };

/** What a worker task needs to run one vCPU. Structured-cloneable. */
export interface VcpuTask {
  sab: SharedArrayBuffer;
  vmFd: number;
  vcpuFd: number;
  vcpuId: number;
  runSize: number;
  slots: Array<{ slot: number; guestPhysAddr: bigint; hostAddress: bigint; size: number }>;
  /** Module that exports the pipeline (default export or `pipeline`), or undefined. */
  pipeline?: string;
  /** Export name to use instead of the default. */
  pipelineExport?: string;
  /** Given to the pipeline as `ctx.options`. */
  options?: unknown;
  posted: PostedRange[];
  /** Drain the kernel's coalesced MMIO/PIO ring into the pipeline before each exit. */
  coalescedRing?: boolean;
  /** Who handles posted writes: the main thread (default) or this worker's pipeline, in batches. */
  postedTo?: 'main' | 'worker';
  /** What to do with exits the worker pipeline does not handle. */
  unhandled: 'main' | 'error' | 'ignore';
  /** Record every exit and its answer (sent to the main thread in batches). */
  record?: boolean;
  /** MessagePort for `ctx.emit` and control messages. */
  port: MessagePort;
  /** Pin the worker thread to this CPU while the task runs (benchmarks); undefined: no pinning. */
  pinCpu?: number;
}

/** How a run ended, as the worker reports it. */
export interface TaskOutcome {
  reason: 'completed' | 'stopped' | 'error';
  exits: number;
  lastExit?: string;
  error?: { name: string; message: string; code?: string; stack?: string; props?: Record<string, unknown> };
  /** Every exit and its answer, when the run was started with `record: true`. */
  recording?: RecordedExit[];
}

/**
 * The exit a posted-write record stands for (an `IoOut` or `MmioWrite` with a copy of the data),
 * or `undefined` for any other record. `view` and `bytes` cover the ring; `at` is the record.
 */
export function postedExit(view: DataView, bytes: Uint8Array, at: number): IoOutExit | MmioWriteExit | undefined {
  const kind = view.getUint8(at + R.kind);
  if (kind !== Rec.postedIo && kind !== Rec.postedMmio) return undefined;
  const data = bytes.slice(at + R.data, at + R.data + view.getUint8(at + R.len));
  if (kind === Rec.postedMmio) return { kind: 'MmioWrite', addr: view.getBigUint64(at + R.addr, true), data };
  return {
    kind: 'IoOut',
    port: view.getUint16(at + R.port, true),
    size: view.getUint8(at + R.size),
    count: view.getUint32(at + R.count, true),
    data,
  };
}
