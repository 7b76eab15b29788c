/**
 * Values across the sandbox boundary: the host encodes arguments into the call area and decodes
 * what the guest wrote there, checking every tag, length and byte (docs/sandbox.md, "Values").
 *
 * @module
 */
import { KvmRangeError, KvmTypeError } from '../../abi/errors';
import { ValueTag } from './abi';
import { SandboxError } from './errors';

/** A JSON value. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/**
 * What crosses the boundary: `undefined`, `null`, booleans, numbers (doubles), bigints (signed 64
 * bits), strings, `Uint8Array`s, and any other JSON value (arrays, plain objects), sent as JSON text.
 */
export type SandboxValue = undefined | bigint | Uint8Array | JsonValue;

const encoder = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });
const lenientUtf8 = new TextDecoder('utf-8');

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;

function align8(n: number): number {
  return (n + 7) & ~7;
}

/**
 * Encodes `value` at `bytes[at..end)`; returns the offset after it.
 * @throws `TypeError` `ERR_INVALID_ARG_TYPE` for a value that cannot cross (a function, a symbol,
 *   another typed array, an object JSON cannot encode); `RangeError` `ERR_OUT_OF_RANGE` for a bigint
 *   outside 64 bits or when the values do not fit
 */
export function encodeValue(
  bytes: Uint8Array,
  view: DataView,
  at: number,
  end: number,
  value: unknown,
  what: string,
): number {
  let tag: number;
  let payload: Uint8Array | undefined;
  let scalar: ((o: number) => void) | undefined;
  let len = 0;
  if (value === undefined) tag = ValueTag.undefined;
  else if (value === null) tag = ValueTag.null;
  else if (typeof value === 'boolean') {
    tag = ValueTag.bool;
    len = 1;
    scalar = (o) => view.setUint8(o, value ? 1 : 0);
  } else if (typeof value === 'number') {
    tag = ValueTag.f64;
    len = 8;
    scalar = (o) => view.setFloat64(o, value, true);
  } else if (typeof value === 'bigint') {
    if (value < I64_MIN || value > I64_MAX)
      throw new KvmRangeError('ERR_OUT_OF_RANGE', `${what} ${value} is outside a signed 64-bit integer`);
    tag = ValueTag.i64;
    len = 8;
    scalar = (o) => view.setBigInt64(o, value, true);
  } else if (typeof value === 'string') {
    tag = ValueTag.string;
    payload = encoder.encode(value);
  } else if (value instanceof Uint8Array) {
    tag = ValueTag.bytes;
    payload = value;
  } else if (typeof value === 'object' && !ArrayBuffer.isView(value) && !(value instanceof ArrayBuffer)) {
    let text: string | undefined;
    try {
      text = JSON.stringify(value);
    } catch (e) {
      throw new KvmTypeError('ERR_INVALID_ARG_TYPE', `${what} cannot be sent as JSON: ${(e as Error).message}`);
    }
    if (text === undefined) throw new KvmTypeError('ERR_INVALID_ARG_TYPE', `${what} cannot be sent as JSON`);
    tag = ValueTag.json;
    payload = encoder.encode(text);
  } else {
    throw new KvmTypeError(
      'ERR_INVALID_ARG_TYPE',
      `${what} must be undefined, null, a boolean, number, bigint, string, Uint8Array or JSON value. Received ${ArrayBuffer.isView(value) ? value.constructor.name : typeof value}`,
    );
  }
  if (payload !== undefined) len = payload.length;
  const next = align8(at + 8 + len + (payload !== undefined ? 1 : 0));
  if (next > end)
    throw new KvmRangeError('ERR_OUT_OF_RANGE', `the arguments do not fit in the call area (${end} bytes)`);
  view.setUint32(at, tag, true);
  view.setUint32(at + 4, len, true);
  if (scalar !== undefined) scalar(at + 8);
  if (payload !== undefined) bytes.set(payload, at + 8);
  bytes.fill(0, at + 8 + len, next);
  return next;
}

function bad(message: string): never {
  throw new SandboxError('ERR_SANDBOX_BAD_VALUE', message, { poisoned: true });
}

/** A decoded `KVMRX_T_ERROR` value. */
export class DecodedError {
  constructor(
    readonly name: string,
    readonly message: string,
  ) {}
}

/**
 * Decodes the value at `bytes[at..end)` (guest-written): returns it and the offset after it.
 * @throws {@link SandboxError} `ERR_SANDBOX_BAD_VALUE` (poisoned) for anything malformed
 */
export function decodeValue(
  bytes: Uint8Array,
  view: DataView,
  at: number,
  end: number,
): { value: SandboxValue | DecodedError; next: number } {
  if (at + 8 > end) bad(`a value header at offset ${at} runs past the ${end} bytes the guest wrote`);
  const tag = view.getUint32(at, true);
  const len = view.getUint32(at + 4, true);
  if (len > end - at - 8) bad(`a value of ${len} bytes at offset ${at} runs past the ${end} bytes the guest wrote`);
  const p = at + 8;
  let value: SandboxValue | DecodedError;
  let padded = 0;
  switch (tag) {
    case ValueTag.undefined:
    case ValueTag.null:
      if (len !== 0) bad(`a ${tag === ValueTag.null ? 'null' : 'undefined'} value with ${len} payload bytes`);
      value = tag === ValueTag.null ? null : undefined;
      break;
    case ValueTag.bool: {
      if (len !== 1) bad(`a boolean of ${len} bytes (1 expected)`);
      const b = bytes[p];
      if (b > 1) bad(`a boolean byte ${b} (0 or 1 expected)`);
      value = b === 1;
      break;
    }
    case ValueTag.f64:
      if (len !== 8) bad(`a number of ${len} bytes (8 expected)`);
      value = view.getFloat64(p, true);
      break;
    case ValueTag.i64:
      if (len !== 8) bad(`a bigint of ${len} bytes (8 expected)`);
      value = view.getBigInt64(p, true);
      break;
    case ValueTag.bytes:
      value = bytes.slice(p, p + len);
      padded = 1;
      break;
    case ValueTag.string:
    case ValueTag.json: {
      let text: string;
      try {
        text = strictUtf8.decode(bytes.subarray(p, p + len));
      } catch {
        bad(`a ${tag === ValueTag.json ? 'JSON' : 'string'} value of ${len} bytes that is not valid UTF-8`);
      }
      if (tag === ValueTag.string) value = text;
      else {
        try {
          value = JSON.parse(text) as JsonValue;
        } catch (e) {
          bad(`a JSON value that does not parse: ${(e as Error).message}`);
        }
      }
      padded = 1;
      break;
    }
    case ValueTag.error: {
      if (len < 4) bad(`an error value of ${len} bytes (4 at least)`);
      const nameLen = view.getUint32(p, true);
      if (nameLen > len - 4 || nameLen > 256) bad(`an error value whose name of ${nameLen} bytes does not fit`);
      const name = lenientUtf8.decode(bytes.subarray(p + 4, p + 4 + nameLen)) || 'Error';
      const message = lenientUtf8.decode(bytes.subarray(p + 4 + nameLen, p + len));
      value = new DecodedError(name, message);
      padded = 1;
      break;
    }
    default:
      bad(`unknown value tag ${tag} at offset ${at}`);
  }
  return { value, next: Math.min(end, align8(p + len + padded)) };
}
