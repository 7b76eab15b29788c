/**
 * The error of the virtio layer: a queue configuration, a ring or a descriptor chain that breaks a
 * rule of the virtio 1.2 specification, or a device model that misuses a queue.
 *
 * @module
 */

/**
 * What went wrong, as a Node-style `code`:
 *
 * - `ERR_VIRTIO_QUEUE_CONFIG`: the driver configured the queue badly (size, alignment, a ring
 *   outside guest RAM or across two regions), or the guest memory was closed under the queue.
 *   The transport should refuse the queue (leave it not ready) or set `DEVICE_NEEDS_RESET`.
 * - `ERR_VIRTIO_RING`: the available ring is malformed (its index moved by more than the queue
 *   size, a head index out of range, a head the device still holds).
 * - `ERR_VIRTIO_DESCRIPTOR`: a descriptor chain is malformed (a `next` out of range, a loop, an
 *   indirect descriptor, a readable descriptor after a writable one, a buffer outside guest RAM,
 *   more than 2^32 − 1 bytes in all).
 * - `ERR_VIRTIO_USED`: the device model (the host, not the guest) returned a buffer it does not
 *   hold, or claimed more bytes written than the chain can take. A bug in the device model.
 *
 * The first three are the guest's fault: the device sets `DEVICE_NEEDS_RESET` and logs the error's
 * message; the host keeps running.
 */
export type VirtqueueErrorCode =
  'ERR_VIRTIO_QUEUE_CONFIG' | 'ERR_VIRTIO_RING' | 'ERR_VIRTIO_DESCRIPTOR' | 'ERR_VIRTIO_USED';

/**
 * The rule a {@link VirtqueueError} reports, finer than its code (one code covers several rules).
 *
 * | rule | code | meaning; `index` is |
 * |---|---|---|
 * | `queue-size` | QUEUE_CONFIG | the size is not a power of two in 1..32768; the size |
 * | `alignment` | QUEUE_CONFIG | a ring is misaligned (descriptors 16, avail 2, used 4) in the guest or the host view |
 * | `ring-memory` | QUEUE_CONFIG | a ring is not inside one region of guest RAM |
 * | `memory-closed` | QUEUE_CONFIG | the guest memory under the queue was closed |
 * | `avail-index` | RING | `avail.idx` is more than `size` ahead of the device; the new `avail.idx` |
 * | `head-index` | RING | an available ring entry is ≥ `size`; the entry's value |
 * | `head-in-flight` | RING | the driver made available a head the device still holds; the head |
 * | `next-index` | DESCRIPTOR | a descriptor's `next` is ≥ `size`; the descriptor's index |
 * | `chain-length` | DESCRIPTOR | the chain is longer than `size` (a loop) or than `maxChainLength`; the head |
 * | `indirect` | DESCRIPTOR | a descriptor has `VIRTQ_DESC_F_INDIRECT` (not offered); the descriptor's index |
 * | `order` | DESCRIPTOR | a device-readable descriptor follows a device-writable one; the descriptor's index |
 * | `buffer-address` | DESCRIPTOR | a buffer wraps 2^64 or is not all in guest RAM; the descriptor's index |
 * | `chain-bytes` | DESCRIPTOR | the chain holds more than 2^32 − 1 bytes; the descriptor's index |
 * | `used-head` | USED | `addUsed` of a head that is out of range or not held by the device; the head |
 * | `used-length` | USED | `addUsed` with more bytes than the chain's writable part; the head |
 */
export type VirtqueueRule =
  | 'queue-size'
  | 'alignment'
  | 'ring-memory'
  | 'memory-closed'
  | 'avail-index'
  | 'head-index'
  | 'head-in-flight'
  | 'next-index'
  | 'chain-length'
  | 'indirect'
  | 'order'
  | 'buffer-address'
  | 'chain-bytes'
  | 'used-head'
  | 'used-length';

/**
 * A broken virtio rule. `code` says whose fault it is (see {@link VirtqueueErrorCode}), `rule`
 * which rule, `index` the number the rule is about (a descriptor index, a head, a ring index), and
 * the message names the address or index in plain words.
 *
 * @example
 * ```ts
 * // @ts-setup: declare const queue: SplitQueue;
 * // @ts-setup: declare const ctx: VirtioDeviceContext;
 * // @ts-setup: declare function handle(chain: DescriptorChain): void; // serves it, then addUsed
 * try {
 *   for (let chain = queue.pop(); chain; chain = queue.pop()) handle(chain);
 * } catch (e) {
 *   if (e instanceof VirtqueueError && e.code !== 'ERR_VIRTIO_USED') {
 *     // the guest's fault, e.g. "descriptor 3 (chain at head 0): next 300 is outside the 256-entry queue"
 *     ctx.needsReset(`virtio-blk: ${e.message}`);
 *   } else throw e; // ERR_VIRTIO_USED: a bug in the device model
 * }
 * ```
 */
export class VirtqueueError extends Error {
  /** Whose fault, and which part: see {@link VirtqueueErrorCode}. */
  readonly code: VirtqueueErrorCode;
  /** The rule that was broken. */
  readonly rule: VirtqueueRule;
  /** The descriptor index, head, ring index or size the rule is about (see {@link VirtqueueRule}). */
  readonly index: number | undefined;

  /**
   * @param code - whose fault, and which part
   * @param rule - the rule that was broken
   * @param message - what happened, naming the address or index
   * @param index - the number the rule is about
   * @example
   * ```ts
   * throw new VirtqueueError('ERR_VIRTIO_DESCRIPTOR', 'indirect', 'descriptor 5 is indirect', 5);
   * ```
   */
  constructor(code: VirtqueueErrorCode, rule: VirtqueueRule, message: string, index?: number) {
    super(message);
    this.name = 'VirtqueueError';
    this.code = code;
    this.rule = rule;
    this.index = index;
  }
}
