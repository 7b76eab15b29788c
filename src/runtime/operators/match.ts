/**
 * Port and address matchers shared by the handler operators.
 *
 * @module
 */
import { checkU16, checkU64, invalidType, outOfRange } from '../../abi/validate';

/** An inclusive range of I/O ports, `[from, to]`. */
export type PortRange = readonly [from: number, to: number];

/**
 * Which I/O ports a handler answers:
 * - a port number: `0x3f8`
 * - an inclusive range `[from, to]`: `[0x3f8, 0x3ff]`
 * - an array of ports and ranges: `[0x60, [0x64, 0x64], [0x70, 0x71]]`
 * - a predicate: `(port) => (port & 0xfff8) === 0x3f8`
 *
 * A two-number array is always a range: to match the two ports 0x60 and 0x64 only, write
 * `[[0x60, 0x60], [0x64, 0x64]]` (or `[0x60, [0x64, 0x64]]`).
 */
export type PortMatcher = number | PortRange | ReadonlyArray<number | PortRange> | ((port: number) => boolean);

/** A window of guest-physical addresses, `[from, from + size)`. */
export interface AddressRange {
  /** First guest-physical address of the window (a safe-integer number works too). */
  from: bigint | number;
  /** Size of the window in bytes (> 0). */
  size: number | bigint;
}

/** Which MMIO addresses a handler answers: one {@link AddressRange} or several. */
export type RangeMatcher = AddressRange | ReadonlyArray<AddressRange>;

function isRange(value: unknown): value is PortRange {
  return Array.isArray(value) && value.length === 2 && typeof value[0] === 'number' && typeof value[1] === 'number';
}

function checkPortRange(name: string, range: PortRange): [number, number] {
  const from = checkU16(`${name}[0]`, range[0]);
  const to = checkU16(`${name}[1]`, range[1]);
  if (to < from) outOfRange(`${name}[1]`, `>= ${name}[0] (${from})`, to);
  return [from, to];
}

/**
 * Compiles a {@link PortMatcher} into a predicate, checking it once.
 *
 * @param matcher - port, range, list or predicate
 * @param name - argument name used in error messages
 * @return a predicate on the port number
 * @throws TypeError `ERR_INVALID_ARG_TYPE`, RangeError `ERR_OUT_OF_RANGE` for an invalid matcher
 */
export function portMatcher(matcher: PortMatcher, name = 'ports'): (port: number) => boolean {
  if (typeof matcher === 'function') return matcher;
  if (typeof matcher === 'number') {
    const port = checkU16(name, matcher);
    return (p) => p === port;
  }
  if (!Array.isArray(matcher)) invalidType(name, 'a port number, a [from, to] range, an array or a function', matcher);
  const items: ReadonlyArray<number | PortRange> = isRange(matcher)
    ? [matcher as PortRange]
    : (matcher as ReadonlyArray<number | PortRange>);
  const ranges = items.map((item, i): [number, number] => {
    if (typeof item === 'number') {
      const port = checkU16(`${name}[${i}]`, item);
      return [port, port];
    }
    if (!isRange(item)) invalidType(`${name}[${i}]`, 'a port number or a [from, to] range', item);
    return checkPortRange(`${name}[${i}]`, item);
  });
  return (p) => ranges.some(([from, to]) => p >= from && p <= to);
}

/**
 * Compiles a {@link RangeMatcher} into a lookup, checking it once.
 *
 * @param matcher - one address range or an array of them
 * @param name - argument name used in error messages
 * @return a function giving the matched range's `from` for an address, or `undefined`
 * @throws TypeError `ERR_INVALID_ARG_TYPE`, RangeError `ERR_OUT_OF_RANGE` for an invalid range
 */
export function rangeMatcher(matcher: RangeMatcher, name = 'range'): (addr: bigint) => bigint | undefined {
  const list: ReadonlyArray<AddressRange> = Array.isArray(matcher) ? matcher : [matcher as AddressRange];
  if (typeof matcher !== 'object' || matcher === null)
    invalidType(name, 'an address range { from, size } or an array of them', matcher);
  const ranges = list.map((r, i): [bigint, bigint] => {
    const at = Array.isArray(matcher) ? `${name}[${i}]` : name;
    if (typeof r !== 'object' || r === null) invalidType(at, 'an address range { from, size }', r);
    const from = checkU64(`${at}.from`, r.from);
    const size = checkU64(`${at}.size`, r.size);
    if (size === 0n) outOfRange(`${at}.size`, '> 0', r.size);
    return [from, from + size];
  });
  return (addr) => {
    for (const [from, end] of ranges) if (addr >= from && addr < end) return from;
    return undefined;
  };
}
