/**
 * Argument checks shared by every public function. Each throws a `TypeError` or `RangeError`
 * carrying a Node-style `code` before any system call is made.
 *
 * @module
 */
import { KvmRangeError, KvmTypeError } from './errors';

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'bigint') return `type bigint (${value}n)`;
  if (typeof value === 'number') return `type number (${value})`;
  if (typeof value === 'string') return `type string ('${value.length > 20 ? value.slice(0, 20) + '…' : value}')`;
  if (typeof value === 'object') return `an instance of ${value.constructor?.name ?? 'Object'}`;
  return `type ${typeof value}`;
}

/** Throws `ERR_INVALID_ARG_TYPE`. */
export function invalidType(name: string, expected: string, value: unknown): never {
  throw new KvmTypeError(
    'ERR_INVALID_ARG_TYPE',
    `The "${name}" argument must be ${expected}. Received ${describe(value)}`,
  );
}

/** Throws `ERR_OUT_OF_RANGE`. */
export function outOfRange(name: string, range: string, value: unknown): never {
  throw new KvmRangeError(
    'ERR_OUT_OF_RANGE',
    `The value of "${name}" is out of range. It must be ${range}. Received ${String(value)}`,
  );
}

/** Throws `ERR_INVALID_ARG_VALUE`. */
export function invalidValue(name: string, reason: string, value?: unknown): never {
  const shown = value === undefined ? '' : ` Received ${describe(value)}`;
  throw new KvmTypeError('ERR_INVALID_ARG_VALUE', `The argument "${name}" ${reason}.${shown}`);
}

/** Checks an integer `number` in `[min, max]`. Returns it. */
export function checkInt(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number') invalidType(name, 'of type number', value);
  if (!Number.isInteger(value) || value < min || value > max) {
    outOfRange(name, `an integer >= ${min} and <= ${max}`, value);
  }
  return value;
}

/** Checks an unsigned 8/16/32-bit integer. */
export function checkU8(name: string, value: unknown): number {
  return checkInt(name, value, 0, 0xff);
}
export function checkU16(name: string, value: unknown): number {
  return checkInt(name, value, 0, 0xffff);
}
export function checkU32(name: string, value: unknown): number {
  return checkInt(name, value, 0, 0xffff_ffff);
}
export function checkI32(name: string, value: unknown): number {
  return checkInt(name, value, -0x8000_0000, 0x7fff_ffff);
}

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

/** Checks an unsigned 64-bit value given as a `bigint` (a safe-integer `number` is accepted too). */
export function checkU64(name: string, value: unknown): bigint {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) outOfRange(name, `a safe integer >= 0, or a bigint`, value);
    return BigInt(value);
  }
  if (typeof value !== 'bigint') invalidType(name, 'a bigint or a safe integer', value);
  if (value < 0n || value > U64_MAX) outOfRange(name, `>= 0n and <= 2n ** 64n - 1n`, `${value}n`);
  return value;
}

/** Checks a signed 64-bit value given as a `bigint` (or a safe-integer number). */
export function checkI64(name: string, value: unknown): bigint {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) outOfRange(name, `a safe integer, or a bigint`, value);
    return BigInt(value);
  }
  if (typeof value !== 'bigint') invalidType(name, 'a bigint or a safe integer', value);
  if (value < I64_MIN || value > I64_MAX) outOfRange(name, `>= -(2n ** 63n) and <= 2n ** 63n - 1n`, `${value}n`);
  return value;
}

/** Checks a boolean. */
export function checkBool(name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') invalidType(name, 'of type boolean', value);
  return value;
}

/** Checks a plain object (not null, not an array). */
export function checkObject<T extends object>(name: string, value: unknown): T {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) invalidType(name, 'of type object', value);
  return value as T;
}

/** Checks a Uint8Array (a Buffer is one). */
export function checkBytes(name: string, value: unknown): Uint8Array {
  if (!(value instanceof Uint8Array)) invalidType(name, 'an instance of Uint8Array', value);
  return value;
}

/** Checks a string. */
export function checkString(name: string, value: unknown): string {
  if (typeof value !== 'string') invalidType(name, 'of type string', value);
  if (value.includes('\0')) invalidValue(name, 'must not contain null bytes', value);
  return value;
}
