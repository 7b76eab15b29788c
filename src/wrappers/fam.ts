/**
 * Collections for the kernel structs that end in a flexible array member (kvm-bindings'
 * `FamStructWrapper`s): {@link CpuId} (`kvm_cpuid2`), {@link Msrs} (`kvm_msrs`), {@link MsrList}
 * (`kvm_msr_list`) and {@link RegList} (`kvm_reg_list`, arm64).
 *
 * Each holds its entries as a plain array (`entries`, live: change it in place like kvm-bindings'
 * `as_mut_slice()`), encodes to the kernel's bytes (the header's count, then the entries) and
 * decodes from them. Like `FamStructWrapper`, a collection refuses to hold more entries than its
 * kernel maximum: constructing or growing past it throws `RangeError` (ERR_OUT_OF_RANGE) before
 * any ioctl. (The ioctl methods that take a capacity instead, e.g. `getSupportedCpuid(n)` with
 * n > 256, throw kvm-ioctls' `KvmError` ENOMEM.)
 *
 * @module
 */
import { decodeStruct, dv, encodeStruct, offsetOf, type StructDef } from '../abi/codec';
import {
  kvm_cpuid2,
  kvm_cpuid_entry2,
  kvm_msr_entry,
  kvm_msr_list,
  kvm_msrs,
  kvm_reg_list,
  type KvmCpuidEntry2,
  type KvmMsrEntry,
} from '../abi/layouts';
import { checkBytes, checkInt, checkU32, checkU64, invalidValue, outOfRange } from '../abi/validate';

/** `KVM_MAX_CPUID_ENTRIES` (kvm-bindings): the most entries a {@link CpuId} holds. */
export const KVM_MAX_CPUID_ENTRIES = 256;
/** `KVM_MAX_MSR_ENTRIES` (kvm-bindings): the most entries an {@link Msrs} or {@link MsrList} holds. */
export const KVM_MAX_MSR_ENTRIES = 256;
/** kvm-bindings' arm64 `RegList` maximum (`ARM64_REGS_MAX` = 500; a vCPU usually has about 450). */
export const KVM_MAX_REG_LIST_ENTRIES = 500;

/** How one collection type maps to its kernel struct. */
interface FamSpec<T> {
  /** Name for messages (`'CpuId'`). */
  name: string;
  header: StructDef;
  /** Byte offset of the count field, its width, and of the first entry. */
  countOffset: number;
  countWidth: 4 | 8;
  entriesOffset: number;
  entrySize: number;
  max: number;
  /** Checks and normalises one entry (throws TypeError/RangeError). */
  check(value: unknown, path: string): T;
  write(view: DataView, at: number, entry: T, path: string): void;
  read(view: DataView, at: number): T;
}

/**
 * The shared base of the collections: a bounded array of entries and the kernel encoding.
 * `T` is the entry type.
 */
export abstract class FamCollection<T> {
  /** The entries, in order. Live: edit, push or splice it (the maximum is checked on encode). */
  readonly entries: T[];
  /** @internal */
  protected abstract readonly spec: FamSpec<T>;

  /** @internal The subclasses (`CpuId`, `Msrs`, `MsrList`, `RegList`) pass their kernel layout. */
  protected constructor(entries: Iterable<T>, spec: FamSpec<T>) {
    if (entries === null || typeof entries !== 'object' || typeof entries[Symbol.iterator] !== 'function') {
      invalidValue('entries', 'must be an array (or iterable) of entries', entries);
    }
    const list = [...entries];
    if (list.length > spec.max) outOfRange('entries.length', `<= ${spec.max} (the ${spec.name} maximum)`, list.length);
    this.entries = list.map((e, i) => spec.check(e, `entries[${i}]`));
  }

  /** The number of entries (the header's count when encoded). */
  get length(): number {
    return this.entries.length;
  }

  /** The most entries this collection may hold. */
  get maxEntries(): number {
    return this.spec.max;
  }

  /**
   * Appends an entry, refusing to grow past the maximum (kvm-bindings' `push`).
   * @throws `RangeError` ERR_OUT_OF_RANGE when full; `TypeError`/`RangeError` for a bad entry
   */
  push(entry: T): this {
    if (this.entries.length >= this.spec.max)
      outOfRange(`${this.spec.name} length`, `<= ${this.spec.max}`, this.entries.length + 1);
    this.entries.push(this.spec.check(entry, `entries[${this.entries.length}]`));
    return this;
  }

  /**
   * The kernel's bytes: the header with the count, then the entries. `capacity` (≥ length, ≤ max)
   * reserves room for more entries the kernel may write back; the count written is then the
   * capacity, as the `KVM_GET_*` ioctls expect.
   * @throws `RangeError` ERR_OUT_OF_RANGE for more entries than the maximum
   */
  encode(capacity?: number): Uint8Array {
    const s = this.spec;
    const n = this.entries.length;
    if (n > s.max) outOfRange(`${s.name} length`, `<= ${s.max}`, n);
    const cap = capacity === undefined ? n : checkInt('capacity', capacity, n, s.max);
    const bytes = new Uint8Array(s.entriesOffset + cap * s.entrySize);
    const view = dv(bytes);
    writeCount(view, s, capacity === undefined ? n : cap);
    for (let i = 0; i < n; i++) s.write(view, s.entriesOffset + i * s.entrySize, this.entries[i], `entries[${i}]`);
    return bytes;
  }

  /**
   * Replaces the entries with those in kernel bytes (the count from the header).
   * @internal Used by the `decode` statics and to update in place after an ioctl.
   */
  protected load(bytes: Uint8Array, count?: number): this {
    const s = this.spec;
    checkBytes('bytes', bytes);
    if (bytes.length < s.entriesOffset) outOfRange('bytes.length', `>= ${s.entriesOffset}`, bytes.length);
    const view = dv(bytes);
    const n = count === undefined ? readCount(view, s) : checkInt('count', count, 0, s.max);
    const room = Math.floor((bytes.length - s.entriesOffset) / s.entrySize);
    if (n > room) outOfRange(`${s.name} count`, `<= ${room} (the entries the buffer holds)`, n);
    if (n > s.max) outOfRange(`${s.name} count`, `<= ${s.max}`, n);
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(s.read(view, s.entriesOffset + i * s.entrySize));
    this.entries.splice(0, this.entries.length, ...out);
    return this;
  }
}

function writeCount<T>(view: DataView, s: FamSpec<T>, n: number): void {
  if (s.countWidth === 4) view.setUint32(s.countOffset, n, true);
  else view.setBigUint64(s.countOffset, BigInt(n), true);
}

function readCount<T>(view: DataView, s: FamSpec<T>): number {
  if (s.countWidth === 4) return view.getUint32(s.countOffset, true);
  const n = view.getBigUint64(s.countOffset, true);
  return n > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(n);
}

/** The header count of kernel bytes (e.g. the `n` the kernel wrote back with E2BIG). */
export function famCount(collection: 'CpuId' | 'Msrs' | 'MsrList' | 'RegList', bytes: Uint8Array): number {
  const s = { CpuId: CPUID_SPEC, Msrs: MSRS_SPEC, MsrList: MSR_LIST_SPEC, RegList: REG_LIST_SPEC }[
    collection
  ] as FamSpec<unknown>;
  return readCount(dv(checkBytes('bytes', bytes)), s);
}

function structSpec<T>(
  name: string,
  header: StructDef,
  countC: string,
  entriesC: string,
  entry: StructDef,
  max: number,
): FamSpec<T> {
  return {
    name,
    header,
    max,
    countOffset: offsetOf(header, countC),
    countWidth: header.fields[Object.keys(header.fields).find((k) => header.fields[k].c === countC)!].size as 4 | 8,
    entriesOffset: offsetOf(header, entriesC),
    entrySize: entry.size,
    check: (value, path) => {
      // Validate by encoding into scratch bytes; keep a normalised copy with every field present.
      const scratch = new DataView(new ArrayBuffer(entry.size));
      encodeStruct(entry, value, scratch, 0, path);
      return decodeStruct<T>(entry, scratch);
    },
    write: (view, at, e, path) => encodeStruct(entry, e, view, at, path),
    read: (view, at) => decodeStruct<T>(entry, view, at),
  };
}

const CPUID_SPEC = structSpec<KvmCpuidEntry2>(
  'CpuId',
  kvm_cpuid2,
  'nent',
  'entries',
  kvm_cpuid_entry2,
  KVM_MAX_CPUID_ENTRIES,
);
const MSRS_SPEC = structSpec<KvmMsrEntry>('Msrs', kvm_msrs, 'nmsrs', 'entries', kvm_msr_entry, KVM_MAX_MSR_ENTRIES);

const MSR_LIST_SPEC: FamSpec<number> = {
  name: 'MsrList',
  header: kvm_msr_list,
  max: KVM_MAX_MSR_ENTRIES,
  countOffset: offsetOf(kvm_msr_list, 'nmsrs'),
  countWidth: 4,
  entriesOffset: offsetOf(kvm_msr_list, 'indices'),
  entrySize: 4,
  check: (v, path) => checkU32(path, v),
  write: (view, at, e, path) => view.setUint32(at, checkU32(path, e), true),
  read: (view, at) => view.getUint32(at, true),
};

const REG_LIST_SPEC: FamSpec<bigint> = {
  name: 'RegList',
  header: kvm_reg_list,
  max: KVM_MAX_REG_LIST_ENTRIES,
  countOffset: offsetOf(kvm_reg_list, 'n'),
  countWidth: 8,
  entriesOffset: offsetOf(kvm_reg_list, 'reg'),
  entrySize: 8,
  check: (v, path) => checkU64(path, v),
  write: (view, at, e, path) => view.setBigUint64(at, checkU64(path, e), true),
  read: (view, at) => view.getBigUint64(at, true),
};

/** A CPUID entry as given to {@link CpuId}: `index` and `flags` default to 0, registers to 0. */
export type CpuIdEntryInput = Partial<KvmCpuidEntry2> & { function: number };

/**
 * CPUID entries (`struct kvm_cpuid2`, kvm-bindings' `CpuId`), at most {@link KVM_MAX_CPUID_ENTRIES}.
 *
 * @example
 * ```ts
 * const cpuid = kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES);
 * const leaf0 = cpuid.entries.find((e) => e.function === 0);
 * vcpu.setCpuid2(cpuid);
 * const mine = new CpuId([{ function: 0, eax: 0xd, ebx: 0x4b4d564b, ecx: 0x564b4d56, edx: 0x4d }]);
 * ```
 */
export class CpuId extends FamCollection<KvmCpuidEntry2> {
  protected readonly spec = CPUID_SPEC;

  /**
   * @param entries - the entries; missing fields are 0
   * @throws `RangeError` ERR_OUT_OF_RANGE for more than 256 entries; `TypeError`/`RangeError` for bad fields
   */
  constructor(entries: Iterable<CpuIdEntryInput> = []) {
    super(entries as Iterable<KvmCpuidEntry2>, CPUID_SPEC);
  }

  /**
   * Decodes `struct kvm_cpuid2` bytes (`nent`, then the entries).
   * @example
   * ```ts
   * import { CpuId, KVM_MAX_CPUID_ENTRIES } from 'kvm-rx';
   * const bytes = kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES).encode(); // e.g. kept in a snapshot
   * const cpuid = CpuId.decode(bytes);
   * ```
   */
  static decode(bytes: Uint8Array): CpuId {
    return new CpuId().load(bytes);
  }

  /** @internal Replaces the entries from kernel bytes (after an ioctl filled them). */
  loadFrom(bytes: Uint8Array): this {
    return this.load(bytes);
  }

  /**
   * `push` for an entry with defaults.
   * @example
   * ```ts
   * import { CpuId } from 'kvm-rx';
   * const cpuid = new CpuId([{ function: 0, eax: 1 }]);
   * cpuid.push({ function: 1, eax: 0x806e9 }); // index, flags, ebx, ecx, edx: 0
   * ```
   */
  override push(entry: CpuIdEntryInput): this {
    return super.push(entry as KvmCpuidEntry2);
  }
}

/** An MSR entry as given to {@link Msrs}: `data` defaults to 0n. */
export type MsrEntryInput = { index: number; data?: bigint | number };

/**
 * MSR index/value pairs (`struct kvm_msrs`, kvm-bindings' `Msrs`), at most {@link KVM_MAX_MSR_ENTRIES}.
 *
 * @example
 * ```ts
 * const msrs = new Msrs([{ index: 0x174, data: 0n }, { index: 0x175, data: 1n }]);
 * vcpu.setMsrs(msrs);                 // 2
 * const read = new Msrs([{ index: 0x174 }, { index: 0x175 }]);
 * vcpu.getMsrs(read);                 // 2; read.entries[1].data === 1n
 * ```
 */
export class Msrs extends FamCollection<KvmMsrEntry> {
  protected readonly spec = MSRS_SPEC;

  /** @throws `RangeError` ERR_OUT_OF_RANGE for more than 256 entries; `TypeError`/`RangeError` for bad fields */
  constructor(entries: Iterable<MsrEntryInput> = []) {
    super([...checkIterable(entries)].map(withData), MSRS_SPEC);
  }

  /**
   * Decodes `struct kvm_msrs` bytes.
   * @example
   * ```ts
   * import { Msrs } from 'kvm-rx';
   * const saved = new Msrs([{ index: 0x174 }, { index: 0x175 }]);
   * vcpu.getMsrs(saved);
   * const bytes = saved.encode(); // e.g. kept in a snapshot
   * vcpu.setMsrs(Msrs.decode(bytes));
   * ```
   */
  static decode(bytes: Uint8Array): Msrs {
    return new Msrs().load(bytes);
  }

  /** @internal Updates the entries from kernel bytes, keeping the count of this collection. */
  loadFrom(bytes: Uint8Array): this {
    return this.load(bytes, this.entries.length);
  }

  /**
   * `push` with `data` defaulting to 0n.
   * @example
   * ```ts
   * import { Msrs } from 'kvm-rx';
   * const msrs = new Msrs();
   * msrs.push({ index: 0x10 }); // IA32_TIME_STAMP_COUNTER, data 0n
   * ```
   */
  override push(entry: MsrEntryInput): this {
    return super.push(withData(entry));
  }
}

function checkIterable<T>(entries: Iterable<T>): Iterable<T> {
  if (entries === null || typeof entries !== 'object' || typeof entries[Symbol.iterator] !== 'function') {
    invalidValue('entries', 'must be an array (or iterable) of entries', entries);
  }
  return entries;
}

function withData(e: MsrEntryInput): KvmMsrEntry {
  if (typeof e !== 'object' || e === null) return e;
  return e.data === undefined ? { ...e, data: 0n } : (e as KvmMsrEntry);
}

/**
 * MSR indices (`struct kvm_msr_list`, kvm-bindings' `MsrList`), at most {@link KVM_MAX_MSR_ENTRIES}.
 *
 * @example
 * ```ts
 * const list = kvm.getMsrIndexList();
 * const msrs = new Msrs(list.entries.slice(0, 8).map((index) => ({ index })));
 * ```
 */
export class MsrList extends FamCollection<number> {
  protected readonly spec = MSR_LIST_SPEC;

  /** @throws `RangeError` ERR_OUT_OF_RANGE for more than 256 indices or an index outside u32 */
  constructor(indices: Iterable<number> = []) {
    super(indices, MSR_LIST_SPEC);
  }

  /**
   * Decodes `struct kvm_msr_list` bytes.
   * @example
   * ```ts
   * import { MsrList } from 'kvm-rx';
   * const bytes = kvm.getMsrIndexList().encode(); // e.g. kept with a snapshot
   * const list = MsrList.decode(bytes);
   * ```
   */
  static decode(bytes: Uint8Array): MsrList {
    return new MsrList().load(bytes);
  }
}

/**
 * arm64/riscv register ids (`struct kvm_reg_list`, kvm-bindings' `RegList`), at most
 * {@link KVM_MAX_REG_LIST_ENTRIES}. Filled by `VcpuFd#getRegList`.
 *
 * @example
 * ```ts
 * const list = new RegList(500);
 * vcpu.getRegList(list);
 * for (const id of list.entries) console.log(id.toString(16), regSize(id));
 * ```
 */
export class RegList extends FamCollection<bigint> {
  protected readonly spec = REG_LIST_SPEC;
  /** The room reserved for the kernel to fill (kvm-bindings' `RegList::new(n)`). */
  capacity: number;

  /**
   * @param capacityOrIds - the number of ids to make room for, or the ids themselves
   * @throws `RangeError` ERR_OUT_OF_RANGE for more than 500
   */
  constructor(capacityOrIds: number | Iterable<bigint> = 0) {
    const isCapacity = typeof capacityOrIds === 'number';
    if (isCapacity) checkInt('capacity', capacityOrIds, 0, KVM_MAX_REG_LIST_ENTRIES);
    super(isCapacity ? [] : capacityOrIds, REG_LIST_SPEC);
    this.capacity = isCapacity ? capacityOrIds : this.entries.length;
  }

  /**
   * Decodes `struct kvm_reg_list` bytes.
   * @example
   * ```ts
   * import { RegList } from 'kvm-rx';
   * const list = new RegList(500);
   * vcpu.getRegList(list);
   * const bytes = list.encode(); // e.g. kept with a snapshot
   * const ids = RegList.decode(bytes).entries;
   * ```
   */
  static decode(bytes: Uint8Array): RegList {
    const r = new RegList().load(bytes);
    r.capacity = r.entries.length;
    return r;
  }

  /** @internal Replaces the ids from kernel bytes. */
  loadFrom(bytes: Uint8Array): this {
    this.load(bytes);
    this.capacity = Math.max(this.capacity, this.entries.length);
    return this;
  }
}

/** @internal Buffers for the `KVM_GET_*` ioctls: the header count set to `capacity`, room for that many entries. */
export function famBuffer(collection: 'CpuId' | 'Msrs' | 'MsrList' | 'RegList', capacity: number): Uint8Array {
  const s = { CpuId: CPUID_SPEC, Msrs: MSRS_SPEC, MsrList: MSR_LIST_SPEC, RegList: REG_LIST_SPEC }[
    collection
  ] as FamSpec<unknown>;
  const bytes = new Uint8Array(s.entriesOffset + capacity * s.entrySize);
  writeCount(dv(bytes), s, capacity);
  return bytes;
}
