/**
 * The device side of a virtio split virtqueue (virtio 1.2 §2.7): descriptor chains taken from the
 * driver's available ring, buffers given back on the used ring, and notification suppression with
 * or without `VIRTIO_F_EVENT_IDX`.
 *
 * A pure model over guest memory: no KVM, no threads, no file descriptors. Everything it reads
 * from the guest is checked against the rules of the specification and against guest RAM; a
 * broken rule throws a {@link VirtqueueError} naming the rule and the index, and nothing the guest
 * writes can make it touch memory outside the used ring and the device-writable buffers.
 *
 * The guest (another CPU) writes the rings while the device reads them. The queue reads
 * `avail.idx` with `Atomics.load` before the ring entries and descriptors it covers, reads each
 * descriptor once (a chain holds copies, so a guest rewriting the table afterwards changes
 * nothing), writes a used element before publishing `used.idx` with `Atomics.store`, and reads
 * `used_event` or `avail.flags` after that store (a sequentially consistent pair: the full barrier
 * the specification asks for).
 *
 * kvm-rx runs on x64 and arm64 (package.json `cpu`), both little-endian, so typed-array views
 * read the rings' little-endian fields as they are.
 *
 * @module
 */
import { KvmRangeError } from '../../abi/errors';
import { checkBool, checkBytes, checkInt, checkObject, checkU32, checkU64, invalidType } from '../../abi/validate';
import { GuestMemoryMap } from '../../wrappers/guest-memory';
import { VirtqueueError } from './errors';
import type { VirtqueueErrorCode, VirtqueueRule } from './errors';

/** Descriptor flags (`virtq_desc.flags`). */
export const VIRTQ_DESC_F = {
  /** The chain continues at `next`. */
  NEXT: 1,
  /** The buffer is device-writable (otherwise device-readable). */
  WRITE: 2,
  /** The buffer holds a table of descriptors (`VIRTIO_F_INDIRECT_DESC`; refused here). */
  INDIRECT: 4,
} as const;

/** `avail.flags` bit: the driver asks for no interrupt (ignored with EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** `used.flags` bit: the device asks for no notification (not used with EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;
/** The largest split queue size (2^15). */
export const VIRTQ_MAX_SIZE = 32768;

const U64_END = 1n << 64n;
const U32_MAX = 0xffff_ffff;

/**
 * The byte sizes of a split queue's three parts for a queue of `size` entries: the descriptor
 * table (16·size), the available ring (6 + 2·size, `used_event` included) and the used ring
 * (6 + 8·size, `avail_event` included).
 *
 * @param size - the queue size (not checked)
 * @example
 * ```ts
 * splitQueueSizes(256); // { descTable: 4096, availRing: 518, usedRing: 2054 }
 * ```
 */
export function splitQueueSizes(size: number): { descTable: number; availRing: number; usedRing: number } {
  checkInt('size', size, 1, VIRTQ_MAX_SIZE);
  return { descTable: 16 * size, availRing: 6 + 2 * size, usedRing: 6 + 8 * size };
}

/** Where the driver put a split queue (the transport's QueueNum, QueueDesc, QueueDriver, QueueDevice). */
export interface SplitQueueConfig {
  /** Number of entries: a power of two in 1..32768. */
  size: number;
  /** Guest-physical address of the descriptor table (16-byte aligned). */
  descTable: bigint;
  /** Guest-physical address of the available ring, the driver area (2-byte aligned). */
  availRing: bigint;
  /** Guest-physical address of the used ring, the device area (4-byte aligned). */
  usedRing: bigint;
  /** Whether `VIRTIO_F_EVENT_IDX` (bit 29) was negotiated. */
  eventIdx: boolean;
}

/** Options of a {@link SplitQueue}. */
export interface SplitQueueOptions {
  /**
   * The longest chain the device accepts, in descriptors (1..size; default and upper bound: the
   * queue size, which no loop-free chain can exceed). A longer chain throws `chain-length`.
   */
  maxChainLength?: number;
}

/** One buffer of a chain: a guest-physical address and a length in bytes. */
export interface Descriptor {
  readonly addr: bigint;
  readonly len: number;
}

/**
 * A descriptor chain taken from the available ring: its head (what {@link SplitQueue.addUsed}
 * gives back), its device-readable buffers, then its device-writable ones, each read once from
 * guest memory and checked to lie in guest RAM.
 *
 * The data is presented as two byte streams, whatever the arrangement of descriptors (the device
 * "MUST NOT make assumptions about the particular arrangement of descriptors", spec §2.7.4):
 * {@link read} over the readable part, {@link write} into the writable part.
 *
 * @example
 * ```ts
 * // @ts-setup: declare const queue: SplitQueue;
 * // @ts-setup: declare function answer(request: Uint8Array): Uint8Array;
 * const chain = queue.pop();
 * if (chain) {
 *   const reply = answer(chain.readAll(4096));
 *   chain.write(0, reply);
 *   queue.addUsed(chain.head, reply.length);
 * }
 * ```
 */
export class DescriptorChain {
  /** The index of the chain's first descriptor, which identifies it on the used ring. */
  readonly head: number;
  /**
   * The device-readable buffers, in order.
   * @example
   * ```ts
   * // @ts-setup: declare const chain: DescriptorChain;
   * for (const d of chain.readable) console.log(d.addr.toString(16), d.len);
   * ```
   */
  readonly readable: readonly Descriptor[];
  /**
   * The device-writable buffers, in order.
   * @example
   * ```ts
   * // @ts-setup: declare const chain: DescriptorChain;
   * const room = chain.writable.reduce((n, d) => n + d.len, 0); // === chain.writableLength
   * ```
   */
  readonly writable: readonly Descriptor[];
  /**
   * Total bytes of the readable buffers.
   * @example
   * ```ts
   * // @ts-setup: declare const chain: DescriptorChain;
   * // @ts-setup: declare function failRequest(chain: DescriptorChain): void;
   * if (chain.readableLength < 16) failRequest(chain); // virtio-blk: no room for the header
   * ```
   */
  readonly readableLength: number;
  /**
   * Total bytes of the writable buffers (at most 2^32 − 1, with the readable part).
   * @example
   * ```ts
   * // @ts-setup: declare const chain: DescriptorChain;
   * const status = chain.writableLength - 1; // virtio-blk: the status byte is the last one
   * ```
   */
  readonly writableLength: number;
  readonly #memory: GuestMemoryMap;

  /**
   * @internal Built by {@link SplitQueue.pop}, which has checked every descriptor.
   * @example
   * ```ts
   * const chain = new DescriptorChain(vm.guestMemory, 0, [{ addr: 0x1000n, len: 16 }], []);
   * ```
   */
  constructor(memory: GuestMemoryMap, head: number, readable: Descriptor[], writable: Descriptor[]) {
    if (!(memory instanceof GuestMemoryMap)) invalidType('memory', 'a GuestMemoryMap', memory);
    checkInt('head', head, 0, VIRTQ_MAX_SIZE - 1);
    for (const [name, list] of [
      ['readable', readable],
      ['writable', writable],
    ] as const) {
      if (!Array.isArray(list)) invalidType(name, 'an array of descriptors', list);
      list.forEach((d: Descriptor, i) => {
        checkObject(`${name}[${i}]`, d);
        checkU64(`${name}[${i}].addr`, d.addr);
        checkU32(`${name}[${i}].len`, d.len);
      });
    }
    this.#memory = memory;
    this.head = head;
    this.readable = Object.freeze(readable);
    this.writable = Object.freeze(writable);
    this.readableLength = readable.reduce((n, d) => n + d.len, 0);
    this.writableLength = writable.reduce((n, d) => n + d.len, 0);
  }

  /**
   * Copies `length` bytes at `offset` of the readable part, read as one byte stream across its
   * descriptors.
   *
   * @throws `RangeError` `ERR_OUT_OF_RANGE` when `[offset, offset + length)` is not inside the
   *   readable part
   * @throws from guest memory: `RangeError` `ERR_OUT_OF_RANGE` when that RAM left the map since
   *   {@link SplitQueue.pop}, `ERR_KVM_CLOSED` when it was closed
   * @example
   * ```ts
   * // @ts-setup: declare const chain: DescriptorChain;
   * const header = chain.read(0, 16); // virtio-blk: type, reserved, sector
   * ```
   */
  read(offset: number, length: number): Uint8Array {
    checkInt('offset', offset, 0, this.readableLength);
    checkInt('length', length, 0, this.readableLength);
    if (offset + length > this.readableLength) {
      throw new KvmRangeError(
        'ERR_OUT_OF_RANGE',
        `[${offset}, ${offset + length}) is outside the chain's ${this.readableLength} readable bytes`,
      );
    }
    const out = new Uint8Array(length);
    let skip = offset;
    let done = 0;
    for (const d of this.readable) {
      if (done === length) break;
      if (skip >= d.len) {
        skip -= d.len;
        continue;
      }
      const n = Math.min(d.len - skip, length - done);
      out.set(this.#memory.read(d.addr + BigInt(skip), n), done);
      done += n;
      skip = 0;
    }
    return out;
  }

  /**
   * The whole readable part as one copy.
   *
   * @param maxLength - the most bytes the device accepts (default: no limit beyond the chain's)
   * @throws `RangeError` `ERR_OUT_OF_RANGE` when the readable part holds more than `maxLength`
   *   bytes (nothing is read: the device fails the request)
   * @example
   * ```ts
   * // @ts-setup: declare const chain: DescriptorChain;
   * const packet = chain.readAll(65550); // virtio-net TX: header and frame
   * ```
   */
  readAll(maxLength?: number): Uint8Array {
    if (maxLength !== undefined) {
      checkInt('maxLength', maxLength, 0, Number.MAX_SAFE_INTEGER);
      if (this.readableLength > maxLength) {
        throw new KvmRangeError(
          'ERR_OUT_OF_RANGE',
          `the chain's readable part holds ${this.readableLength} bytes, more than the ${maxLength} accepted`,
        );
      }
    }
    return this.read(0, this.readableLength);
  }

  /**
   * Writes `data` at `offset` of the writable part, as one byte stream across its descriptors.
   * Nothing is written unless all of it fits.
   *
   * @throws `RangeError` `ERR_OUT_OF_RANGE` when `[offset, offset + data.length)` is not inside the
   *   writable part
   * @throws from guest memory: `RangeError` `ERR_OUT_OF_RANGE` when that RAM left the map since
   *   {@link SplitQueue.pop}, `ERR_KVM_CLOSED` when it was closed
   * @example
   * ```ts
   * // @ts-setup: declare const chain: DescriptorChain;
   * chain.write(chain.writableLength - 1, Uint8Array.of(0)); // virtio-blk: VIRTIO_BLK_S_OK
   * ```
   */
  write(offset: number, data: Uint8Array): void {
    checkBytes('data', data);
    checkInt('offset', offset, 0, this.writableLength);
    if (offset + data.length > this.writableLength) {
      throw new KvmRangeError(
        'ERR_OUT_OF_RANGE',
        `[${offset}, ${offset + data.length}) is outside the chain's ${this.writableLength} writable bytes`,
      );
    }
    let skip = offset;
    let done = 0;
    for (const d of this.writable) {
      if (done === data.length) break;
      if (skip >= d.len) {
        skip -= d.len;
        continue;
      }
      const n = Math.min(d.len - skip, data.length - done);
      this.#memory.write(d.addr + BigInt(skip), data.subarray(done, done + n));
      done += n;
      skip = 0;
    }
  }
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}

/** A view's place: the mapping's buffer and the absolute byte offset of the part in it. */
interface Place {
  buffer: ArrayBufferLike;
  byteOffset: number;
}

function configError(rule: VirtqueueRule, message: string, index?: number): VirtqueueError {
  return new VirtqueueError('ERR_VIRTIO_QUEUE_CONFIG', rule, message, index);
}

/**
 * Finds `[gpa, gpa + length)` inside one region of `memory`, aligned to `align` in the guest and in
 * the host view. With `view` false it only checks, without making the mapping's view (a whole-RAM
 * `ArrayBuffer` costs a full V8 garbage collection the first time for gigabytes of RAM): a
 * mapping's view starts at the mapping, which is page-aligned, so the host offset is `hit.offset`.
 */
function place(memory: GuestMemoryMap, what: string, gpa: bigint, length: number, align: number, view = true): Place {
  if (gpa % BigInt(align) !== 0n) {
    throw configError('alignment', `the ${what} at ${hex(gpa)} is not ${align}-byte aligned`);
  }
  const end = gpa + BigInt(length);
  if (end > U64_END) {
    throw configError('ring-memory', `the ${what} at ${hex(gpa)} (${length} bytes) wraps past 2^64`);
  }
  const hit = memory.find(gpa);
  if (hit === undefined) {
    throw configError('ring-memory', `the ${what} at ${hex(gpa)} is not in guest RAM`);
  }
  const left = hit.region.offset + hit.region.size - hit.offset;
  if (length > left) {
    const regionEnd = hit.region.guestPhysAddr + BigInt(hit.region.size);
    throw configError(
      'ring-memory',
      `the ${what} [${hex(gpa)}, ${hex(end)}) crosses the end of the guest RAM region ending at ${hex(regionEnd)}`,
    );
  }
  let bytes: Uint8Array | undefined;
  try {
    if (view) bytes = hit.region.memory.bytes;
    else if (hit.region.memory.closed) throw new Error('closed');
  } catch {
    throw configError('memory-closed', `the guest memory holding the ${what} at ${hex(gpa)} is closed`);
  }
  const byteOffset = (bytes?.byteOffset ?? 0) + hit.offset;
  if (byteOffset % align !== 0) {
    throw configError(
      'alignment',
      `the ${what} at ${hex(gpa)} is at host offset ${byteOffset} of its mapping, not ${align}-byte aligned`,
    );
  }
  return { buffer: bytes?.buffer ?? EMPTY_BUFFER, byteOffset };
}

const EMPTY_BUFFER = new ArrayBuffer(0);

/** Validates a queue layout (the {@link SplitQueue} constructor's checks) and places its three parts. */
function layout(memory: GuestMemoryMap, config: SplitQueueConfig, options: SplitQueueOptions, view: boolean) {
  if (typeof memory !== 'object' || memory === null || typeof (memory as Partial<GuestMemoryMap>).find !== 'function') {
    invalidType('memory', 'a GuestMemoryMap', memory);
  }
  checkObject('config', config);
  checkObject('options', options);
  const size = config.size;
  if (typeof size !== 'number') invalidType('config.size', 'of type number', size);
  if (!Number.isInteger(size) || size < 1 || size > VIRTQ_MAX_SIZE || (size & (size - 1)) !== 0) {
    throw configError('queue-size', `queue size ${size} is not a power of two in 1..${VIRTQ_MAX_SIZE}`, size);
  }
  const descTable = checkU64('config.descTable', config.descTable);
  const availRing = checkU64('config.availRing', config.availRing);
  const usedRing = checkU64('config.usedRing', config.usedRing);
  const eventIdx = checkBool('config.eventIdx', config.eventIdx);
  const maxChainLength =
    options.maxChainLength === undefined
      ? size
      : Math.min(size, checkInt('options.maxChainLength', options.maxChainLength, 1, VIRTQ_MAX_SIZE));

  const sizes = splitQueueSizes(size);
  const d = place(memory, 'descriptor table', descTable, sizes.descTable, 16, view);
  const a = place(memory, 'available ring', availRing, sizes.availRing, 2, view);
  const u = place(memory, 'used ring', usedRing, sizes.usedRing, 4, view);
  return { size, descTable, availRing, usedRing, eventIdx, maxChainLength, d, a, u };
}

/**
 * The device side of one split virtqueue over guest memory.
 *
 * Create it when the driver sets QueueReady (the constructor validates the layout), and drop it
 * on a device reset. The device loop the specification recommends (§2.7.10, vm-virtio's
 * README): {@link disableNotification}, drain with {@link pop} until `undefined`,
 * {@link enableNotification}, and drain again while it returns `true`; after a batch of
 * {@link addUsed}, interrupt the driver if {@link needsNotification} says so.
 *
 * A guest that breaks a ring or chain rule makes {@link pop} throw a {@link VirtqueueError};
 * the queue then stays broken ({@link error}): it does not advance past the bad entry, and every
 * later `pop` throws the same error without reading guest memory. The device sets
 * `DEVICE_NEEDS_RESET`; chains it already holds may still be given back with `addUsed`.
 *
 * @example
 * ```ts
 * // @ts-setup: declare function serve(chain: DescriptorChain): number; // the bytes it wrote
 * // @ts-setup: declare const irq: EventFd; // the queue's interrupt (an irqfd)
 * const queue = new SplitQueue(vm.guestMemory, {
 *   size: 256, descTable: 0x10_0000n, availRing: 0x10_1000n, usedRing: 0x10_2000n, eventIdx: true,
 * });
 * for (;;) {
 *   queue.disableNotification();
 *   for (let chain = queue.pop(); chain; chain = queue.pop()) {
 *     const n = serve(chain);           // reads chain.read(...), writes chain.write(...)
 *     queue.addUsed(chain.head, n);
 *   }
 *   if (!queue.enableNotification()) break; // nothing new: wait for the next QueueNotify
 * }
 * if (queue.needsNotification()) irq.write(1n);
 * ```
 */
export class SplitQueue {
  /**
   * The queue size (a power of two).
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue;
   * queue.size; // 256
   * ```
   */
  readonly size: number;
  /**
   * Whether `VIRTIO_F_EVENT_IDX` is in use.
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue;
   * if (queue.eventIdx) console.log('used_event/avail_event suppression');
   * ```
   */
  readonly eventIdx: boolean;
  /**
   * The longest chain {@link pop} accepts, in descriptors.
   * @example
   * ```ts
   * // @ts-setup: declare const config: SplitQueueConfig;
   * new SplitQueue(vm.guestMemory, config, { maxChainLength: 4 }).maxChainLength; // 4
   * ```
   */
  readonly maxChainLength: number;
  /**
   * The configuration the queue was built from (addresses validated).
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue;
   * queue.config.usedRing; // 0x102000n
   * ```
   */
  readonly config: Readonly<SplitQueueConfig>;

  readonly #memory: GuestMemoryMap;
  readonly #desc: DataView;
  readonly #descBytes: Uint8Array;
  /** `flags, idx, ring[size], used_event`. */
  readonly #avail: Uint16Array;
  /** `flags, idx, ring[size] as u16 pairs, avail_event`. */
  readonly #used16: Uint16Array;
  /** The used ring's elements, `id, len` pairs. */
  readonly #usedElems: Uint32Array;
  /** 1 for a head the device holds (popped, not yet given back). */
  readonly #held: Uint8Array;
  /** The writable length of each held head's chain. */
  readonly #heldWritable: Uint32Array;
  #heldCount = 0;
  #nextAvail = 0;
  #nextUsed = 0;
  #usedFlags = 0;
  /** `used.idx` at the last {@link needsNotification}, and the used elements added since. */
  #signalled = 0;
  #addedSinceSignal = 0;
  #signalledValid = false;
  #error: VirtqueueError | undefined;

  /**
   * Validates the driver's queue layout and builds views of the three parts.
   *
   * @param memory - the guest-physical address space (`vm.guestMemory`)
   * @param config - the size and addresses the driver wrote, and whether EVENT_IDX was negotiated
   * @param options - limits
   * @throws {@link VirtqueueError} `ERR_VIRTIO_QUEUE_CONFIG` (rule `queue-size`, `alignment`,
   *   `ring-memory` or `memory-closed`) for a layout the driver got wrong: the size is not a power
   *   of two in 1..32768, a part is misaligned (descriptors 16, avail 2, used 4), or a part is not
   *   inside one region of guest RAM
   * @throws `TypeError` `ERR_INVALID_ARG_TYPE` / `RangeError` `ERR_OUT_OF_RANGE` for arguments of
   *   the wrong type, an address outside u64, or `maxChainLength` outside 1..32768
   * @example
   * ```ts
   * const queue = new SplitQueue(vm.guestMemory, {
   *   size: 8, descTable: 0x1000n, availRing: 0x1080n, usedRing: 0x1100n, eventIdx: false,
   * });
   * ```
   */
  constructor(memory: GuestMemoryMap, config: SplitQueueConfig, options: SplitQueueOptions = {}) {
    const { size, descTable, availRing, usedRing, eventIdx, maxChainLength, d, a, u } = layout(
      memory,
      config,
      options,
      true,
    );
    const sizes = splitQueueSizes(size);
    this.#memory = memory;
    this.size = size;
    this.eventIdx = eventIdx;
    this.maxChainLength = maxChainLength;
    this.config = Object.freeze({ size, descTable, availRing, usedRing, eventIdx });
    this.#desc = new DataView(d.buffer, d.byteOffset, sizes.descTable);
    this.#descBytes = new Uint8Array(d.buffer, d.byteOffset, sizes.descTable);
    this.#avail = new Uint16Array(a.buffer, a.byteOffset, sizes.availRing / 2);
    this.#used16 = new Uint16Array(u.buffer, u.byteOffset, sizes.usedRing / 2);
    this.#usedElems = new Uint32Array(u.buffer, u.byteOffset + 4, 2 * size);
    this.#held = new Uint8Array(size);
    this.#heldWritable = new Uint32Array(size);
  }

  /**
   * Checks a queue layout as the constructor does, without building the views (nor the guest
   * memory's `bytes`, which costs a full garbage collection the first time for gigabytes of RAM):
   * what a snapshot restore uses to refuse a bad state before anything is made.
   *
   * @example
   * ```ts
   * SplitQueue.checkLayout(vm.guestMemory, {
   *   size: 8, descTable: 0x1000n, availRing: 0x1080n, usedRing: 0x1100n, eventIdx: false,
   * });
   * ```
   * @throws what the constructor throws, for the same layouts
   */
  static checkLayout(memory: GuestMemoryMap, config: SplitQueueConfig): void {
    layout(memory, config, {}, false);
  }

  /**
   * The free-running index (u16) of the next available ring entry the device will take. Set it
   * to restore a snapshot (before any {@link pop}; chains held at the snapshot are taken again
   * with {@link retake}).
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue;
   * // @ts-setup: declare const restored: SplitQueue; // the same queue, rebuilt after a restore
   * const saved = { nextAvail: queue.nextAvail, nextUsed: queue.nextUsed }; // inFlight === 0
   * restored.nextAvail = saved.nextAvail;
   * ```
   */
  get nextAvail(): number {
    return this.#nextAvail;
  }
  set nextAvail(value: number) {
    this.#nextAvail = checkInt('nextAvail', value, 0, 0xffff);
  }

  /**
   * The free-running index (u16) of the next used ring entry the device will write; `used.idx`
   * once published. Set it to restore a snapshot (the next {@link needsNotification} then says
   * `true` once, as nothing is known of what the driver saw).
   * @example
   * ```ts
   * // @ts-setup: declare const restored: SplitQueue;
   * // @ts-setup: declare const saved: { nextAvail: number; nextUsed: number };
   * restored.nextUsed = saved.nextUsed;
   * ```
   */
  get nextUsed(): number {
    return this.#nextUsed;
  }
  set nextUsed(value: number) {
    this.#nextUsed = checkInt('nextUsed', value, 0, 0xffff);
    this.#signalled = this.#nextUsed;
    this.#addedSinceSignal = 0;
    this.#signalledValid = false;
  }

  /**
   * `used.idx` when the device last decided whether to interrupt ({@link needsNotification}, the
   * `old` of EVENT_IDX's `vring_need_event`), or `undefined` before the first decision since
   * construction or a `nextUsed` restore (the next decision then interrupts). Saved with
   * {@link nextAvail} and {@link nextUsed} in a snapshot; setting it (after `nextUsed`) restores
   * it and forgets additions not yet decided on.
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue;
   * // @ts-setup: declare const restored: SplitQueue;
   * restored.nextUsed = queue.nextUsed;
   * restored.signalledUsed = queue.signalledUsed; // no spurious interrupt after the restore
   * ```
   */
  get signalledUsed(): number | undefined {
    return this.#signalledValid ? this.#signalled : undefined;
  }
  set signalledUsed(value: number | undefined) {
    if (value === undefined) {
      this.#signalled = this.#nextUsed;
      this.#signalledValid = false;
    } else {
      this.#signalled = checkInt('signalledUsed', value, 0, 0xffff);
      this.#signalledValid = true;
    }
    this.#addedSinceSignal = 0;
  }

  /**
   * How many chains the device holds (popped, not yet given back with {@link addUsed}).
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue;
   * // @ts-setup: declare function snapshot(nextAvail: number, nextUsed: number): void;
   * if (queue.inFlight === 0) snapshot(queue.nextAvail, queue.nextUsed);
   * ```
   */
  get inFlight(): number {
    return this.#heldCount;
  }

  /**
   * The guest's broken rule that stopped the queue, if any (see the class description).
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue;
   * // @ts-setup: declare const ctx: VirtioDeviceContext;
   * if (queue.error) ctx.needsReset(queue.error.message);
   * ```
   */
  get error(): VirtqueueError | undefined {
    return this.#error;
  }

  #live(): void {
    if (this.#avail.length === 0 || this.#used16.length === 0 || this.#descBytes.length === 0) {
      throw configError('memory-closed', `the guest memory under the queue at ${hex(this.config.descTable)} is closed`);
    }
  }

  #fail(code: VirtqueueErrorCode, rule: VirtqueueRule, message: string, index: number): never {
    this.#error = new VirtqueueError(code, rule, message, index);
    throw this.#error;
  }

  /** The first address of `[addr, addr + len)` that is not in guest RAM, or `undefined`. */
  #unbacked(addr: bigint, len: number): bigint | undefined {
    const end = addr + BigInt(len);
    let cur = addr;
    while (cur < end) {
      const hit = this.#memory.find(cur);
      if (hit === undefined) return cur;
      cur += BigInt(hit.region.offset + hit.region.size - hit.offset);
    }
    return undefined;
  }

  /**
   * Takes the next descriptor chain the driver made available, or `undefined` when there is none.
   *
   * Each descriptor is read once and checked: the whole chain is validated before the queue
   * advances, and the chain holds copies of what it read.
   *
   * @throws {@link VirtqueueError} `ERR_VIRTIO_RING` (`avail-index`: `avail.idx` is more than
   *   `size` entries ahead; `head-index`: an entry ≥ `size`; `head-in-flight`: a head the device
   *   still holds) or `ERR_VIRTIO_DESCRIPTOR` (`next-index`, `chain-length` — a loop or a chain
   *   over `maxChainLength`, `indirect`, `order` — readable after writable, `buffer-address` —
   *   wraps 2^64 or not in guest RAM, `chain-bytes` — over 2^32 − 1 bytes); the queue stays broken
   * @throws {@link VirtqueueError} `ERR_VIRTIO_QUEUE_CONFIG` `memory-closed` after the guest
   *   memory was closed
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue;
   * // @ts-setup: declare function handle(chain: DescriptorChain): void; // serves it, then addUsed
   * for (let chain = queue.pop(); chain; chain = queue.pop()) handle(chain);
   * ```
   */
  pop(): DescriptorChain | undefined {
    this.#live();
    if (this.#error !== undefined) throw this.#error;
    const size = this.size;
    const availIdx = Atomics.load(this.#avail, 1);
    const pending = (availIdx - this.#nextAvail) & 0xffff;
    if (pending === 0) return undefined;
    if (pending > size) {
      this.#fail(
        'ERR_VIRTIO_RING',
        'avail-index',
        `avail.idx ${availIdx} is ${pending} entries ahead of the device's ${this.#nextAvail} in a ${size}-entry queue`,
        availIdx,
      );
    }
    const slot = this.#nextAvail & (size - 1);
    const head = this.#avail[2 + slot];
    if (head >= size) {
      this.#fail(
        'ERR_VIRTIO_RING',
        'head-index',
        `available ring entry ${slot} names head ${head}, outside the ${size}-entry queue`,
        head,
      );
    }
    if (this.#held[head] !== 0) {
      this.#fail(
        'ERR_VIRTIO_RING',
        'head-in-flight',
        `available ring entry ${slot} names head ${head}, which the device still holds`,
        head,
      );
    }

    const chain = this.#chainAt(head);
    this.#held[head] = 1;
    this.#heldWritable[head] = chain.writableLength;
    this.#heldCount++;
    this.#nextAvail = (this.#nextAvail + 1) & 0xffff;
    return chain;
  }

  /** Reads and checks the chain starting at descriptor `head` (< size); throws as {@link pop} does. */
  #chainAt(head: number): DescriptorChain {
    const size = this.size;
    const readable: Descriptor[] = [];
    const writable: Descriptor[] = [];
    let total = 0;
    let i = head;
    for (let count = 1; ; count++) {
      if (count > this.maxChainLength) {
        this.#fail(
          'ERR_VIRTIO_DESCRIPTOR',
          'chain-length',
          this.maxChainLength === size
            ? `the chain at head ${head} is longer than the ${size}-entry queue (a loop)`
            : `the chain at head ${head} is longer than the ${this.maxChainLength} descriptors accepted`,
          head,
        );
      }
      const at = 16 * i;
      const addr = this.#desc.getBigUint64(at, true);
      const len = this.#desc.getUint32(at + 8, true);
      const flags = this.#desc.getUint16(at + 12, true);
      const next = this.#desc.getUint16(at + 14, true);
      if ((flags & VIRTQ_DESC_F.INDIRECT) !== 0) {
        this.#fail(
          'ERR_VIRTIO_DESCRIPTOR',
          'indirect',
          `descriptor ${i} (chain at head ${head}) is indirect; VIRTIO_F_INDIRECT_DESC was not offered`,
          i,
        );
      }
      const isWritable = (flags & VIRTQ_DESC_F.WRITE) !== 0;
      if (!isWritable && writable.length > 0) {
        this.#fail(
          'ERR_VIRTIO_DESCRIPTOR',
          'order',
          `descriptor ${i} (chain at head ${head}) is device-readable after a device-writable one`,
          i,
        );
      }
      if (addr + BigInt(len) > U64_END) {
        this.#fail(
          'ERR_VIRTIO_DESCRIPTOR',
          'buffer-address',
          `descriptor ${i} (chain at head ${head}): buffer at ${hex(addr)} of ${len} bytes wraps past 2^64`,
          i,
        );
      }
      const hole = this.#unbacked(addr, len);
      if (hole !== undefined) {
        this.#fail(
          'ERR_VIRTIO_DESCRIPTOR',
          'buffer-address',
          `descriptor ${i} (chain at head ${head}): buffer [${hex(addr)}, ${hex(addr + BigInt(len))}) ` +
            `is not in guest RAM at ${hex(hole)}`,
          i,
        );
      }
      total += len;
      if (total > U32_MAX) {
        this.#fail(
          'ERR_VIRTIO_DESCRIPTOR',
          'chain-bytes',
          `the chain at head ${head} holds more than 2^32 - 1 bytes at descriptor ${i}`,
          i,
        );
      }
      (isWritable ? writable : readable).push(Object.freeze({ addr, len }));
      if ((flags & VIRTQ_DESC_F.NEXT) === 0) break;
      if (next >= size) {
        this.#fail(
          'ERR_VIRTIO_DESCRIPTOR',
          'next-index',
          `descriptor ${i} (chain at head ${head}): next ${next} is outside the ${size}-entry queue`,
          i,
        );
      }
      i = next;
    }

    return new DescriptorChain(this.#memory, head, readable, writable);
  }

  /**
   * Takes again the chain at descriptor `head`, one the device held when its state was saved and
   * that the driver has still left to the device (a snapshot's restore): it is read and checked as
   * {@link pop} does, and held, but `nextAvail` does not move (its ring entry was taken before the
   * save).
   *
   * @param head - the chain's head, as the saved device held it
   * @throws {@link VirtqueueError} `ERR_VIRTIO_RING` (`head-index`: `head` ≥ size;
   *   `head-in-flight`: a head the device holds already) or `ERR_VIRTIO_DESCRIPTOR` (the rules of
   *   {@link pop}); the queue stays broken
   * @throws `TypeError` / `RangeError` for a `head` that is not a u16 integer
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue; // rebuilt from a saved state
   * // @ts-setup: declare const saved: { nextAvail: number; nextUsed: number; held: number[] };
   * queue.nextAvail = saved.nextAvail;
   * queue.nextUsed = saved.nextUsed;
   * const chains = saved.held.map((head) => queue.retake(head)); // the receive buffers it kept
   * ```
   */
  retake(head: number): DescriptorChain {
    checkInt('head', head, 0, 0xffff);
    this.#live();
    if (this.#error !== undefined) throw this.#error;
    if (head >= this.size) {
      this.#fail('ERR_VIRTIO_RING', 'head-index', `retake: head ${head} is outside the ${this.size}-entry queue`, head);
    }
    if (this.#held[head] !== 0) {
      this.#fail('ERR_VIRTIO_RING', 'head-in-flight', `retake: head ${head} is held by the device already`, head);
    }
    const chain = this.#chainAt(head);
    this.#held[head] = 1;
    this.#heldWritable[head] = chain.writableLength;
    this.#heldCount++;
    return chain;
  }

  /**
   * Gives the chain at `head` back to the driver with `len` bytes written into its writable part:
   * writes the used element, then publishes `used.idx` (`Atomics.store`).
   *
   * @param head - a chain's {@link DescriptorChain.head}, popped and not yet given back
   * @param len - bytes the device wrote (at most the chain's `writableLength`)
   * @throws {@link VirtqueueError} `ERR_VIRTIO_USED` (`used-head`: `head` ≥ size or not held, a
   *   double return; `used-length`: `len` over the chain's writable length): a device model bug,
   *   and nothing is written
   * @throws `TypeError` / `RangeError` for a `head` or `len` that is not a u16 / u32 integer
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue;
   * // @ts-setup: declare const chain: DescriptorChain;
   * // @ts-setup: declare const reply: Uint8Array;
   * chain.write(0, reply);
   * queue.addUsed(chain.head, reply.length);
   * ```
   */
  addUsed(head: number, len: number): void {
    checkInt('head', head, 0, 0xffff);
    checkU32('len', len);
    this.#live();
    if (head >= this.size || this.#held[head] === 0) {
      throw new VirtqueueError(
        'ERR_VIRTIO_USED',
        'used-head',
        head >= this.size
          ? `addUsed: head ${head} is outside the ${this.size}-entry queue`
          : `addUsed: head ${head} is not held by the device (never popped, or given back already)`,
        head,
      );
    }
    if (len > this.#heldWritable[head]) {
      throw new VirtqueueError(
        'ERR_VIRTIO_USED',
        'used-length',
        `addUsed: ${len} bytes written into the chain at head ${head}, which has ${this.#heldWritable[head]} writable bytes`,
        head,
      );
    }
    const slot = this.#nextUsed & (this.size - 1);
    this.#usedElems[2 * slot] = head;
    this.#usedElems[2 * slot + 1] = len;
    this.#held[head] = 0;
    this.#heldCount--;
    this.#nextUsed = (this.#nextUsed + 1) & 0xffff;
    this.#addedSinceSignal++;
    Atomics.store(this.#used16, 1, this.#nextUsed);
  }

  /**
   * Whether the driver wants an interrupt for the used buffers added since the last call.
   *
   * `false` when none were added. With EVENT_IDX: `vring_need_event(used_event, new, old)`, true
   * when `used_event` lies in `[old, new)` (u16 arithmetic), `old` being `used.idx` at the last
   * call (and `true` on the first call after construction or a `nextUsed` restore, or after 2^16
   * additions without a call). Without: unless the driver set `VIRTQ_AVAIL_F_NO_INTERRUPT`.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue;
   * // @ts-setup: declare const chain: DescriptorChain;
   * // @ts-setup: declare const n: number; // the bytes written into chain
   * // @ts-setup: declare const irqfd: EventFd;
   * queue.addUsed(chain.head, n);
   * if (queue.needsNotification()) irqfd.write(1n);
   * ```
   */
  needsNotification(): boolean {
    this.#live();
    const added = this.#addedSinceSignal;
    const old = this.#signalled;
    const now = this.#nextUsed;
    this.#addedSinceSignal = 0;
    this.#signalled = now;
    if (added === 0) return false;
    if (!this.eventIdx) return (Atomics.load(this.#avail, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    if (!this.#signalledValid || added >= 0x10000) {
      this.#signalledValid = true;
      return true;
    }
    const usedEvent = Atomics.load(this.#avail, 2 + this.size);
    return ((now - usedEvent - 1) & 0xffff) < ((now - old) & 0xffff);
  }

  /**
   * Asks the driver to notify (kick) for new buffers again, then checks for buffers that arrived
   * meanwhile: with EVENT_IDX it writes `avail_event = nextAvail`, otherwise it clears
   * `VIRTQ_USED_F_NO_NOTIFY`; then (after that sequentially consistent store) it reads `avail.idx`.
   *
   * @returns `true` when entries are available: drain again, as no notification may come for them
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue;
   * // @ts-setup: declare function drain(queue: SplitQueue): void; // pop and serve until undefined
   * do { drain(queue); } while (queue.enableNotification());
   * ```
   */
  enableNotification(): boolean {
    this.#live();
    if (this.eventIdx) {
      Atomics.store(this.#used16, 2 + 4 * this.size, this.#nextAvail);
    } else {
      this.#usedFlags &= ~VIRTQ_USED_F_NO_NOTIFY;
      Atomics.store(this.#used16, 0, this.#usedFlags);
    }
    return Atomics.load(this.#avail, 1) !== this.#nextAvail;
  }

  /**
   * Asks the driver not to notify while the device drains the queue. Without EVENT_IDX it sets
   * `VIRTQ_USED_F_NO_NOTIFY`; with EVENT_IDX it does nothing (`avail_event` stays where
   * {@link enableNotification} put it, so the driver notifies at most once more). Advisory:
   * spurious notifications must be handled anyway.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const queue: SplitQueue;
   * // @ts-setup: declare function handle(chain: DescriptorChain): void;
   * queue.disableNotification();
   * for (let c = queue.pop(); c; c = queue.pop()) handle(c);
   * ```
   */
  disableNotification(): void {
    this.#live();
    if (this.eventIdx) return;
    this.#usedFlags |= VIRTQ_USED_F_NO_NOTIFY;
    Atomics.store(this.#used16, 0, this.#usedFlags);
  }
}
