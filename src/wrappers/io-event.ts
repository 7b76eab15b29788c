/**
 * `IoEventAddress` and `NoDatamatch`: the address and match value of an ioeventfd
 * (`VmFd#registerIoevent`), and the bus of a coalesced MMIO/PIO zone.
 *
 * @module
 */
import { checkInt, checkObject, checkU64, invalidValue, outOfRange } from '../abi/validate';

/**
 * A guest I/O address on one of the two buses (kvm-ioctls' `IoEventAddress::Pio(u64)` /
 * `IoEventAddress::Mmio(u64)`). Immutable.
 *
 * @example
 * ```ts
 * vm.registerIoevent(evt, IoEventAddress.pio(0x3f8), NoDatamatch);
 * vm.registerIoevent(evt, IoEventAddress.mmio(0xd000_0000n), NoDatamatch);
 * ```
 */
export class IoEventAddress {
  /** `'pio'` (port I/O, `KVM_IOEVENTFD_FLAG_PIO`) or `'mmio'`. */
  readonly kind: 'pio' | 'mmio';
  /** The port number or guest-physical address. */
  readonly addr: bigint;

  private constructor(kind: 'pio' | 'mmio', addr: bigint) {
    this.kind = kind;
    this.addr = addr;
    Object.freeze(this);
  }

  /**
   * A port I/O address (`IoEventAddress::Pio`).
   * @example `IoEventAddress.pio(0xf4)`
   * @throws `TypeError`/`RangeError` unless a u64 (bigint or safe integer)
   */
  static pio(port: bigint | number): IoEventAddress {
    return new IoEventAddress('pio', checkU64('port', port));
  }

  /**
   * A memory-mapped I/O address (`IoEventAddress::Mmio`).
   * @example `IoEventAddress.mmio(0x1000n)`
   * @throws `TypeError`/`RangeError` unless a u64 (bigint or safe integer)
   */
  static mmio(addr: bigint | number): IoEventAddress {
    return new IoEventAddress('mmio', checkU64('addr', addr));
  }

  /** `Pio(0xf4)` / `Mmio(0x1000)`. */
  toString(): string {
    return `${this.kind === 'pio' ? 'Pio' : 'Mmio'}(0x${this.addr.toString(16)})`;
  }
}

/**
 * "Signal on any write" (kvm-ioctls' zero-sized `NoDatamatch`): the ioeventfd fires for every
 * write to the address, whatever its value and width (`len = 0`, no `KVM_IOEVENTFD_FLAG_DATAMATCH`).
 *
 * @example `vm.registerIoevent(evt, IoEventAddress.pio(0xf4), NoDatamatch);`
 */
export const NoDatamatch: { readonly kind: 'NoDatamatch'; readonly length: 0 } = Object.freeze({
  kind: 'NoDatamatch',
  length: 0,
} as const);

/** The type of {@link NoDatamatch}. */
export type NoDatamatch = typeof NoDatamatch;

/**
 * An explicit datamatch: the ioeventfd fires only for a write of exactly `length` bytes whose
 * value is `value`. kvm-ioctls takes the width from the Rust type (`u8` → 1, `u16` → 2, `u32` → 4,
 * `u64` → 8); TypeScript has no such types, so the width is spelled out.
 *
 * @example `vm.registerIoevent(evt, IoEventAddress.pio(0xc2), { value: 0x1337, length: 2 });`
 */
export interface Datamatch {
  /** The value to match; must fit in `length` bytes. */
  value: bigint | number;
  /** The access width in bytes. */
  length: 1 | 2 | 4 | 8;
}

/** What {@link VmFd.registerIoevent} accepts as its datamatch. */
export type IoEventDatamatch = NoDatamatch | Datamatch;

/** Builders for explicit datamatches, named after the Rust types kvm-ioctls infers widths from. */
export const Datamatch = Object.freeze({
  /** `{ value, length: 1 }` @example `Datamatch.u8(0x7f)` */
  u8: (value: number): Datamatch => ({ value, length: 1 }),
  /** `{ value, length: 2 }` @example `Datamatch.u16(0x1337)` */
  u16: (value: number): Datamatch => ({ value, length: 2 }),
  /** `{ value, length: 4 }` @example `Datamatch.u32(0xdeadbeef)` */
  u32: (value: number): Datamatch => ({ value, length: 4 }),
  /** `{ value, length: 8 }` @example `Datamatch.u64(0x1122334455667788n)` */
  u64: (value: bigint | number): Datamatch => ({ value, length: 8 }),
});

/** @internal Validates a datamatch: `{ len, datamatch }` for `kvm_ioeventfd` (len 0 = none). */
export function datamatchFields(datamatch: unknown): { len: number; datamatch: bigint } {
  if (datamatch === NoDatamatch) return { len: 0, datamatch: 0n };
  const d = checkObject<Datamatch>('datamatch', datamatch);
  const len = checkInt('datamatch.length', d.length, 1, 8);
  if (len !== 1 && len !== 2 && len !== 4 && len !== 8) invalidValue('datamatch.length', 'must be 1, 2, 4 or 8', len);
  const value = checkU64('datamatch.value', d.value);
  if (value >> BigInt(len * 8) !== 0n) outOfRange('datamatch.value', `an unsigned ${len * 8}-bit value`, `${value}n`);
  return { len, datamatch: value };
}

/** @internal Validates an {@link IoEventAddress}. */
export function checkIoEventAddress(name: string, addr: unknown): IoEventAddress {
  if (!(addr instanceof IoEventAddress))
    invalidValue(name, 'must be an IoEventAddress (IoEventAddress.pio() or .mmio())', addr);
  return addr;
}
