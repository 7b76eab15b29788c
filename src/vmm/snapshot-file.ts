/**
 * The kvm-rx snapshot file: one file holding a machine's state (JSON) and its guest memory (raw
 * pages, page-aligned, so they can be mapped privately), with a header that names the format
 * version, the kvm-rx version, the host CPU and checksums. The layout is documented in
 * `docs/snapshots.md`; this module writes it and reads it back, refusing a file that is not one,
 * is truncated or corrupt, is of a newer format, or comes from a host CPU this one cannot stand in
 * for, before anything is restored from it.
 *
 * @module
 */
import { createHash, randomUUID } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { release } from 'node:os';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import type { KvmCpuidEntry2 } from '../abi/layouts';
import { checkObject, checkString, invalidType, invalidValue } from '../abi/validate';
import type { IoctlBackend } from '../backend/types';
import { KVM_MAX_CPUID_ENTRIES } from '../wrappers/fam';
import { GuestMemory } from '../wrappers/guest-memory';
import type { Kvm } from '../wrappers/kvm';
import { SnapshotError, type SnapshotErrorCode } from './errors';

/** The format version this kvm-rx writes and the newest it reads. */
export const SNAPSHOT_FORMAT_VERSION = 1;
/** The first 8 bytes of every snapshot file. */
export const SNAPSHOT_MAGIC = 'KVMRXSNP';
/** Memory in the file is laid out in pages of this size (x86_64's). */
export const SNAPSHOT_PAGE_SIZE = 4096;

const PREAMBLE_SIZE = 56;
/** `Array.isArray` without narrowing a typed parameter to `any[]` (a check of untyped input). */
const isList = (v: unknown): boolean => Array.isArray(v);
const MAX_HEADER = 1 << 20;
const MAX_STATE = 256 << 20;
const MAX_CHAIN = 64;
const ZERO_PAGE = new Uint8Array(SNAPSHOT_PAGE_SIZE);

/** The host a snapshot was taken on (or is restored on). */
export interface SnapshotHost {
  /** The CPU vendor as CPUID leaf 0 gives it (`GenuineIntel`, `AuthenticAMD`). */
  vendor: string;
  /** CPUID leaf 1 EAX: family, model and stepping. */
  signature: number;
  /** `/proc/cpuinfo`'s model name, for messages. */
  model: string;
  /** The host kernel's release (`uname -r`), for messages. */
  kernel: string;
  /**
   * The feature registers of the CPUID the host's KVM offers (`KVM_GET_SUPPORTED_CPUID`), by
   * `'0x<leaf>.<subleaf>.<register>'`: a restoring host must offer all of these bits.
   */
  features: Record<string, number>;
}

/** One guest memory region as the header describes it. */
export interface SnapshotRegionHeader {
  /** Guest-physical base, `0x`-prefixed hex. */
  guestPhysAddr: string;
  /** Bytes (a multiple of {@link SNAPSHOT_PAGE_SIZE}). */
  size: number;
  /** A full snapshot: where the region's bytes start in the file (page-aligned; zero pages are holes). */
  offset?: number;
  /**
   * A diff snapshot: the pages written since the parent. `bitmapOffset`: one bit per page, LSB
   * first, in 64-bit little-endian words; `dataOffset`: the set pages' bytes, in order, page-aligned.
   */
  dirty?: { bitmapOffset: number; dataOffset: number; pages: number };
  /** SHA-256 of the region's bytes (a diff: of its pages' bytes, in order), when written with `checksumMemory`. */
  sha256?: string;
}

/** The header of a snapshot file (JSON, at the end of the file). */
export interface SnapshotHeader {
  format: 'kvm-rx snapshot';
  version: number;
  /** The kvm-rx version that wrote it. */
  kvmRx: string;
  /** A random id; a diff snapshot names its parent's. */
  id: string;
  /** When it was written (ISO 8601). */
  created: string;
  kind: 'full' | 'diff';
  /** What kind of machine it is (`'linux'`, `'demo'`, or a user VMM's own name). */
  machine: string;
  /** A diff snapshot's parent: its id and its path relative to this file's directory. */
  parent?: { id: string; path: string };
  host: SnapshotHost;
  /** The machine state (JSON with tagged bigints and bytes): where, how long, SHA-256. */
  state: { offset: number; length: number; sha256: string };
  memory: SnapshotRegionHeader[];
  /** The file's size in bytes. */
  fileSize: number;
}

/** A guest memory region to write. */
export interface SnapshotRegionSource {
  guestPhysAddr: bigint;
  /** The region's bytes (guest memory). */
  bytes: Uint8Array;
  /** For a diff snapshot: the pages to write, one bit per 4 KiB page (`KVM_GET_DIRTY_LOG`'s layout). */
  dirty?: BigUint64Array;
}

/** Options of {@link writeSnapshotFile}. */
export interface WriteSnapshotOptions {
  /** What kind of machine it is (checked by the restorer). */
  machine: string;
  /** The machine state: plain data (objects, arrays, numbers, strings, booleans, bigints, Uint8Arrays). */
  state: unknown;
  /** Guest memory, region by region. */
  regions: SnapshotRegionSource[];
  /** The host (see {@link snapshotHost}). */
  host: SnapshotHost;
  /** A diff snapshot: its parent file (then every region needs `dirty`). */
  parent?: { id: string; path: string };
  /** Also write a SHA-256 of each memory region (checked by `readSnapshotFile(…, { verifyMemory: true })`). Default `false`. */
  checksumMemory?: boolean;
  /** The kvm-rx version to record (default: this package's). */
  kvmRx?: string;
  /** The id to give it (default: a new random one; merging keeps the last diff's). */
  id?: string;
}

/** A snapshot file, read and checked. */
export interface SnapshotFile {
  /** Its absolute path. */
  readonly path: string;
  readonly header: SnapshotHeader;
  /** The decoded machine state. */
  readonly state: unknown;
  /** The memory regions, with the guest-physical address as a bigint. */
  readonly regions: ReadonlyArray<SnapshotRegionHeader & { gpa: bigint }>;
}

/** Options of {@link readSnapshotFile}. */
export interface ReadSnapshotOptions {
  /** Check each memory region's SHA-256 (reads all of memory: not constant time). Default `false`. */
  verifyMemory?: boolean;
}

// ---------------------------------------------------------------------------------------------
// State encoding: JSON, with bigints as { "$bigint": "0x…" } and bytes as { "$bytes": base64 }.

/**
 * Encodes machine state as JSON: bigints become `{ "$bigint": "0x…" }`, `Uint8Array`s
 * `{ "$bytes": "<base64>" }`; everything else must be plain JSON data.
 *
 * @example `encodeSnapshotState({ rip: 0x1000n, xsave: new Uint8Array(4) }); // '{"rip":{"$bigint":"0x1000"},…'`
 * @throws `TypeError` `ERR_INVALID_ARG_VALUE` for a value JSON cannot hold (a function, a symbol,
 *   another typed array, a cycle)
 */
export function encodeSnapshotState(state: unknown): string {
  const seen = new WeakSet<object>();
  return JSON.stringify(state, function (this: Record<string, unknown>, key: string, value: unknown) {
    const original = this[key];
    if (typeof original === 'bigint')
      return { $bigint: `${original < 0n ? '-' : ''}0x${(original < 0n ? -original : original).toString(16)}` };
    if (original instanceof Uint8Array)
      return { $bytes: Buffer.from(original.buffer, original.byteOffset, original.byteLength).toString('base64') };
    if (ArrayBuffer.isView(original) || original instanceof ArrayBuffer)
      invalidType(key === '' ? 'state' : `state.${key}`, 'JSON data, bigints and Uint8Arrays', original);
    if (typeof value === 'function' || typeof value === 'symbol')
      invalidType(key === '' ? 'state' : `state.${key}`, 'JSON data, bigints and Uint8Arrays', value);
    if (typeof value === 'object' && value !== null) {
      if (seen.has(value)) invalidType(`state.${key}`, 'data without cycles', '[cycle]');
      seen.add(value);
    }
    return value;
  });
}

const BIGINT_RE = /^-?0x[0-9a-f]{1,32}$/;
const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Decodes what {@link encodeSnapshotState} wrote.
 *
 * @example `decodeSnapshotState('{"rip":{"$bigint":"0x1000"}}'); // { rip: 4096n }`
 * @throws `SyntaxError` for text that is not JSON; `TypeError` `ERR_INVALID_ARG_VALUE` for a
 *   malformed `$bigint` or `$bytes` value
 */
export function decodeSnapshotState(text: string): unknown {
  checkString('text', text);
  try {
    return parseState(text);
  } catch (e) {
    if (e instanceof SyntaxError) invalidValue('text', `is not JSON (${e.message})`);
    throw e;
  }
}

function parseState(text: string): unknown {
  // A plain parse and one walk over what it made: a JSON.parse reviver costs about 4x the parse
  // (a call per value), and this is on the restore path.
  return revive(JSON.parse(text));
}

/** Replaces the `{ $bigint }` and `{ $bytes }` tags in parsed JSON, in place. */
function revive(value: unknown): unknown {
  if (typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const x: unknown = value[i];
      if (typeof x === 'object' && x !== null) value[i] = revive(x);
    }
    return value;
  }
  const o = value as Record<string, unknown>;
  let keys = 0;
  for (const k in o) {
    keys++;
    const x = o[k];
    if (typeof x !== 'object' || x === null) continue;
    const r = revive(x);
    // defineProperty, as JSON.parse made it: a key named __proto__ stays a plain property.
    if (r !== x) Object.defineProperty(o, k, { value: r, writable: true, enumerable: true, configurable: true });
  }
  if (keys !== 1) return o;
  if (Object.hasOwn(o, '$bigint')) {
    const v = o.$bigint;
    if (typeof v !== 'string' || !BIGINT_RE.test(v)) invalidType('$bigint', 'a 0x-prefixed hex string', v);
    return v.startsWith('-') ? -BigInt(v.slice(1)) : BigInt(v);
  }
  if (Object.hasOwn(o, '$bytes')) {
    const v = o.$bytes;
    if (typeof v !== 'string' || v.length % 4 !== 0 || !BASE64_RE.test(v)) invalidType('$bytes', 'a base64 string', v);
    return new Uint8Array(Buffer.from(v, 'base64'));
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// The host.

/** CPUID feature registers a snapshot records and checks: (leaf, subleaf, register). */
const FEATURE_REGISTERS: ReadonlyArray<[number, number, 'eax' | 'ebx' | 'ecx' | 'edx']> = [
  [1, 0, 'ecx'],
  [1, 0, 'edx'],
  [7, 0, 'ebx'],
  [7, 0, 'ecx'],
  [7, 0, 'edx'],
  [0xd, 1, 'eax'],
  [0x8000_0001, 0, 'ecx'],
  [0x8000_0001, 0, 'edx'],
];

/** The name of a feature register in {@link SnapshotHost.features}: `'0x7.0.ebx'`. */
const featureKey = (leaf: number, sub: number, reg: string): string => `0x${leaf.toString(16)}.${sub}.${reg}`;

/**
 * This host as a snapshot records it: the CPU vendor, signature and the feature registers of the
 * CPUID its KVM offers (`supported`, from `kvm.getSupportedCpuid()`), the model name and the
 * kernel release.
 *
 * @example `const host = snapshotHost(kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES).entries);`
 */
export function snapshotHost(supported: readonly KvmCpuidEntry2[], cpuinfo?: string): SnapshotHost {
  if (!isList(supported)) invalidType('supported', 'an array of CPUID entries', supported);
  if (cpuinfo !== undefined) checkString('cpuinfo', cpuinfo);
  const leaf0 = supported.find((e) => e.function === 0);
  const leaf1 = supported.find((e) => e.function === 1);
  const vendor =
    leaf0 === undefined
      ? 'unknown'
      : Buffer.from(new Uint32Array([leaf0.ebx, leaf0.edx, leaf0.ecx]).buffer)
          .toString('latin1')
          .replace(/\0+$/, '');
  let model = 'unknown';
  try {
    const text = cpuinfo ?? readFileSync('/proc/cpuinfo', 'latin1');
    model = /^model name\s*:\s*(.*)$/m.exec(text)?.[1]?.trim() ?? 'unknown';
  } catch {
    // no /proc/cpuinfo: the model is only for messages
  }
  const features: Record<string, number> = {};
  for (const [leaf, sub, reg] of FEATURE_REGISTERS) {
    const e = supported.find((x) => x.function === leaf && x.index === sub);
    features[featureKey(leaf, sub, reg)] = e === undefined ? 0 : e[reg] >>> 0;
  }
  return { vendor, signature: leaf1?.eax ?? 0, model, kernel: release(), features };
}

/** {@link hostOfKvm}'s answers, one per backend (the host does not change while a process runs). */
const HOSTS = new WeakMap<IoctlBackend, Readonly<SnapshotHost>>();

/**
 * {@link snapshotHost} of the host `kvm` runs on (its `KVM_GET_SUPPORTED_CPUID`), asked once per
 * backend and kept: a restore checks it, and the ioctl and its decoding cost about a millisecond.
 *
 * @example `checkSnapshotHost(readSnapshotFile('vm.snap'), hostOfKvm(kvm));`
 * @throws {@link KvmError} from `KVM_GET_SUPPORTED_CPUID` (the first time for a backend)
 */
export function hostOfKvm(kvm: Kvm): Readonly<SnapshotHost> {
  let host = HOSTS.get(kvm.backend);
  if (host === undefined) {
    const h = snapshotHost(kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES).entries);
    host = Object.freeze({ ...h, features: Object.freeze(h.features) });
    HOSTS.set(kvm.backend, host);
  }
  return host;
}

/**
 * Checks that this host can stand in for the one a snapshot was taken on: the same CPU vendor,
 * and every CPUID feature the other host's KVM offered (what the guest may have been given and
 * relies on) offered by this one's.
 *
 * @example
 * ```ts
 * // @ts-setup: import { KVM_MAX_CPUID_ENTRIES } from 'kvm-rx'; declare const kvm: import('kvm-rx').Kvm;
 * const file = readSnapshotFile('vm.snap');
 * checkSnapshotHost(file, snapshotHost(kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES).entries));
 * ```
 * @throws {@link SnapshotError} `ERR_KVM_SNAPSHOT_HOST` naming what differs
 */
export function checkSnapshotHost(file: SnapshotFile, host: SnapshotHost): void {
  checkSnapshotFileArg('file', file);
  checkObject('host', host);
  if (typeof host.features !== 'object' || host.features === null)
    invalidType('host.features', 'an object of CPUID feature registers', host.features);
  const saved = file.header.host;
  if (saved.vendor !== host.vendor)
    fail(
      'ERR_KVM_SNAPSHOT_HOST',
      file.path,
      `it was taken on a ${saved.vendor} CPU (${saved.model}); this host's is ${host.vendor} (${host.model})`,
    );
  const missing: string[] = [];
  for (const [key, bits] of Object.entries(saved.features)) {
    const extra = (bits & ~(host.features[key] ?? 0)) >>> 0;
    if (extra !== 0) missing.push(`${key} bits 0x${extra.toString(16)}`);
  }
  if (missing.length > 0)
    fail(
      'ERR_KVM_SNAPSHOT_HOST',
      file.path,
      `the host it was taken on offered CPUID features this host's KVM does not: ${missing.join(', ')} (taken on ${saved.model}, kernel ${saved.kernel}; this is ${host.model}, kernel ${host.kernel})`,
    );
}

// ---------------------------------------------------------------------------------------------
// Writing.

function pageAlign(n: number): number {
  return Math.ceil(n / SNAPSHOT_PAGE_SIZE) * SNAPSHOT_PAGE_SIZE;
}

function writeAll(fd: number, bytes: Uint8Array, position: number): void {
  for (let done = 0; done < bytes.length;) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}

function isZero(bytes: Uint8Array, from: number, to: number): boolean {
  return (
    Buffer.compare(Buffer.from(bytes.buffer, bytes.byteOffset + from, to - from), ZERO_PAGE.subarray(0, to - from)) ===
    0
  );
}

/** Counts set bits. */
function popcount(bitmap: BigUint64Array, pages: number): number {
  return setPages(bitmap, pages).length;
}

/**
 * The pages whose bits are set (below `pages`), in order: read as 32-bit halves (little-endian, so
 * half i holds pages 32i..32i+31), skipping empty ones: a 2 GiB guest's bitmap is 16,384 words,
 * nearly all zero in a diff.
 */
function setPages(bitmap: BigUint64Array, pages: number): number[] {
  const halves = new Uint32Array(bitmap.buffer, bitmap.byteOffset, bitmap.length * 2);
  const out: number[] = [];
  for (let i = 0; i < halves.length; i++) {
    let w = halves[i];
    while (w !== 0) {
      const bit = 31 - Math.clz32(w & -w);
      const page = i * 32 + bit;
      if (page < pages) out.push(page);
      w &= w - 1;
    }
  }
  return out;
}

/**
 * Writes a snapshot file: state and memory into a new file beside `path`, synced, then renamed to
 * `path` (so a reader, or a VM whose memory maps an older file of that name, never sees a
 * half-written one). A full snapshot leaves holes for zero pages; a diff snapshot writes only the
 * pages set in each region's `dirty` bitmap.
 *
 * @example
 * ```ts
 * // @ts-setup: declare const host: import('kvm-rx').SnapshotHost; declare const ram: Uint8Array;
 * const header = writeSnapshotFile('vm.snap', { machine: 'mine', state: { regs: {} }, regions: [{ guestPhysAddr: 0n, bytes: ram }], host });
 * header.id; // what a diff snapshot on top of this one names as its parent
 * ```
 * @throws `TypeError`/`RangeError` with `ERR_` codes for bad options; `Error` from the file system
 *   (the temporary file is removed)
 */
export function writeSnapshotFile(path: string, options: WriteSnapshotOptions): SnapshotHeader {
  checkString('path', path);
  checkObject('options', options);
  checkString('options.machine', options.machine);
  if (!Array.isArray(options.regions)) invalidType('options.regions', 'an array', options.regions);
  const diff = options.parent !== undefined;
  for (const [i, r] of options.regions.entries()) {
    checkObject(`options.regions[${i}]`, r);
    if (
      typeof r.guestPhysAddr !== 'bigint' ||
      r.guestPhysAddr < 0n ||
      r.guestPhysAddr % BigInt(SNAPSHOT_PAGE_SIZE) !== 0n
    )
      invalidType(`options.regions[${i}].guestPhysAddr`, 'a page-aligned bigint', r.guestPhysAddr);
    if (!(r.bytes instanceof Uint8Array) || r.bytes.length === 0 || r.bytes.length % SNAPSHOT_PAGE_SIZE !== 0)
      invalidType(`options.regions[${i}].bytes`, 'a Uint8Array of whole pages', r.bytes);
    if (diff && (!(r.dirty instanceof BigUint64Array) || r.dirty.length * 64 < r.bytes.length / SNAPSHOT_PAGE_SIZE))
      invalidType(`options.regions[${i}].dirty`, 'a BigUint64Array with a bit per page (a diff snapshot)', r.dirty);
  }
  const stateText = Buffer.from(encodeSnapshotState(options.state), 'utf8');
  const tmp = `${path}.tmp-${process.pid}-${randomUUID().slice(0, 8)}`;
  const fd = openSync(tmp, 'wx', 0o600);
  let ok = false;
  try {
    let at = SNAPSHOT_PAGE_SIZE;
    const state = {
      offset: at,
      length: stateText.length,
      sha256: createHash('sha256').update(stateText).digest('hex'),
    };
    writeAll(fd, stateText, at);
    at = pageAlign(at + stateText.length);
    const memory: SnapshotRegionHeader[] = [];
    for (const r of options.regions) {
      const pages = r.bytes.length / SNAPSHOT_PAGE_SIZE;
      const region: SnapshotRegionHeader = { guestPhysAddr: `0x${r.guestPhysAddr.toString(16)}`, size: r.bytes.length };
      const hash = options.checksumMemory === true ? createHash('sha256') : undefined;
      if (!diff) {
        region.offset = at;
        // Zero pages stay holes: a guest that touched little of its RAM makes a small file.
        for (let p = 0; p < pages;) {
          const from = p * SNAPSHOT_PAGE_SIZE;
          if (isZero(r.bytes, from, from + SNAPSHOT_PAGE_SIZE)) {
            p++;
            continue;
          }
          let q = p + 1;
          while (q < pages && q - p < 256 && !isZero(r.bytes, q * SNAPSHOT_PAGE_SIZE, (q + 1) * SNAPSHOT_PAGE_SIZE))
            q++;
          writeAll(fd, r.bytes.subarray(from, q * SNAPSHOT_PAGE_SIZE), at + from);
          p = q;
        }
        hash?.update(r.bytes);
        at += r.bytes.length;
      } else {
        const dirty = r.dirty as BigUint64Array;
        const words = Math.ceil(pages / 64);
        const bitmap = new BigUint64Array(words);
        bitmap.set(dirty.subarray(0, words));
        if (pages % 64 !== 0) bitmap[words - 1] &= (1n << BigInt(pages % 64)) - 1n;
        const count = popcount(bitmap, pages);
        const bitmapOffset = at;
        writeAll(fd, new Uint8Array(bitmap.buffer), at);
        at = pageAlign(at + bitmap.byteLength);
        const dataOffset = at;
        for (const p of setPages(bitmap, pages)) {
          const page = r.bytes.subarray(p * SNAPSHOT_PAGE_SIZE, (p + 1) * SNAPSHOT_PAGE_SIZE);
          writeAll(fd, page, at);
          hash?.update(page);
          at += SNAPSHOT_PAGE_SIZE;
        }
        region.dirty = { bitmapOffset, dataOffset, pages: count };
      }
      if (hash) region.sha256 = hash.digest('hex');
      memory.push(region);
    }
    const headerAt = at;
    const header: SnapshotHeader = {
      format: 'kvm-rx snapshot',
      version: SNAPSHOT_FORMAT_VERSION,
      kvmRx: options.kvmRx ?? packageVersion(),
      id: options.id ?? randomUUID(),
      created: new Date().toISOString(),
      kind: diff ? 'diff' : 'full',
      machine: options.machine,
      ...(options.parent ? { parent: { id: options.parent.id, path: parentPath(path, options.parent.path) } } : {}),
      host: options.host,
      state,
      memory,
      fileSize: 0,
    };
    // The header's own length is part of the file size it records: settle it in two rounds.
    let text = Buffer.from(JSON.stringify(header), 'utf8');
    header.fileSize = headerAt + text.length;
    text = Buffer.from(JSON.stringify(header), 'utf8');
    header.fileSize = headerAt + text.length;
    text = Buffer.from(JSON.stringify(header), 'utf8');
    if (headerAt + text.length !== header.fileSize) throw new Error('snapshot header size did not settle');
    writeAll(fd, text, headerAt);
    ftruncateSync(fd, header.fileSize);
    const preamble = Buffer.alloc(PREAMBLE_SIZE);
    preamble.write(SNAPSHOT_MAGIC, 0, 'latin1');
    preamble.writeUInt32LE(SNAPSHOT_FORMAT_VERSION, 8);
    preamble.writeUInt32LE(text.length, 12);
    preamble.writeBigUInt64LE(BigInt(headerAt), 16);
    createHash('sha256').update(text).digest().copy(preamble, 24);
    writeAll(fd, preamble, 0);
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, path);
    ok = true;
    return header;
  } finally {
    if (!ok) {
      try {
        closeSync(fd);
      } catch {
        // already closed
      }
      rmSync(tmp, { force: true });
    }
  }
}

function parentPath(path: string, parent: string): string {
  return isAbsolute(parent) ? relative(dirname(resolve(path)), parent) || parent : parent;
}

let cachedVersion: string | undefined;
function packageVersion(): string {
  if (cachedVersion !== undefined) return cachedVersion;
  for (let dir = __dirname; ; dir = dirname(dir)) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'kvm-rx') return (cachedVersion = pkg.version ?? 'unknown');
    }
    if (dirname(dir) === dir) return (cachedVersion = 'unknown');
  }
}

// ---------------------------------------------------------------------------------------------
// Reading.

function fail(code: SnapshotErrorCode, path: string, detail: string): never {
  throw new SnapshotError(code, path, detail);
}

function readExactly(fd: number, length: number, position: number): Buffer {
  const buf = Buffer.alloc(length);
  for (let done = 0; done < length;) {
    const n = readSync(fd, buf, done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return buf;
}

const isInt = (v: unknown, min = 0, max = Number.MAX_SAFE_INTEGER): v is number =>
  typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;
const isStr = (v: unknown, max = 4096): v is string => typeof v === 'string' && v.length <= max;
const SHA_RE = /^[0-9a-f]{64}$/;

/** @internal Checks that `value` is a {@link SnapshotFile} (what readSnapshotFile returns). */
export function checkSnapshotFileArg(name: string, value: unknown): asserts value is SnapshotFile {
  checkObject(name, value);
  const f = value as Partial<SnapshotFile>;
  if (typeof f.path !== 'string' || typeof f.header !== 'object' || f.header === null || !isList(f.regions))
    invalidType(name, 'a SnapshotFile (from readSnapshotFile)', value);
}

/** Checks the header's shape and that every part it declares lies inside the file. */
function checkHeader(path: string, h: unknown, fileSize: number, headerAt: number): SnapshotHeader {
  const bad: (detail: string) => never = (detail) => fail('ERR_KVM_SNAPSHOT_CORRUPT', path, `the header ${detail}`);
  const short: (detail: string) => never = (detail) => fail('ERR_KVM_SNAPSHOT_TRUNCATED', path, detail);
  if (typeof h !== 'object' || h === null || Array.isArray(h)) bad('is not an object');
  const o = h as Record<string, unknown>;
  if (o.format !== 'kvm-rx snapshot') bad(`format is ${JSON.stringify(o.format)}, not "kvm-rx snapshot"`);
  if (o.version !== SNAPSHOT_FORMAT_VERSION) bad(`version ${String(o.version)} differs from the preamble's`);
  for (const k of ['kvmRx', 'id', 'created', 'machine'] as const) if (!isStr(o[k])) bad(`field ${k} is not a string`);
  if (o.kind !== 'full' && o.kind !== 'diff') bad(`kind is ${JSON.stringify(o.kind)}`);
  if (o.kind === 'diff') {
    const p = o.parent as Record<string, unknown> | undefined;
    if (typeof p !== 'object' || p === null || !isStr(p.id) || !isStr(p.path) || p.path === '')
      bad('of a diff snapshot has no parent { id, path }');
  } else if (o.parent !== undefined) bad('of a full snapshot names a parent');
  const host = o.host as Record<string, unknown> | undefined;
  if (
    typeof host !== 'object' ||
    host === null ||
    !isStr(host.vendor) ||
    !isInt(host.signature, 0, 0xffff_ffff) ||
    !isStr(host.model) ||
    !isStr(host.kernel)
  )
    bad('host is not { vendor, signature, model, kernel }');
  const feats = host.features;
  if (
    typeof feats !== 'object' ||
    feats === null ||
    Array.isArray(feats) ||
    Object.keys(feats).length > 64 ||
    !Object.values(feats).every((v) => isInt(v, 0, 0xffff_ffff))
  )
    bad('host has no CPUID features { register: bits }');
  if (o.fileSize !== fileSize)
    (fileSize < (o.fileSize as number) ? short : bad)(
      `the header says the file has ${String(o.fileSize)} bytes; it has ${fileSize}`,
    );
  const st = o.state as Record<string, unknown> | undefined;
  if (
    typeof st !== 'object' ||
    st === null ||
    !isInt(st.offset) ||
    !isInt(st.length, 0, MAX_STATE) ||
    !isStr(st.sha256) ||
    !SHA_RE.test(st.sha256)
  )
    bad('state is not { offset, length (at most 256 MiB), sha256 }');
  if (st.offset + st.length > headerAt) bad('puts the state beyond the memory and header');
  if (!Array.isArray(o.memory) || o.memory.length > 64) bad('memory is not a list of at most 64 regions');
  const regions = o.memory as unknown[];
  const diff = o.kind === 'diff';
  let prevEnd = -1n;
  for (const [i, r] of regions.entries()) {
    const rr = r as Record<string, unknown>;
    const where = `memory region ${i}`;
    if (typeof r !== 'object' || r === null) bad(`${where} is not an object`);
    if (!isStr(rr.guestPhysAddr, 20) || !/^0x[0-9a-f]{1,13}$/.test(rr.guestPhysAddr))
      bad(`${where} has no 0x guestPhysAddr`);
    const gpa = BigInt(rr.guestPhysAddr);
    if (gpa % BigInt(SNAPSHOT_PAGE_SIZE) !== 0n || gpa <= prevEnd)
      bad(`${where} is unaligned or overlaps the one before`);
    if (!isInt(rr.size, SNAPSHOT_PAGE_SIZE, 2 ** 46) || rr.size % SNAPSHOT_PAGE_SIZE !== 0)
      bad(`${where} has a bad size`);
    const size = rr.size;
    prevEnd = gpa + BigInt(size) - 1n;
    if (rr.sha256 !== undefined && (!isStr(rr.sha256) || !SHA_RE.test(rr.sha256))) bad(`${where} has a bad sha256`);
    if (!diff) {
      if (!isInt(rr.offset) || rr.offset % SNAPSHOT_PAGE_SIZE !== 0 || rr.dirty !== undefined)
        bad(`${where} has no page-aligned offset`);
      if (rr.offset + size > headerAt)
        short(`${where} ends at byte ${rr.offset + size}, past the memory part (${headerAt} bytes)`);
    } else {
      const d = rr.dirty as Record<string, unknown> | undefined;
      if (
        typeof d !== 'object' ||
        d === null ||
        !isInt(d.bitmapOffset) ||
        !isInt(d.dataOffset) ||
        !isInt(d.pages, 0, size / SNAPSHOT_PAGE_SIZE) ||
        d.dataOffset % SNAPSHOT_PAGE_SIZE !== 0
      )
        bad(`${where} of a diff snapshot has no dirty { bitmapOffset, dataOffset, pages }`);
      const bitmapBytes = Math.ceil(size / SNAPSHOT_PAGE_SIZE / 64) * 8;
      if (d.bitmapOffset + bitmapBytes > headerAt || d.dataOffset + d.pages * SNAPSHOT_PAGE_SIZE > headerAt)
        short(`${where}'s pages end past the memory part (${headerAt} bytes)`);
    }
  }
  return o as unknown as SnapshotHeader;
}

/**
 * Reads a snapshot file and checks it: the magic, the format version, the header's checksum and
 * shape, that every part it declares lies inside the file, and the state's checksum; then decodes
 * the state. Memory is not read (it is mapped at restore), unless `verifyMemory`.
 *
 * @example
 * ```ts
 * const file = readSnapshotFile('vm.snap');
 * file.header.kind;      // 'full'
 * file.header.host;      // { vendor: 'AuthenticAMD', … }
 * ```
 * @throws {@link SnapshotError} `ERR_KVM_SNAPSHOT_CORRUPT`, `ERR_KVM_SNAPSHOT_TRUNCATED` or
 *   `ERR_KVM_SNAPSHOT_VERSION` saying what is wrong; `Error` from the file system (ENOENT)
 */
export function readSnapshotFile(path: string, options: ReadSnapshotOptions = {}): SnapshotFile {
  checkString('path', path);
  checkObject('options', options);
  const abs = resolve(path);
  const fd = openSync(abs, 'r');
  try {
    const fileSize = fstatSync(fd).size;
    if (fileSize < PREAMBLE_SIZE) {
      const head = readExactly(fd, Math.min(fileSize, 8), 0).toString('latin1');
      if (SNAPSHOT_MAGIC.startsWith(head) && fileSize > 0)
        fail(
          'ERR_KVM_SNAPSHOT_TRUNCATED',
          abs,
          `the file has ${fileSize} bytes, fewer than the ${PREAMBLE_SIZE}-byte preamble`,
        );
      fail('ERR_KVM_SNAPSHOT_CORRUPT', abs, 'not a kvm-rx snapshot (no KVMRXSNP magic)');
    }
    const pre = readExactly(fd, PREAMBLE_SIZE, 0);
    if (pre.toString('latin1', 0, 8) !== SNAPSHOT_MAGIC)
      fail('ERR_KVM_SNAPSHOT_CORRUPT', abs, 'not a kvm-rx snapshot (no KVMRXSNP magic)');
    const version = pre.readUInt32LE(8);
    if (version > SNAPSHOT_FORMAT_VERSION)
      fail(
        'ERR_KVM_SNAPSHOT_VERSION',
        abs,
        `it is format version ${version}, newer than this kvm-rx reads (${SNAPSHOT_FORMAT_VERSION}): restore it with the kvm-rx that wrote it or a newer one`,
      );
    if (version !== SNAPSHOT_FORMAT_VERSION) fail('ERR_KVM_SNAPSHOT_VERSION', abs, `unknown format version ${version}`);
    const headerLength = pre.readUInt32LE(12);
    const headerAt = pre.readBigUInt64LE(16);
    if (headerLength === 0 || headerLength > MAX_HEADER)
      fail('ERR_KVM_SNAPSHOT_CORRUPT', abs, `the header length ${headerLength} is out of range`);
    if (headerAt < BigInt(SNAPSHOT_PAGE_SIZE) || headerAt + BigInt(headerLength) > BigInt(fileSize))
      fail(
        headerAt + BigInt(headerLength) > BigInt(fileSize) &&
          headerAt < BigInt(Number.MAX_SAFE_INTEGER) &&
          headerAt >= BigInt(SNAPSHOT_PAGE_SIZE)
          ? 'ERR_KVM_SNAPSHOT_TRUNCATED'
          : 'ERR_KVM_SNAPSHOT_CORRUPT',
        abs,
        `the header (${headerLength} bytes at ${headerAt}) is not inside the file (${fileSize} bytes)`,
      );
    const at = Number(headerAt);
    const headerBytes = readExactly(fd, headerLength, at);
    if (!createHash('sha256').update(headerBytes).digest().equals(pre.subarray(24, 56)))
      fail('ERR_KVM_SNAPSHOT_CORRUPT', abs, 'the header checksum does not match');
    let raw: unknown;
    try {
      raw = JSON.parse(headerBytes.toString('utf8'));
    } catch (e) {
      fail('ERR_KVM_SNAPSHOT_CORRUPT', abs, `the header is not JSON (${(e as Error).message})`);
    }
    const header = checkHeader(abs, raw, fileSize, at);
    const stateBytes = readExactly(fd, header.state.length, header.state.offset);
    if (createHash('sha256').update(stateBytes).digest('hex') !== header.state.sha256)
      fail('ERR_KVM_SNAPSHOT_CORRUPT', abs, 'the state checksum does not match');
    let state: unknown;
    try {
      state = decodeSnapshotState(stateBytes.toString('utf8'));
    } catch (e) {
      fail('ERR_KVM_SNAPSHOT_CORRUPT', abs, `the state cannot be decoded (${(e as Error).message})`);
    }
    const regions = header.memory.map((r) => ({ ...r, gpa: BigInt(r.guestPhysAddr) }));
    if (options.verifyMemory === true) verifyMemory(abs, fd, header);
    return { path: abs, header, state, regions };
  } finally {
    closeSync(fd);
  }
}

function verifyMemory(path: string, fd: number, header: SnapshotHeader): void {
  const chunk = Buffer.alloc(1 << 20);
  for (const [i, r] of header.memory.entries()) {
    if (r.sha256 === undefined) continue;
    const hash = createHash('sha256');
    const [from, length] = r.dirty
      ? [r.dirty.dataOffset, r.dirty.pages * SNAPSHOT_PAGE_SIZE]
      : [r.offset as number, r.size];
    for (let done = 0; done < length;) {
      const n = readSync(fd, chunk, 0, Math.min(chunk.length, length - done), from + done);
      if (n === 0) fail('ERR_KVM_SNAPSHOT_TRUNCATED', path, `memory region ${i} ends early`);
      hash.update(chunk.subarray(0, n));
      done += n;
    }
    if (hash.digest('hex') !== r.sha256)
      fail('ERR_KVM_SNAPSHOT_CORRUPT', path, `memory region ${i}'s checksum does not match`);
  }
}

/**
 * A snapshot and the parents a diff snapshot builds on, oldest (the full one) first, each checked
 * by {@link readSnapshotFile}; every diff's parent must carry the id it names and the same memory
 * layout.
 *
 * @example `const chain = readSnapshotChain('vm.diff2.snap'); // [full, diff1, diff2]`
 * @throws {@link SnapshotError} as {@link readSnapshotFile}, and `ERR_KVM_SNAPSHOT_MISMATCH` for a
 *   parent that is not the one the diff was taken on, or a chain longer than 64
 */
export function readSnapshotChain(path: string, options: ReadSnapshotOptions = {}): SnapshotFile[] {
  const chain = [readSnapshotFile(path, options)];
  while (chain[0].header.kind === 'diff') {
    const child = chain[0];
    if (chain.length >= MAX_CHAIN)
      fail('ERR_KVM_SNAPSHOT_MISMATCH', path, `its chain of diff snapshots is longer than ${MAX_CHAIN}`);
    const parent = child.header.parent as { id: string; path: string };
    const parentAbs = resolve(dirname(child.path), parent.path);
    let file: SnapshotFile;
    try {
      file = readSnapshotFile(parentAbs, options);
    } catch (e) {
      if (e instanceof SnapshotError) throw e;
      fail('ERR_KVM_SNAPSHOT_MISMATCH', child.path, `its parent ${parentAbs} cannot be read (${(e as Error).message})`);
    }
    if (file.header.id !== parent.id)
      fail(
        'ERR_KVM_SNAPSHOT_MISMATCH',
        child.path,
        `its parent ${parentAbs} is snapshot ${file.header.id}, not ${parent.id} (it was replaced since)`,
      );
    const layout = (f: SnapshotFile) => f.regions.map((r) => `${r.guestPhysAddr}+${r.size}`).join(',');
    if (layout(file) !== layout(child) || file.header.machine !== child.header.machine)
      fail(
        'ERR_KVM_SNAPSHOT_MISMATCH',
        child.path,
        `its parent ${parentAbs} has another memory layout or machine kind`,
      );
    chain.unshift(file);
  }
  return chain;
}

/**
 * Maps a snapshot chain's memory as guest RAM, region by region: the full snapshot's pages mapped
 * privately from its file (constant time, copy-on-write), then each diff's pages copied over them
 * in order (time in proportion to the pages the diffs hold). Close the memories when done (after
 * the VM's slots). With `into` (one private `GuestMemory` per region, of its size: a prepared
 * VM's RAM, already in its memory slots), the file is mapped over those in place
 * (`GuestMemory.replaceWithFile`) and they are returned.
 *
 * @example
 * ```ts
 * const chain = readSnapshotChain('vm.snap');
 * const [ram] = mapSnapshotMemory(chain);
 * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: chain[0].regions[0].gpa, memory: ram });
 * ```
 * @throws {@link KvmError} from `mmap`; `Error` from the file system (a mapping made is closed);
 *   `TypeError` `ERR_INVALID_ARG_VALUE` for `into` that does not fit the snapshot's regions
 */
export function mapSnapshotMemory(
  chain: readonly SnapshotFile[],
  backend?: IoctlBackend,
  into?: readonly GuestMemory[],
): GuestMemory[] {
  if (!isList(chain) || chain.length === 0 || chain[0].header.kind !== 'full')
    invalidType('chain', 'a snapshot chain starting with a full snapshot (readSnapshotChain)', chain);
  const base = chain[0];
  if (into !== undefined) {
    if (
      !isList(into) ||
      into.length !== base.regions.length ||
      into.some((m, i) => !(m instanceof GuestMemory) || m.size !== base.regions[i].size)
    )
      invalidValue(
        'into',
        `must be ${base.regions.length} GuestMemory of the snapshot's region sizes (${base.regions.map((r) => r.size).join(', ')})`,
        into,
      );
  }
  const out: GuestMemory[] = [];
  try {
    for (const [i, r] of base.regions.entries()) {
      if (into !== undefined) {
        into[i].replaceWithFile(base.path, { offset: r.offset });
        out.push(into[i]);
      } else
        out.push(GuestMemory.fromFile(base.path, { offset: r.offset, size: r.size, ...(backend ? { backend } : {}) }));
    }
    for (const diff of chain.slice(1)) {
      const fd = openSync(diff.path, 'r');
      try {
        for (const [i, r] of diff.regions.entries()) {
          const d = r.dirty as NonNullable<SnapshotRegionHeader['dirty']>;
          const pages = r.size / SNAPSHOT_PAGE_SIZE;
          const bitmap = new BigUint64Array(readExactly(fd, Math.ceil(pages / 64) * 8, d.bitmapOffset).buffer.slice(0));
          const list = setPages(bitmap, pages);
          const counted = list.length;
          if (counted !== d.pages)
            fail(
              'ERR_KVM_SNAPSHOT_CORRUPT',
              diff.path,
              `memory region ${i}'s bitmap has ${counted} pages; the header says ${d.pages}`,
            );
          const bytes = out[i].bytes;
          let at = d.dataOffset;
          for (const p of list) {
            const n = readSync(fd, bytes, p * SNAPSHOT_PAGE_SIZE, SNAPSHOT_PAGE_SIZE, at);
            if (n !== SNAPSHOT_PAGE_SIZE)
              fail('ERR_KVM_SNAPSHOT_TRUNCATED', diff.path, `memory region ${i} ends early`);
            at += SNAPSHOT_PAGE_SIZE;
          }
        }
      } finally {
        closeSync(fd);
      }
    }
    return out;
  } catch (e) {
    if (into === undefined) for (const m of out) m.close(); // the caller's own are left to it
    throw e;
  }
}

/**
 * Merges a diff snapshot and the chain it builds on into one full snapshot at `outPath` (which
 * keeps the diff's id, so diffs taken on top of it still find their parent). `outPath` may be the
 * diff's own path.
 *
 * @example `mergeSnapshots('vm.diff2.snap', 'vm.merged.snap');`
 * @throws {@link SnapshotError} as {@link readSnapshotChain}; `Error` from the file system
 */
export function mergeSnapshots(path: string, outPath: string): SnapshotHeader {
  checkString('outPath', outPath);
  const chain = readSnapshotChain(path);
  const last = chain[chain.length - 1];
  const memories = mapSnapshotMemory(chain);
  try {
    const header = writeSnapshotFile(outPath, {
      machine: last.header.machine,
      state: last.state,
      regions: last.regions.map((r, i) => ({ guestPhysAddr: r.gpa, bytes: memories[i].bytes })),
      host: last.header.host,
      kvmRx: last.header.kvmRx,
      checksumMemory: last.regions.some((r) => r.sha256 !== undefined),
      id: last.header.id,
    });
    return header;
  } finally {
    for (const m of memories) m.close();
  }
}
