/**
 * Errors of the Linux loader: a kernel or initrd file that cannot be booted.
 *
 * @module
 */

/** Error codes of {@link BootImageError}. */
export type BootImageErrorCode = 'ERR_KVM_BAD_KERNEL' | 'ERR_KVM_BAD_INITRD' | 'ERR_KVM_UNSUPPORTED_KERNEL';

/**
 * A kernel or initrd image the loader cannot use. `code` says which file, `detail` says what is
 * wrong with it (also part of `message`).
 *
 * - `ERR_KVM_BAD_KERNEL`: malformed (bad magic, truncated, segments outside the file or guest RAM)
 * - `ERR_KVM_UNSUPPORTED_KERNEL`: well formed, but this loader cannot boot it (too old a boot
 *   protocol, not 64-bit, a compressed payload that must be extracted first)
 * - `ERR_KVM_BAD_INITRD`: the initrd is empty or does not fit below `initrd_addr_max`
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * try {
 *   prepareKernel(readFileSync('vmlinux'));
 * } catch (e) {
 *   if (!(e instanceof BootImageError)) throw e;
 *   console.error(e.code, e.detail); // e.g. ERR_KVM_BAD_KERNEL the file is empty
 * }
 * ```
 */
export class BootImageError extends Error {
  override readonly name = 'BootImageError';
  readonly code: BootImageErrorCode;
  /** What is wrong, without the prefix. */
  readonly detail: string;
  constructor(code: BootImageErrorCode, detail: string) {
    const what = code === 'ERR_KVM_BAD_INITRD' ? 'initrd' : 'kernel';
    super(`${code === 'ERR_KVM_UNSUPPORTED_KERNEL' ? 'unsupported' : 'bad'} ${what} image: ${detail}`);
    this.code = code;
    this.detail = detail;
  }
}

/** @internal */
export function badKernel(detail: string): never {
  throw new BootImageError('ERR_KVM_BAD_KERNEL', detail);
}

/** @internal */
export function unsupportedKernel(detail: string): never {
  throw new BootImageError('ERR_KVM_UNSUPPORTED_KERNEL', detail);
}

/** @internal */
export function badInitrd(detail: string): never {
  throw new BootImageError('ERR_KVM_BAD_INITRD', detail);
}

/** `0x…` for diagnostics. */
export function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`;
}

/** Error codes of {@link SnapshotError}. */
export type SnapshotErrorCode =
  | 'ERR_KVM_SNAPSHOT_CORRUPT'
  | 'ERR_KVM_SNAPSHOT_TRUNCATED'
  | 'ERR_KVM_SNAPSHOT_VERSION'
  | 'ERR_KVM_SNAPSHOT_HOST'
  | 'ERR_KVM_SNAPSHOT_MISMATCH';

/**
 * A snapshot file that cannot be restored here. Loading checks everything before it creates
 * anything, so after this error nothing has been half-restored.
 *
 * - `ERR_KVM_SNAPSHOT_CORRUPT`: not a kvm-rx snapshot, a checksum that does not match, or content
 *   that does not make sense (`detail` says which part)
 * - `ERR_KVM_SNAPSHOT_TRUNCATED`: the file ends before a part it declares
 * - `ERR_KVM_SNAPSHOT_VERSION`: written in a format version this kvm-rx does not read
 * - `ERR_KVM_SNAPSHOT_HOST`: saved on a host whose CPU this one cannot stand in for (another
 *   vendor, or CPUID features this host's KVM does not offer: `detail` names them)
 * - `ERR_KVM_SNAPSHOT_MISMATCH`: a diff snapshot whose parent is not the file given, or a machine
 *   of another kind than the one restoring it
 *
 * @example
 * ```ts
 * // @ts-setup: import { readSnapshotFile, SnapshotError } from 'kvm-rx';
 * try {
 *   readSnapshotFile('vm.snap');
 * } catch (e) {
 *   if (!(e instanceof SnapshotError)) throw e;
 *   console.error(e.code, e.detail); // e.g. ERR_KVM_SNAPSHOT_TRUNCATED memory region 0 ends at …
 * }
 * ```
 */
export class SnapshotError extends Error {
  override readonly name = 'SnapshotError';
  readonly code: SnapshotErrorCode;
  /** What is wrong, without the file name. */
  readonly detail: string;
  /** The file. */
  readonly path: string;
  constructor(code: SnapshotErrorCode, path: string, detail: string) {
    super(`cannot restore snapshot ${path}: ${detail}`);
    this.code = code;
    this.path = path;
    this.detail = detail;
  }
}
