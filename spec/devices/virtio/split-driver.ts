/**
 * A test-side virtio driver for split queues: it writes descriptors and available ring entries the
 * way Linux's `virtqueue_add_split` does (a free list threaded through `next`, descriptors first,
 * then the ring entry, then `avail.idx`), reads the used ring back like `virtqueue_get_buf`, and
 * has raw pokes for writing malformed rings. Also builds small guest memories on the mock backend.
 */
import { MockBackend } from '../../../src/backend/mock/index';
import { splitQueueSizes, VIRTQ_DESC_F } from '../../../src/devices/virtio/split-queue';
import type { SplitQueueConfig } from '../../../src/devices/virtio/split-queue';
import { GuestMemory, GuestMemoryMap } from '../../../src/wrappers/guest-memory';

/** A guest memory of regions `[gpa, size]` on one mock backend (each region its own mapping). */
export function mockMemory(...regions: Array<[bigint, number]>): { map: GuestMemoryMap; mems: GuestMemory[] } {
  const backend = new MockBackend();
  const mems = regions.map(([, size]) => GuestMemory.anonymous(size, { backend }));
  const map = new GuestMemoryMap(regions.map(([gpa], i) => ({ guestPhysAddr: gpa, memory: mems[i] })));
  return { map, mems };
}

export interface RawDesc {
  addr: bigint;
  len: number;
  flags: number;
  next: number;
}

export interface Sg {
  addr: bigint;
  len: number;
}

/** The driver side of one split queue. */
export class SplitDriver {
  readonly freeList: number[] = [];
  availIdx = 0;
  lastUsed = 0;
  readonly #chains = new Map<number, number[]>();

  constructor(
    readonly mem: GuestMemoryMap,
    readonly config: SplitQueueConfig,
  ) {
    for (let i = 0; i < config.size; i++) this.freeList.push(i);
  }

  // --- raw pokes ---------------------------------------------------------------------------

  u16(gpa: bigint, value: number): void {
    this.mem.write(gpa, Uint8Array.of(value & 0xff, (value >> 8) & 0xff));
  }

  getU16(gpa: bigint): number {
    const b = this.mem.read(gpa, 2);
    return b[0] | (b[1] << 8);
  }

  getU32(gpa: bigint): number {
    const b = this.mem.read(gpa, 4);
    return (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
  }

  writeDesc(i: number, d: RawDesc): void {
    const b = new Uint8Array(16);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, d.addr, true);
    v.setUint32(8, d.len, true);
    v.setUint16(12, d.flags, true);
    v.setUint16(14, d.next, true);
    this.mem.write(this.config.descTable + BigInt(16 * i), b);
  }

  readDesc(i: number): RawDesc {
    const v = new DataView(this.mem.read(this.config.descTable + BigInt(16 * i), 16).buffer);
    return {
      addr: v.getBigUint64(0, true),
      len: v.getUint32(8, true),
      flags: v.getUint16(12, true),
      next: v.getUint16(14, true),
    };
  }

  /** Writes avail.ring[slot]. */
  writeAvailEntry(slot: number, head: number): void {
    this.u16(this.config.availRing + BigInt(4 + 2 * slot), head);
  }

  /** Publishes avail.idx. */
  setAvailIdx(idx: number): void {
    this.availIdx = idx & 0xffff;
    this.u16(this.config.availRing + 2n, this.availIdx);
  }

  setAvailFlags(flags: number): void {
    this.u16(this.config.availRing, flags);
  }

  setUsedEvent(v: number): void {
    this.u16(this.config.availRing + BigInt(4 + 2 * this.config.size), v);
  }

  usedIdx(): number {
    return this.getU16(this.config.usedRing + 2n);
  }

  usedFlags(): number {
    return this.getU16(this.config.usedRing);
  }

  availEvent(): number {
    return this.getU16(this.config.usedRing + BigInt(4 + 8 * this.config.size));
  }

  usedElem(slot: number): { id: number; len: number } {
    const at = this.config.usedRing + BigInt(4 + 8 * slot);
    return { id: this.getU32(at), len: this.getU32(at + 4n) };
  }

  /** The used ring's byte range. */
  usedRange(): [bigint, bigint] {
    return [this.config.usedRing, this.config.usedRing + BigInt(splitQueueSizes(this.config.size).usedRing)];
  }

  // --- Linux-style operations --------------------------------------------------------------

  /**
   * Adds a buffer: `out` device-readable, then `in_` device-writable segments, chained through
   * free descriptors; writes the ring entry, then publishes avail.idx unless `publish` is false.
   * Returns the head.
   */
  add(out: Sg[], in_: Sg[], publish = true): number {
    const sgs = [...out.map((s) => ({ ...s, w: false })), ...in_.map((s) => ({ ...s, w: true }))];
    if (sgs.length === 0 || sgs.length > this.freeList.length) throw new Error('driver: no room');
    const used = this.freeList.splice(0, sgs.length);
    sgs.forEach((s, k) => {
      const last = k === sgs.length - 1;
      this.writeDesc(used[k], {
        addr: s.addr,
        len: s.len,
        flags: (s.w ? VIRTQ_DESC_F.WRITE : 0) | (last ? 0 : VIRTQ_DESC_F.NEXT),
        next: last ? 0 : used[k + 1],
      });
    });
    const head = used[0];
    this.#chains.set(head, used);
    this.writeAvailEntry(this.availIdx & (this.config.size - 1), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    if (publish) this.setAvailIdx(this.availIdx);
    return head;
  }

  /** Takes the used elements the device published since the last call, freeing their descriptors. */
  getUsed(): Array<{ id: number; len: number }> {
    const out: Array<{ id: number; len: number }> = [];
    const idx = this.usedIdx();
    while (this.lastUsed !== idx) {
      const e = this.usedElem(this.lastUsed & (this.config.size - 1));
      const descs = this.#chains.get(e.id);
      if (descs === undefined) throw new Error(`driver: used id ${e.id} is not a head`);
      this.#chains.delete(e.id);
      this.freeList.push(...descs);
      out.push(e);
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }
}
