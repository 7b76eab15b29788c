/**
 * The protocol between a vCPU's worker thread and the main thread: the SharedArrayBuffer layout,
 * the messages on the run's MessagePort, the task a worker runs and the outcome it reports.
 *
 * One SharedArrayBuffer per running vCPU holds:
 * - a control block of Int32 words ({@link ControlWord}) and the worker's pthread id (for kicks);
 * - a ring of fixed-size records ({@link RecordField}): posted writes (IoOut/MmioWrite the vCPU
 *   did not wait for) and, while someone watches `monitor$`, a summary of every exit;
 * - a mailbox laid out like the start of `struct kvm_run` plus its PIO data page, holding the exit
 *   the vCPU is stopped at while the main thread answers it. `decodeExit()` reads it exactly as it
 *   reads kvm_run, so main-thread handlers get the same `VcpuExit` objects, with views into the
 *   mailbox; the worker copies the answer back into kvm_run before it resumes the vCPU.
 *
 * The native fast path (`runFast`) writes posted-IoOut records into the same ring from C; it takes
 * the layout as an array ({@link runFastLayout}) whose slot order spec/unit/protocol.spec.ts
 * asserts against the addon's own list.
 *
 * Nothing ever spins: both sides sleep in `Atomics.wait` (worker) / `Atomics.waitAsync` (main).
 *
 * @module
 */

import type { MessagePort } from 'node:worker_threads';
import type { RecordedExit } from './recording';
import { VCPU_EXIT_KINDS, type DebugExit, type IoOutExit, type MmioWriteExit } from '../wrappers/vcpu-exit';
import type { SerializedError } from './errors';

/** Int32 word indices of the control block. */
export const ControlWord = {
  /** {@link RunState}. */
  state: 0,
  /** 1 once a stop was requested. */
  stopRequested: 1,
  /** Incremented (and notified) by the worker on every event the main thread must look at. */
  doorbell: 2,
  /** {@link MailboxState}. */
  mailbox: 3,
  /** Records written to the ring (worker) / read from it (main). Monotonic counters. */
  ringWrite: 4,
  ringRead: 5,
  /** How many `monitor$` subscribers the main thread has (the worker records every exit while > 0). */
  monitorSubscribers: 6,
  /** Exits the worker has seen. */
  exitCount: 7,
  /** Set by the main thread when it sent a message (`run.send`, `run.call`): the worker takes it. */
  wakeRequested: 8,
  /** Set by the worker once it closed the task's duplicated fds (else the pool closes them). */
  fdsClosed: 9,
  /**
   * How many `debug$` subscribers the main thread has: while > 0 the worker parks the vCPU at a
   * `Debug` exit (as if paused) and posts it to the main thread instead of giving it to the pipeline.
   */
  debugSubscribers: 10,
} as const;

/** {@link ControlWord.state}: where the worker is. */
export const RunState = { starting: 0, running: 1, ended: 2 } as const;

/** {@link ControlWord.mailbox}: whether an exit waits there for the main thread's answer. */
export const MailboxState = { empty: 0, posted: 1, answered: 2 } as const;

/** Bytes of the control block. */
export const CONTROL_BYTES = 64;
/** BigInt64 index (in a BigInt64Array over the SAB) of the worker's pthread id: byte 56. */
export const THREAD_ID_SLOT = 7;
/**
 * Float64 index (in a Float64Array over the control block) of the time the worker entered
 * {@link RunState.running}, `performance.timeOrigin + performance.now()` in ms: byte 48.
 */
export const RUNNING_SINCE_SLOT = 6;
/** Records in the ring. */
export const RING_RECORDS = 1024;
/** Bytes of one ring record. */
export const RECORD_BYTES = 64;
/** The most PIO/MMIO data bytes a record carries. */
export const RECORD_DATA_BYTES = 40;
/** Byte offset of the ring in the SAB. */
export const RING_OFFSET = CONTROL_BYTES;
/** Byte offset of the mailbox in the SAB. */
export const MAILBOX_OFFSET = RING_OFFSET + RING_RECORDS * RECORD_BYTES;
/** The mailbox mirrors kvm_run's first page and the PIO data page (io.data_offset is 4096 on x86). */
export const MAILBOX_BYTES = 8192;
/** Bytes of a run's SharedArrayBuffer. */
export const SAB_BYTES = MAILBOX_OFFSET + MAILBOX_BYTES;

/** What a ring record stands for ({@link RecordField.kind}). */
export const RecordKind = {
  /** An IoOut the vCPU did not wait for (posted). */
  postedIo: 1,
  /** An MmioWrite the vCPU did not wait for (posted). */
  postedMmio: 2,
  /** A monitoring summary of an exit. */
  monitor: 3,
} as const;

/** Where an exit was handled ({@link RecordField.handledBy}), as `monitor$` reports it. */
export const HandledBy = { worker: 0, posted: 1, main: 2, unhandled: 3 } as const;

/** The names of {@link HandledBy}'s values, by value. */
export const HANDLED_BY_NAMES = ['worker', 'posted', 'main', 'unhandled'] as const;

/**
 * Byte offsets in one ring record (64 bytes, little-endian): u8 kind ({@link RecordKind}), u8
 * handledBy ({@link HandledBy}), u8 access size, u8 data length, u32 exit kind (index in
 * `VCPU_EXIT_KINDS`), u16 port, u16 reserved, u32 count, u64 address, then up to 40 data bytes.
 */
export const RecordField = {
  kind: 0,
  handledBy: 1,
  size: 2,
  dataLength: 3,
  exitKind: 4,
  port: 8,
  count: 12,
  address: 16,
  data: 24,
} as const;

/**
 * The `layout` array `runFast` reads, slot by slot, in the order the addon's `runFastLayout()`
 * names them. Built once per worker.
 */
export function runFastLayout(): Int32Array {
  const slots: Record<string, number> = {
    records: RING_RECORDS,
    recordBytes: RECORD_BYTES,
    ringWrite: ControlWord.ringWrite,
    ringRead: ControlWord.ringRead,
    exitCount: ControlWord.exitCount,
    kind: RecordField.kind,
    handledBy: RecordField.handledBy,
    size: RecordField.size,
    dataLength: RecordField.dataLength,
    exitKind: RecordField.exitKind,
    port: RecordField.port,
    count: RecordField.count,
    data: RecordField.data,
    dataMax: RECORD_DATA_BYTES,
    postedIo: RecordKind.postedIo,
    handledByPosted: HandledBy.posted,
    ioOutKindIndex: VCPU_EXIT_KINDS.indexOf('IoOut'),
  };
  return Int32Array.from(RUN_FAST_LAYOUT_SLOTS, (name) => slots[name]);
}

/** The slot names of {@link runFastLayout}, in order (asserted against the addon). */
export const RUN_FAST_LAYOUT_SLOTS = [
  'records',
  'recordBytes',
  'ringWrite',
  'ringRead',
  'exitCount',
  'kind',
  'handledBy',
  'size',
  'dataLength',
  'exitKind',
  'port',
  'count',
  'data',
  'dataMax',
  'postedIo',
  'handledByPosted',
  'ioOutKindIndex',
] as const;

/** A port or MMIO range whose writes need no answer, so the vCPU resumes at once. */
export type PostedRange = { port: number; to?: number } | { mmio: bigint; size: number | bigint };

/** What a worker task needs to run one vCPU. Structured-cloneable. */
export interface VcpuTask {
  sab: SharedArrayBuffer;
  /** The worker's own duplicate of the VM's fd: it closes it when the run ends. */
  vmFd: number;
  /** The worker's own duplicate of the vCPU's fd: it closes it when the run ends. */
  vcpuFd: number;
  vcpuId: number;
  runSize: number;
  slots: Array<{ slot: number; guestPhysAddr: bigint; hostAddress: bigint; size: number }>;
  /** Absolute path of the module that exports the pipeline, or undefined. */
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
  /** The worker's end of the run's MessagePort ({@link MainToWorker}, {@link WorkerToMain}). */
  port: MessagePort;
  /** Pin the worker thread to this CPU while the task runs (benchmarks); undefined: no pinning. */
  pinCpu?: number;
  /** Park before the first `KVM_RUN`, as if paused with id 1, until `resume`. */
  paused?: boolean;
}

/** How a run ended, as the worker reports it. */
export interface TaskOutcome {
  reason: 'completed' | 'stopped' | 'error';
  exits: number;
  /** The kind of the last exit. */
  lastExit?: string;
  error?: SerializedError;
  /** Every exit and its answer, when the run was started with `record: true`. */
  recording?: RecordedExit[];
}

/** Messages from the main thread to the worker, on the run's port. */
export type MainToWorker =
  | { type: 'stop' }
  | { type: 'input'; channel: string; data: unknown }
  | { type: 'call'; id: number; method: string; args: unknown[] }
  /** Park between exits (out of `KVM_RUN`) until `resume`; the worker answers `paused`. */
  /** `id`: echoed in `paused`, so an answer to an earlier pause (resumed since) is not taken for this one. */
  | { type: 'pause'; id: number }
  | { type: 'resume' };

/** Messages from the worker to the main thread, on the run's port. */
export type WorkerToMain =
  | { type: 'emit'; channel: string; data: unknown }
  | { type: 'result'; id: number; value?: unknown; error?: SerializedError }
  | { type: 'end' }
  /** Parked between exits after a `pause`: the vCPU is out of `KVM_RUN` until `resume`. */
  | { type: 'paused'; id: number }
  /** Parked at a `Debug` exit (while `debug$` has subscribers): out of `KVM_RUN` until `resume`. */
  | { type: 'debug'; exit: DebugExit };

/**
 * The exit a posted-write record stands for (an `IoOut` or `MmioWrite` with a copy of the data),
 * or `undefined` for any other record. `view` and `bytes` cover the ring; `at` is the record.
 */
export function postedExit(view: DataView, bytes: Uint8Array, at: number): IoOutExit | MmioWriteExit | undefined {
  const kind = view.getUint8(at + RecordField.kind);
  if (kind !== RecordKind.postedIo && kind !== RecordKind.postedMmio) return undefined;
  const data = bytes.slice(at + RecordField.data, at + RecordField.data + view.getUint8(at + RecordField.dataLength));
  if (kind === RecordKind.postedMmio)
    return { kind: 'MmioWrite', addr: view.getBigUint64(at + RecordField.address, true), data };
  return {
    kind: 'IoOut',
    port: view.getUint16(at + RecordField.port, true),
    size: view.getUint8(at + RecordField.size),
    count: view.getUint32(at + RecordField.count, true),
    data,
  };
}
