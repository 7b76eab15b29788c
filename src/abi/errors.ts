/**
 * Errors raised by kvm-rx.
 *
 * `KvmError` is the errno error of every syscall (kvm-ioctls' `errno::Error`). It is defined here,
 * in TypeScript, and thrown by the native addon (which receives this class at load time) as well
 * as by the mock backend, so `instanceof KvmError` and `err.code` work the same on both.
 *
 * @module
 */
import { constants } from 'node:os';
import { getSystemErrorMap } from 'node:util';

// util.getSystemErrorMap() builds a new Map of every errno on each call (~17 µs here); an
// EINTR from a kicked KVM_RUN constructs a KvmError, so the map is built once and reused.
let systemErrors: Map<number, [string, string]> | undefined;
import { sys } from './kvm-constants';

// Linux errnos that os.constants lacks (libuv does not know them), from the C headers.
const extraErrnos: Record<string, number> = {
  EHWPOISON: sys.EHWPOISON,
  ERFKILL: sys.ERFKILL,
  EKEYEXPIRED: sys.EKEYEXPIRED,
  ENOTRECOVERABLE: sys.ENOTRECOVERABLE,
};
const allErrnos: Record<string, number> = { ...constants.errno, ...extraErrnos };
const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(allErrnos)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

/** The positive errno value for an error name such as `'EINVAL'`, from the host's `os.constants`. */
export function errnoOf(code: string): number {
  const value = typeof code === 'string' && Object.hasOwn(allErrnos, code) ? allErrnos[code] : undefined;
  if (value === undefined) {
    const shown = typeof code === 'string' ? `'${code.slice(0, 40)}'` : `of type ${typeof code}`;
    throw new KvmRangeError('ERR_INVALID_ARG_VALUE', `unknown errno name ${shown}`);
  }
  return value;
}

/** Options of a {@link KvmError}. */
export interface KvmErrorOptions {
  /** The ioctl request's name, e.g. `'KVM_CREATE_VCPU'`, when `syscall` is `'ioctl'`. */
  request?: string;
  /** The path, for `open`. */
  path?: string;
  /** Extra detail appended to the message (e.g. the limit a local check enforced). */
  detail?: string;
}

/**
 * The error of a failed system call, shaped like Node's `SystemError`.
 *
 * @example
 * ```ts
 * try { vm.createVcpu(0); vm.createVcpu(0); }
 * catch (e) {
 *   if (e instanceof KvmError && e.code === 'EEXIST') console.log(e.message);
 *   // EEXIST: file already exists, ioctl KVM_CREATE_VCPU
 * }
 * ```
 */
export class KvmError extends Error {
  /** The errno name, e.g. `'EINVAL'`. */
  readonly code: string;
  /** The errno, negative as in Node (`-22` for EINVAL); `util.getSystemErrorName(err.errno)` works. */
  readonly errno: number;
  /** The failed system call: `'ioctl'`, `'open'`, `'mmap'`, `'eventfd'`, … */
  readonly syscall: string;
  /** The ioctl request's name, when `syscall` is `'ioctl'`. */
  readonly request?: string;
  /** The path, for `open`. */
  readonly path?: string;

  /**
   * @param errno - the errno, positive (as the C library reports it) or negative (as Node reports it)
   * @param syscall - the system call that failed
   * @param options - request name, path, extra detail
   */
  constructor(errno: number, syscall: string, options: KvmErrorOptions | string = {}) {
    if (typeof errno !== 'number' || !Number.isSafeInteger(errno)) {
      throw new KvmTypeError(
        'ERR_INVALID_ARG_TYPE',
        `The "errno" argument must be an integer. Received type ${typeof errno}`,
      );
    }
    if (typeof syscall !== 'string')
      throw new KvmTypeError(
        'ERR_INVALID_ARG_TYPE',
        `The "syscall" argument must be of type string. Received type ${typeof syscall}`,
      );
    const opts: KvmErrorOptions = typeof options === 'string' ? { request: options } : (options ?? {});
    if (typeof opts !== 'object')
      throw new KvmTypeError(
        'ERR_INVALID_ARG_TYPE',
        `The "options" argument must be an object or a string. Received type ${typeof options}`,
      );
    const neg = -Math.abs(errno);
    const entry = (systemErrors ??= getSystemErrorMap()).get(neg);
    const code = entry?.[0] ?? errnoNames.get(-neg) ?? `E${-neg}`;
    const text = entry?.[1] ?? (code === 'EHWPOISON' ? 'memory page has hardware error' : 'unknown error');
    let message = `${code}: ${text}, ${syscall}`;
    if (opts.request !== undefined) message += ` ${opts.request}`;
    if (opts.path !== undefined) message += ` '${opts.path}'`;
    if (opts.detail !== undefined) message += ` (${opts.detail})`;
    super(message);
    this.name = 'KvmError';
    this.code = code;
    this.errno = neg;
    this.syscall = syscall;
    if (opts.request !== undefined) this.request = opts.request;
    if (opts.path !== undefined) this.path = opts.path;
  }

  /** Builds a KvmError from an errno name: `KvmError.fromCode('ENOMEM', 'ioctl', 'KVM_GET_CPUID2')`. */
  static fromCode(code: string, syscall: string, options: KvmErrorOptions | string = {}): KvmError {
    return new KvmError(errnoOf(code), syscall, options);
  }
}

/** A `TypeError` with a Node-style `code` (`ERR_INVALID_ARG_TYPE`). */
export class KvmTypeError extends TypeError {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
    this.name = 'TypeError';
  }
}

/** A `RangeError` with a Node-style `code` (`ERR_OUT_OF_RANGE`, `ERR_INVALID_ARG_VALUE`, …). */
export class KvmRangeError extends RangeError {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
    this.name = 'RangeError';
  }
}

/** Thrown when an object is used after `close()` (code `ERR_KVM_CLOSED`). */
export class KvmClosedError extends Error {
  readonly code = 'ERR_KVM_CLOSED';
  constructor(what: string) {
    super(`${what} is closed`);
    this.name = 'KvmClosedError';
  }
}
