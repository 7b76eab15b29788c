/**
 * Guest memory: host mappings handed to the guest, and the guest-physical address space made of
 * them.
 *
 * @module
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { KvmClosedError, KvmRangeError } from '../abi/errors';
import {
  checkBool,
  checkBytes,
  checkInt,
  checkObject,
  checkString,
  checkU64,
  invalidType,
  invalidValue,
  outOfRange,
} from '../abi/validate';
import { nativeBackend } from '../backend/native';
import type { IoctlBackend } from '../backend/types';

/** Options of {@link GuestMemory.anonymous}. */
export interface GuestMemoryOptions {
  /** `MAP_SHARED` (default `true`, as kvm-ioctls' examples) or `MAP_PRIVATE`. */
  shared?: boolean;
  /** `MAP_NORESERVE`: no swap reserved up front (default `true`). */
  noreserve?: boolean;
  /**
   * Huge pages: `'madvise'` asks for transparent huge pages (`MADV_HUGEPAGE`), `'hugetlb'` maps
   * from the hugetlbfs pool (`MAP_HUGETLB`, fails with ENOMEM when the pool is empty). Default: none.
   */
  hugePages?: 'madvise' | 'hugetlb' | false;
  /** The backend (default: the native one). */
  backend?: IoctlBackend;
}

/** Options of {@link GuestMemory.fromFile}. */
export interface GuestMemoryFileOptions {
  /** Bytes to map (a multiple of the page size). */
  size: number;
  /** Where in the file they start (a multiple of the page size; default 0). */
  offset?: number;
  /** The backend (default: the native one). */
  backend?: IoctlBackend;
}

const MADV_HUGEPAGE = 14;

function readFully(fd: number, into: Uint8Array, position: number): void {
  for (let done = 0; done < into.length;) {
    const n = readSync(fd, into, done, into.length - done, position + done);
    if (n === 0) break;
    done += n;
  }
}

/**
 * An anonymous host mapping to be used as guest RAM.
 *
 * Its bytes are reachable as `bytes` (a `Uint8Array` over the mapping itself). `close()` detaches
 * every view it handed out before it unmaps, so a stale view reads as empty instead of crashing
 * the process.
 *
 * @example
 * ```ts
 * using mem = GuestMemory.anonymous(0x4000);
 * mem.bytes.set([0xf4], 0);                    // hlt at offset 0
 * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x1000n, memory: mem });
 * ```
 */
export class GuestMemory implements Disposable {
  /** Size in bytes (a multiple of the page size). */
  readonly size: number;
  /** Whether the mapping is `MAP_SHARED`. */
  readonly shared: boolean;
  readonly backend: IoctlBackend;
  #address: bigint;
  #buffer: ArrayBuffer | undefined;
  #bytes: Uint8Array | undefined;
  #closed = false;
  #users = new Set<string>();
  #borrowed = false;

  private constructor(backend: IoctlBackend, address: bigint, size: number, shared: boolean) {
    this.backend = backend;
    this.#address = address;
    this.size = size;
    this.shared = shared;
  }

  /**
   * @internal A view of a mapping another GuestMemory owns (in a worker thread: its own views of
   * the same host memory). `close()` detaches the views and leaves the mapping to its owner.
   */
  static borrow(backend: IoctlBackend, address: bigint, size: number): GuestMemory {
    const m = new GuestMemory(backend, address, size, true);
    m.#borrowed = true;
    return m;
  }

  /**
   * Maps `size` bytes of anonymous memory.
   *
   * @param size - bytes; a positive multiple of the page size
   * @throws `RangeError` `ERR_OUT_OF_RANGE` for a size that is not a positive multiple of the page size
   * @throws {@link KvmError} from `mmap` (e.g. ENOMEM) or `madvise`
   */
  static anonymous(size: number, options: GuestMemoryOptions = {}): GuestMemory {
    checkObject('options', options);
    const backend = options.backend ?? nativeBackend();
    const page = backend.pageSize;
    checkInt('size', size, 1, Number.MAX_SAFE_INTEGER);
    if (size % page !== 0) outOfRange('size', `a multiple of the page size (${page})`, size);
    const shared = options.shared === undefined ? true : checkBool('options.shared', options.shared);
    const noreserve = options.noreserve === undefined ? true : checkBool('options.noreserve', options.noreserve);
    const huge = options.hugePages ?? false;
    if (huge !== false && huge !== 'madvise' && huge !== 'hugetlb') {
      invalidValue('options.hugePages', "must be 'madvise', 'hugetlb' or false", huge);
    }
    const address = backend.mmap(size, { shared, anonymous: true, noreserve, hugetlb: huge === 'hugetlb' }, -1, 0);
    if (huge === 'madvise') {
      try {
        backend.madvise(address, size, MADV_HUGEPAGE);
      } catch (e) {
        backend.munmap(address, size);
        throw e;
      }
    }
    return new GuestMemory(backend, address, size, shared);
  }

  /**
   * Maps `size` bytes of a file at `offset` privately (`MAP_PRIVATE`, copy-on-write) as guest RAM:
   * pages are read from the file when first touched, and writes go to private copies, never to
   * the file. Mapping costs the same whatever the size, which is how a snapshot's memory is restored
   * in constant time. The file must not be changed while it is mapped (pages not yet copied would
   * show the change): kvm-rx writes snapshots to a new file and renames it into place. With the
   * mock backend the bytes are copied into anonymous memory instead.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const vm: import('kvm-rx').VmFd;
   * using mem = GuestMemory.fromFile('vm.snap', { offset: 0x10000, size: 0x800_0000 });
   * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory: mem });
   * ```
   * @param path - the file
   * @throws `RangeError` `ERR_OUT_OF_RANGE` for a size or offset that is not a multiple of the page
   *   size, or a range beyond the end of the file; `Error` from `fs.openSync` (ENOENT, EACCES);
   *   {@link KvmError} from `mmap`
   */
  static fromFile(path: string, options: GuestMemoryFileOptions): GuestMemory {
    checkString('path', path);
    checkObject('options', options);
    const backend = options.backend ?? nativeBackend();
    const page = backend.pageSize;
    const size = checkInt('options.size', options.size, 1, Number.MAX_SAFE_INTEGER);
    const offset = checkInt('options.offset', options.offset ?? 0, 0, Number.MAX_SAFE_INTEGER);
    if (size % page !== 0) outOfRange('options.size', `a multiple of the page size (${page})`, size);
    if (offset % page !== 0) outOfRange('options.offset', `a multiple of the page size (${page})`, offset);
    const fd = openSync(path, 'r');
    try {
      const fileSize = fstatSync(fd).size;
      if (offset + size > fileSize)
        throw new KvmRangeError(
          'ERR_OUT_OF_RANGE',
          `${path}: [${offset}, ${offset + size}) is beyond the end of the file (${fileSize} bytes)`,
        );
      if (backend.kind !== 'native') {
        const mem = GuestMemory.anonymous(size, { backend, shared: false });
        readFully(fd, mem.bytes, offset);
        return mem;
      }
      const address = backend.mmap(size, { shared: false, anonymous: false, noreserve: true }, fd, offset);
      return new GuestMemory(backend, address, size, false);
    } finally {
      closeSync(fd); // the mapping keeps its own reference to the file
    }
  }

  /**
   * Maps `this.size` bytes of a file at `offset` privately over this mapping, in place
   * (`MAP_FIXED`): the same address and size, so a VM memory slot over it and the views already
   * handed out stay valid and now see the file's pages, read when first touched, copied on write.
   * A prepared VM takes a snapshot's RAM this way without a new memory slot. The mapping must be
   * this object's own and private (`GuestMemory.anonymous(size, { shared: false })` or
   * `fromFile`); with the mock backend the bytes are copied in. Do it before a vCPU runs over
   * the memory: what the guest wrote before is gone.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const vm: import('kvm-rx').VmFd;
   * using mem = GuestMemory.anonymous(0x800_0000, { shared: false });
   * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory: mem });
   * mem.replaceWithFile('vm.snap', { offset: 0x10000 }); // later, in place
   * ```
   * @throws `RangeError` `ERR_OUT_OF_RANGE` for an offset that is not a multiple of the page size
   *   or a range beyond the end of the file; `Error` `ERR_KVM_NOT_PRIVATE` for a shared or borrowed
   *   mapping; {@link KvmClosedError} after {@link close}; `Error` from `fs.openSync`;
   *   {@link KvmError} from `mmap`
   */
  replaceWithFile(path: string, options: { offset?: number } = {}): void {
    this.#check();
    checkString('path', path);
    checkObject('options', options);
    const page = this.backend.pageSize;
    const offset = checkInt('options.offset', options.offset ?? 0, 0, Number.MAX_SAFE_INTEGER);
    if (offset % page !== 0) outOfRange('options.offset', `a multiple of the page size (${page})`, offset);
    if (this.shared || this.#borrowed)
      throw Object.assign(
        new Error(
          `only a private mapping this GuestMemory owns can be replaced (this one is ${this.#borrowed ? 'borrowed' : 'shared'})`,
        ),
        { code: 'ERR_KVM_NOT_PRIVATE' },
      );
    const fd = openSync(path, 'r');
    try {
      const fileSize = fstatSync(fd).size;
      if (offset + this.size > fileSize)
        throw new KvmRangeError(
          'ERR_OUT_OF_RANGE',
          `${path}: [${offset}, ${offset + this.size}) is beyond the end of the file (${fileSize} bytes)`,
        );
      if (this.backend.kind !== 'native') {
        readFully(fd, this.bytes, offset);
        return;
      }
      const at = this.backend.mmap(
        this.size,
        { shared: false, anonymous: false, noreserve: true, fixed: this.#address },
        fd,
        offset,
      );
      if (at !== this.#address) {
        // Linux maps MAP_FIXED at the address or fails; anything else would leave two mappings.
        this.backend.munmap(at, this.size);
        throw new Error(`mmap(MAP_FIXED) returned 0x${at.toString(16)}, not 0x${this.#address.toString(16)}`);
      }
    } finally {
      closeSync(fd);
    }
  }

  /** Whether `close()` has been called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** The host virtual address of the mapping (what `kvm_userspace_memory_region.userspace_addr` gets). */
  get hostAddress(): bigint {
    this.#check();
    return this.#address;
  }

  /** The mapping's bytes. The same `Uint8Array` every time; detached (length 0) after `close()`. */
  get bytes(): Uint8Array {
    this.#check();
    if (this.#bytes === undefined) {
      this.#buffer = this.backend.view(this.#address, this.size);
      this.#bytes = new Uint8Array(this.#buffer);
    }
    return this.#bytes;
  }

  /** A bounds-checked copy of `length` bytes at `offset`. */
  read(offset: number, length: number): Uint8Array {
    this.#range(offset, length);
    return this.bytes.slice(offset, offset + length);
  }

  /** Bounds-checked write of `data` at `offset`. */
  write(offset: number, data: Uint8Array | ArrayLike<number>): void {
    if (!(data instanceof Uint8Array) && !(Array.isArray(data) && data.every((b) => typeof b === 'number'))) {
      invalidType('data', 'a Uint8Array or an array of numbers', data);
    }
    this.#range(offset, data.length);
    this.bytes.set(data, offset);
  }

  #range(offset: number, length: number): void {
    this.#check();
    checkInt('offset', offset, 0, this.size);
    checkInt('length', length, 0, this.size);
    if (offset + length > this.size) {
      throw new KvmRangeError(
        'ERR_OUT_OF_RANGE',
        `[${offset}, ${offset + length}) is outside this ${this.size}-byte mapping`,
      );
    }
  }

  /** @internal Marks the mapping as used by a memory slot; `close()` refuses while it is. */
  retain(user: string): () => void {
    this.#check();
    this.#users.add(user);
    return () => this.#users.delete(user);
  }

  #check(): void {
    if (this.#closed) throw new KvmClosedError('GuestMemory');
  }

  /**
   * Detaches every view and unmaps. Idempotent.
   *
   * @throws `Error` `ERR_KVM_IN_USE` while a VM memory slot still uses the mapping (delete the slot
   *   or close the VM first): unmapping it under a running guest would hand the guest freed memory.
   */
  close(): void {
    if (this.#closed) return;
    if (this.#users.size > 0) {
      const err = new Error(`GuestMemory is still used by ${[...this.#users].join(', ')}`);
      (err as Error & { code: string }).code = 'ERR_KVM_IN_USE';
      throw err;
    }
    this.#closed = true;
    if (this.#buffer !== undefined) this.backend.detach(this.#buffer);
    this.#buffer = undefined;
    this.#bytes = undefined;
    if (!this.#borrowed) this.backend.munmap(this.#address, this.size);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** A region of guest-physical address space backed by (part of) a {@link GuestMemory}. */
export interface GuestRegion {
  guestPhysAddr: bigint;
  memory: GuestMemory;
  /** Offset into `memory` (default 0). */
  offset?: number;
  /** Length in bytes (default: the rest of `memory`). */
  size?: number;
}

/**
 * The guest-physical address space: regions at guest addresses, with bounds-checked reads and
 * writes that may cross from one region into the next adjacent one. A VM keeps one of these
 * (`vm.guestMemory`) in step with its memory slots.
 *
 * @example
 * ```ts
 * vm.guestMemory.write(0x1000n, Uint8Array.of(0xf4));
 * vm.guestMemory.read(0x1000n, 1); // Uint8Array [0xf4]
 * ```
 */
export class GuestMemoryMap {
  #regions: Array<Required<GuestRegion>> = [];

  constructor(regions: GuestRegion[] = []) {
    if (!Array.isArray(regions)) invalidType('regions', 'an array of regions', regions);
    for (const r of regions) this.add(r);
  }

  /** The regions, sorted by guest address. */
  get regions(): ReadonlyArray<Readonly<Required<GuestRegion>>> {
    return this.#regions;
  }

  /**
   * Adds a region.
   * @throws `RangeError` `ERR_OUT_OF_RANGE` when it overlaps an existing region or lies outside its mapping
   */
  add(region: GuestRegion): void {
    checkObject('region', region);
    const gpa = checkU64('region.guestPhysAddr', region.guestPhysAddr);
    if (!(region.memory instanceof GuestMemory)) invalidValue('region.memory', 'must be a GuestMemory', region.memory);
    const offset = region.offset === undefined ? 0 : checkInt('region.offset', region.offset, 0, region.memory.size);
    const size =
      region.size === undefined
        ? region.memory.size - offset
        : checkInt('region.size', region.size, 1, region.memory.size - offset);
    const end = gpa + BigInt(size);
    for (const r of this.#regions) {
      if (gpa < r.guestPhysAddr + BigInt(r.size) && r.guestPhysAddr < end) {
        throw new KvmRangeError(
          'ERR_OUT_OF_RANGE',
          `region at 0x${gpa.toString(16)} overlaps the region at 0x${r.guestPhysAddr.toString(16)}`,
        );
      }
    }
    this.#regions.push({ guestPhysAddr: gpa, memory: region.memory, offset, size });
    this.#regions.sort((a, b) => (a.guestPhysAddr < b.guestPhysAddr ? -1 : 1));
  }

  /** Removes the region that starts at `guestPhysAddr`. Returns whether there was one. */
  remove(guestPhysAddr: bigint): boolean {
    checkU64('guestPhysAddr', guestPhysAddr);
    const i = this.#regions.findIndex((r) => r.guestPhysAddr === guestPhysAddr);
    if (i < 0) return false;
    this.#regions.splice(i, 1);
    return true;
  }

  /** The region holding `gpa` and the offset into its mapping, or `undefined`. */
  find(gpa: bigint): { region: Readonly<Required<GuestRegion>>; offset: number } | undefined {
    gpa = checkU64('gpa', gpa);
    for (const r of this.#regions) {
      if (gpa >= r.guestPhysAddr && gpa < r.guestPhysAddr + BigInt(r.size)) {
        return { region: r, offset: r.offset + Number(gpa - r.guestPhysAddr) };
      }
    }
    return undefined;
  }

  #walk(gpa: bigint, length: number, fn: (bytes: Uint8Array, at: number, done: number, n: number) => void): void {
    const start = checkU64('gpa', gpa);
    checkInt('length', length, 0, Number.MAX_SAFE_INTEGER);
    let done = 0;
    while (done < length) {
      const cur = start + BigInt(done);
      const hit = this.find(cur);
      if (hit === undefined) {
        throw new KvmRangeError(
          'ERR_OUT_OF_RANGE',
          `guest physical address 0x${cur.toString(16)} is not backed by guest memory`,
        );
      }
      const avail = hit.region.offset + hit.region.size - hit.offset;
      const n = Math.min(avail, length - done);
      fn(hit.region.memory.bytes, hit.offset, done, n);
      done += n;
    }
  }

  /**
   * Copies `length` bytes from guest-physical address `gpa`.
   * @throws `RangeError` `ERR_OUT_OF_RANGE` when any byte is outside guest memory
   */
  read(gpa: bigint, length: number): Uint8Array {
    this.#walk(gpa, length, () => undefined); // check everything before allocating
    const out = new Uint8Array(length);
    this.#walk(gpa, length, (bytes, at, done, n) => out.set(bytes.subarray(at, at + n), done));
    return out;
  }

  /**
   * Writes `data` at guest-physical address `gpa`; nothing is written unless all of it fits.
   * @throws `RangeError` `ERR_OUT_OF_RANGE` when any byte is outside guest memory
   */
  write(gpa: bigint, data: Uint8Array): void {
    checkBytes('data', data);
    this.#walk(gpa, data.length, () => undefined); // check everything first
    this.#walk(gpa, data.length, (bytes, at, done, n) => bytes.set(data.subarray(done, done + n), at));
  }
}
