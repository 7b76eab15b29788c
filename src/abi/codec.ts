/**
 * A small struct codec: kernel structs ⇄ plain objects with camelCase field names.
 *
 * Layouts come from `layouts.ts` (generated from the C headers, checked against the addon's
 * `offsetof`/`sizeof` table). 64-bit fields decode to `bigint`, narrower ones to `number`, byte
 * arrays to `Uint8Array`, other scalar arrays to arrays. Padding and reserved fields are hidden:
 * they are never decoded and always encoded as zero. Flexible array members are left to the
 * collection types in `fam.ts`.
 *
 * @module
 */
import {
  checkI32,
  checkI64,
  checkInt,
  checkU16,
  checkU32,
  checkU64,
  checkU8,
  invalidType,
  invalidValue,
} from './validate';
import { KvmTypeError } from './errors';
import { layouts } from './layouts';

/** A scalar field type. */
export type Scalar = 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'u64' | 'i64';

/** One field of a struct or union. `offset` is relative to the enclosing aggregate. */
export interface FieldDef {
  /** The C name. */
  c: string;
  offset: number;
  /** Size in bytes of the whole member (all elements for an array; 0 for a flexible array). */
  size: number;
  /** A scalar, an inline aggregate, or a reference to another generated layout (`'struct kvm_x'`). */
  type: Scalar | StructDef | `struct ${string}`;
  /** Array length (first dimension); 0 for a flexible array member. */
  count?: number;
  dims?: number[];
  /** Padding/reserved: not decoded, encoded as zero. */
  hidden?: boolean;
}

/** A struct or union layout. */
export interface StructDef {
  kind: 'struct' | 'union';
  size: number;
  fields: Record<string, FieldDef>;
}

export const SCALAR_SIZE: Record<Scalar, number> = { u8: 1, i8: 1, u16: 2, i16: 2, u32: 4, i32: 4, u64: 8, i64: 8 };

function resolve(type: FieldDef['type']): Scalar | StructDef {
  if (typeof type === 'string' && type.startsWith('struct ')) {
    const def = layouts[type.slice(7)];
    if (def === undefined) throw new Error(`no layout for ${type}`);
    return def;
  }
  return type as Scalar | StructDef;
}

function readScalar(view: DataView, at: number, t: Scalar): number | bigint {
  switch (t) {
    case 'u8':
      return view.getUint8(at);
    case 'i8':
      return view.getInt8(at);
    case 'u16':
      return view.getUint16(at, true);
    case 'i16':
      return view.getInt16(at, true);
    case 'u32':
      return view.getUint32(at, true);
    case 'i32':
      return view.getInt32(at, true);
    case 'u64':
      return view.getBigUint64(at, true);
    case 'i64':
      return view.getBigInt64(at, true);
  }
}

function writeScalar(view: DataView, at: number, t: Scalar, value: unknown, name: string): void {
  switch (t) {
    case 'u8':
      view.setUint8(at, checkU8(name, value));
      return;
    case 'i8':
      view.setInt8(at, checkInt(name, value, -128, 127));
      return;
    case 'u16':
      view.setUint16(at, checkU16(name, value), true);
      return;
    case 'i16':
      view.setInt16(at, checkInt(name, value, -32768, 32767), true);
      return;
    case 'u32':
      view.setUint32(at, checkU32(name, value), true);
      return;
    case 'i32':
      view.setInt32(at, checkI32(name, value), true);
      return;
    case 'u64':
      view.setBigUint64(at, checkU64(name, value), true);
      return;
    case 'i64':
      view.setBigInt64(at, checkI64(name, value), true);
      return;
  }
}

/** Decodes the struct at `offset` of `view` into a plain object. */
export function decodeStruct<T = Record<string, unknown>>(def: StructDef, view: DataView, offset = 0): T {
  const out: Record<string, unknown> = {};
  for (const [key, f] of Object.entries(def.fields)) {
    if (f.hidden || f.count === 0) continue;
    const at = offset + f.offset;
    const t = resolve(f.type);
    if (typeof t === 'string') {
      if (f.count === undefined) {
        out[key] = readScalar(view, at, t);
      } else {
        const n = f.size / SCALAR_SIZE[t];
        if (t === 'u8') {
          out[key] = new Uint8Array(view.buffer.slice(view.byteOffset + at, view.byteOffset + at + n));
        } else {
          const arr: Array<number | bigint> = [];
          for (let i = 0; i < n; i++) arr.push(readScalar(view, at + i * SCALAR_SIZE[t], t));
          out[key] = arr;
        }
      }
    } else if (f.count === undefined) {
      out[key] = decodeStruct(t, view, at);
    } else {
      const arr: unknown[] = [];
      const n = f.size / t.size;
      for (let i = 0; i < n; i++) arr.push(decodeStruct(t, view, at + i * t.size));
      out[key] = arr;
    }
  }
  return out as T;
}

/**
 * Encodes `value` into the struct at `offset` of `view`. Fields absent from `value` keep the bytes
 * already there (zero in a fresh buffer). Unknown field names, wrong types and out-of-range values
 * throw `TypeError`/`RangeError` with an `ERR_*` code; `name` prefixes the field path in messages.
 */
export function encodeStruct(def: StructDef, value: unknown, view: DataView, offset = 0, name = 'value'): void {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) invalidType(name, 'of type object', value);
  const obj = value as Record<string, unknown>;
  for (const key of Object.keys(obj)) {
    const f = def.fields[key];
    if (f === undefined || (f.count === 0 && obj[key] !== undefined && !Array.isArray(obj[key]))) {
      if (f === undefined) invalidValue(`${name}.${key}`, 'is not a field of this struct');
    }
  }
  for (const [key, f] of Object.entries(def.fields)) {
    if (f.count === 0) continue;
    const at = offset + f.offset;
    const v = obj[key];
    const path = `${name}.${key}`;
    if (f.hidden) {
      if (v !== undefined) invalidValue(path, 'is reserved and cannot be set');
      continue;
    }
    if (v === undefined) continue;
    const t = resolve(f.type);
    if (typeof t === 'string') {
      if (f.count === undefined) {
        writeScalar(view, at, t, v, path);
      } else {
        const n = f.size / SCALAR_SIZE[t];
        if (t === 'u8' && v instanceof Uint8Array) {
          if (v.length > n) invalidValue(path, `must have at most ${n} bytes`, v);
          new Uint8Array(view.buffer, view.byteOffset + at, n).fill(0).set(v);
        } else {
          if (!Array.isArray(v)) invalidType(path, t === 'u8' ? 'a Uint8Array or an array' : 'an array', v);
          if (v.length > n) invalidValue(path, `must have at most ${n} elements`, v);
          for (let i = 0; i < n; i++) {
            writeScalar(
              view,
              at + i * SCALAR_SIZE[t],
              t,
              i < v.length ? v[i] : t === 'u64' || t === 'i64' ? 0n : 0,
              `${path}[${i}]`,
            );
          }
        }
      }
    } else if (f.count === undefined) {
      encodeStruct(t, v, view, at, path);
    } else {
      if (!Array.isArray(v)) invalidType(path, 'an array', v);
      const n = f.size / t.size;
      if (v.length > n) invalidValue(path, `must have at most ${n} elements`, v);
      for (let i = 0; i < v.length; i++) encodeStruct(t, v[i], view, at + i * t.size, `${path}[${i}]`);
    }
  }
}

/**
 * Throws `ERR_INVALID_ARG_TYPE` naming the first settable field of `def` that `value` leaves out
 * (`undefined`), for ioctls whose argument is a whole struct the kernel overwrites (`KVM_SET_REGS`):
 * `structBytes` alone would write a missing field as 0. Only the top level is checked; `hint`
 * ends the message.
 */
export function checkComplete(def: StructDef, value: unknown, name: string, hint = ''): void {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) invalidType(name, 'of type object', value);
  const obj = value as Record<string, unknown>;
  for (const [key, f] of Object.entries(def.fields)) {
    if (f.hidden || f.count === 0 || obj[key] !== undefined) continue;
    const t = resolve(f.type);
    const expected =
      typeof t !== 'string'
        ? 'of type object'
        : f.count !== undefined
          ? 'an array'
          : t === 'u64' || t === 'i64'
            ? 'a bigint or a safe integer'
            : 'an integer';
    throw new KvmTypeError(
      'ERR_INVALID_ARG_TYPE',
      `The "${name}.${key}" argument must be ${expected}. Received undefined${hint === '' ? '' : ` (${hint})`}`,
    );
  }
}

/** A fresh zeroed buffer of `def.size` bytes holding `value` (which may be partial). */
export function structBytes(def: StructDef, value?: unknown, name = 'value'): Uint8Array {
  const bytes = new Uint8Array(def.size);
  if (value !== undefined) encodeStruct(def, value, new DataView(bytes.buffer), 0, name);
  return bytes;
}

/** DataView over a whole Uint8Array. */
export function dv(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Absolute offset of a dotted C path (`'cs.selector'`, `'io.port'`) within a layout. */
export function offsetOf(def: StructDef, cPath: string): number {
  let cur: StructDef = def;
  let off = 0;
  const parts = cPath.split('.');
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i].replace(/\[0\]$/, '');
    const f = Object.values(cur.fields).find((x) => x.c === part);
    if (f === undefined) throw new Error(`no field ${cPath}`);
    off += f.offset;
    if (i < parts.length - 1) {
      const t = resolve(f.type);
      if (typeof t === 'string') throw new Error(`${cPath}: ${part} is a scalar`);
      cur = t;
    }
  }
  return off;
}

/** Every dotted C path of a layout with its absolute offset (what the addon's table lists). */
export function allOffsets(
  def: StructDef,
  prefix = '',
  base = 0,
  out = new Map<string, number>(),
): Map<string, number> {
  for (const f of Object.values(def.fields)) {
    const path = prefix + f.c;
    out.set(path, base + f.offset);
    const t = f.type;
    if (typeof t === 'object') {
      allOffsets(t, path + (f.count !== undefined ? '[0]' : '') + '.', base + f.offset, out);
    }
  }
  return out;
}
