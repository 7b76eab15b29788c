/**
 * The Linux `_IOC` ioctl-number encoder (`include/uapi/asm-generic/ioctl.h`), for request numbers
 * the x86 headers this project is generated from do not define (the arm64 ones).
 *
 * A request is `dir << 30 | size << 16 | type << 8 | nr`, with `dir` 0 (none), 1 (write: user →
 * kernel) or 2 (read: kernel → user), 3 for both, and a 14-bit `size`. This is the generic layout
 * used by x86 and arm64 alike (not by alpha, mips, powerpc or sparc). `spec/unit/ioc.spec.ts`
 * checks it against every request number of the generated table, which the C compiler computed.
 *
 * @module
 */
import { checkInt } from './validate';

/** `_IOC_NONE`. */
export const IOC_NONE = 0;
/** `_IOC_WRITE`: userspace writes, the kernel reads the argument. */
export const IOC_WRITE = 1;
/** `_IOC_READ`: the kernel writes the argument back. */
export const IOC_READ = 2;

/** `_IOC_NRBITS`, `_IOC_TYPEBITS`, `_IOC_SIZEBITS`, `_IOC_DIRBITS`. */
export const IOC_NRBITS = 8;
export const IOC_TYPEBITS = 8;
export const IOC_SIZEBITS = 14;
export const IOC_DIRBITS = 2;
export const IOC_NRSHIFT = 0;
export const IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS;
export const IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS;
export const IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS;

/** `KVMIO`, the ioctl type byte of every KVM request. */
export const KVMIO = 0xae;

/**
 * `_IOC(dir, type, nr, size)`: the request number, as an unsigned 32-bit `number`.
 * @example `_IOC(IOC_READ | IOC_WRITE, KVMIO, 0x05, 8) === 0xc008ae05`
 * @throws `RangeError` (ERR_OUT_OF_RANGE) when a field does not fit its bits
 */
export function _IOC(dir: number, type: number, nr: number, size: number): number {
  checkInt('dir', dir, 0, (1 << IOC_DIRBITS) - 1);
  checkInt('type', type, 0, (1 << IOC_TYPEBITS) - 1);
  checkInt('nr', nr, 0, (1 << IOC_NRBITS) - 1);
  checkInt('size', size, 0, (1 << IOC_SIZEBITS) - 1);
  return ((dir << IOC_DIRSHIFT) | (size << IOC_SIZESHIFT) | (type << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT)) >>> 0;
}

/** `_IO(type, nr)`: no argument, or an integer passed by value. @example `_IO(KVMIO, 0x80) === 0xae80` */
export function _IO(type: number, nr: number): number {
  return _IOC(IOC_NONE, type, nr, 0);
}

/** `_IOR(type, nr, size)`: the kernel writes a `size`-byte struct. @example `_IOR(KVMIO, 0x81, 144)` */
export function _IOR(type: number, nr: number, size: number): number {
  return _IOC(IOC_READ, type, nr, size);
}

/** `_IOW(type, nr, size)`: the kernel reads a `size`-byte struct. @example `_IOW(KVMIO, 0x82, 144)` */
export function _IOW(type: number, nr: number, size: number): number {
  return _IOC(IOC_WRITE, type, nr, size);
}

/** `_IOWR(type, nr, size)`: read and written back. @example `_IOWR(KVMIO, 0x05, 8)` */
export function _IOWR(type: number, nr: number, size: number): number {
  return _IOC(IOC_READ | IOC_WRITE, type, nr, size);
}

/** The fields of a request number (`_IOC_DIR`, `_IOC_TYPE`, `_IOC_NR`, `_IOC_SIZE`). */
export function iocFields(request: number): { dir: number; type: number; nr: number; size: number } {
  const r = checkInt('request', request, 0, 0xffff_ffff);
  return {
    dir: (r >>> IOC_DIRSHIFT) & ((1 << IOC_DIRBITS) - 1),
    type: (r >>> IOC_TYPESHIFT) & ((1 << IOC_TYPEBITS) - 1),
    nr: (r >>> IOC_NRSHIFT) & ((1 << IOC_NRBITS) - 1),
    size: (r >>> IOC_SIZESHIFT) & ((1 << IOC_SIZEBITS) - 1),
  };
}
