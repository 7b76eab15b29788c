/**
 * `EventFd`: a Linux eventfd (vmm-sys-util's `EventFd`), the object irqfds and ioeventfds take.
 *
 * @module
 */
import { KvmError, KvmClosedError } from '../abi/errors';
import { sys } from '../abi/kvm-constants';
import { checkBool, checkInt, checkObject, checkU64, invalidValue } from '../abi/validate';
import { nativeBackend } from '../backend/native';
import type { IoctlBackend } from '../backend/types';
import { FdOwner } from './fd';

/** Options of {@link EventFd}. */
export interface EventFdOptions {
  /** The counter's initial value (default 0). */
  initval?: number;
  /** `EFD_SEMAPHORE`: each read returns 1 and decrements the counter by 1 (default false). */
  semaphore?: boolean;
  /**
   * Must be `true` or omitted: the fd is always created with `EFD_NONBLOCK`, so no read can block
   * a thread. Wait with {@link EventFd.readAsync} instead of a blocking read.
   */
  nonBlocking?: boolean;
  /** `EFD_CLOEXEC` (default true). */
  closeOnExec?: boolean;
  /** The syscall backend (default: the native one). */
  backend?: IoctlBackend;
}

/** The error `readAsync` rejects with when its signal aborts (name `AbortError`, code `ABORT_ERR`, as Node's). */
export class AbortError extends Error {
  readonly code = 'ABORT_ERR';
  constructor(message = 'The operation was aborted', options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AbortError';
  }
}

interface Waiter {
  stop: () => void;
  reject: (e: unknown) => void;
}

/**
 * An eventfd: a 64-bit counter that `write` adds to and `read` takes (kvm-ioctls' tests and
 * rust-vmm VMMs use vmm-sys-util's `EventFd` for irqfds and ioeventfds).
 *
 * The fd is always non-blocking (`EFD_NONBLOCK`): {@link read} throws `EAGAIN` when the counter
 * is 0, and {@link readAsync} waits on the event loop (libuv poll) without blocking any thread.
 *
 * @example
 * ```ts
 * import { EventFd, IoEventAddress, NoDatamatch } from 'kvm-rx';
 * using evt = new EventFd();
 * vm.registerIrqfd(evt, 4);
 * evt.write(1n); // raises GSI 4
 * using kick = new EventFd();
 * vm.registerIoevent(kick, IoEventAddress.pio(0xf4), NoDatamatch);
 * const n = await kick.readAsync(); // waits for a guest write to port 0xf4 without blocking
 * ```
 */
export class EventFd extends FdOwner {
  protected readonly label = 'EventFd';
  /** The flags the fd was created with. */
  readonly flags: { readonly nonBlocking: true; readonly semaphore: boolean };
  #waiters = new Set<Waiter>();

  /**
   * `eventfd(initval, EFD_NONBLOCK | EFD_CLOEXEC [| EFD_SEMAPHORE])`.
   * @throws {@link KvmError} from `eventfd` (EMFILE, ENOMEM); `TypeError`/`RangeError` for bad options
   */
  constructor(options: EventFdOptions = {}) {
    checkObject('options', options);
    const initval = options.initval === undefined ? 0 : checkInt('options.initval', options.initval, 0, 0xffff_ffff);
    const semaphore = options.semaphore === undefined ? false : checkBool('options.semaphore', options.semaphore);
    if (options.nonBlocking !== undefined && !checkBool('options.nonBlocking', options.nonBlocking)) {
      invalidValue(
        'options.nonBlocking',
        'must be true: an EventFd never blocks a thread (use readAsync() to wait)',
        false,
      );
    }
    const cloexec = options.closeOnExec === undefined ? true : checkBool('options.closeOnExec', options.closeOnExec);
    const backend = options.backend ?? nativeBackend();
    const flags = sys.EFD_NONBLOCK | (cloexec ? sys.EFD_CLOEXEC : 0) | (semaphore ? sys.EFD_SEMAPHORE : 0);
    super(backend, backend.eventfd(initval, flags));
    this.flags = Object.freeze({ nonBlocking: true as const, semaphore });
    this.onClosed(() => {
      for (const w of [...this.#waiters]) {
        w.stop();
        w.reject(new KvmClosedError(this.label));
      }
      this.#waiters.clear();
    });
  }

  /**
   * Adds `value` to the counter (`write(2)` of 8 bytes).
   * @example `evt.write(1n);`
   * @throws {@link KvmError} EAGAIN (the counter would exceed 2^64 - 2), EINVAL (`value` = 2^64 - 1);
   *   `ERR_KVM_CLOSED` after close
   */
  write(value: bigint | number): void {
    const v = checkU64('value', value);
    const buf = new Uint8Array(8);
    new DataView(buf.buffer).setBigUint64(0, v, true);
    this.backend.write(this.asRawFd(), buf);
  }

  /**
   * Takes the counter (or 1 in semaphore mode) without blocking (`read(2)` of 8 bytes).
   * @example
   * ```ts
   * import { KvmError } from 'kvm-rx';
   * let n = 0n;
   * try {
   *   n = evt.read();
   * } catch (e) {
   *   if (!(e instanceof KvmError) || e.code !== 'EAGAIN') throw e; // EAGAIN: the counter was 0
   * }
   * ```
   * @throws {@link KvmError} EAGAIN when the counter is 0; `ERR_KVM_CLOSED` after close
   */
  read(): bigint {
    const buf = new Uint8Array(8);
    this.backend.read(this.asRawFd(), buf);
    return new DataView(buf.buffer).getBigUint64(0, true);
  }

  /**
   * Waits until the counter is non-zero, then reads it, without blocking the event loop or any
   * thread (the fd is watched with libuv's poll).
   *
   * @example
   * ```ts
   * const ac = new AbortController();
   * setTimeout(() => ac.abort(), 1000);
   * const n = await evt.readAsync(ac.signal);
   * ```
   * @throws (rejects) {@link AbortError} (`ABORT_ERR`) when `signal` aborts, `ERR_KVM_CLOSED` when
   *   the EventFd is closed while waiting, {@link KvmError} for a failed read
   */
  readAsync(signal?: AbortSignal): Promise<bigint> {
    if (signal !== undefined && !(signal instanceof AbortSignal))
      invalidValue('signal', 'must be an AbortSignal', signal);
    try {
      this.checkOpen();
      if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
      return Promise.resolve(this.read());
    } catch (e) {
      if (!(e instanceof KvmError && e.code === 'EAGAIN')) return Promise.reject(asError(e));
    }
    return new Promise<bigint>((resolve, reject) => {
      let unwatch: (() => void) | undefined;
      const waiter: Waiter = {
        stop: () => {
          unwatch?.();
          unwatch = undefined;
          signal?.removeEventListener('abort', onAbort);
          this.#waiters.delete(waiter);
        },
        reject,
      };
      const onAbort = (): void => {
        waiter.stop();
        reject(new AbortError(undefined, { cause: signal?.reason }));
      };
      const onReadable = (): void => {
        if (unwatch === undefined) return;
        let value: bigint;
        try {
          value = this.read();
        } catch (e) {
          if (e instanceof KvmError && e.code === 'EAGAIN') return; // another reader won; keep waiting
          waiter.stop();
          reject(asError(e));
          return;
        }
        waiter.stop();
        resolve(value);
      };
      try {
        unwatch = this.backend.watchReadable(this.asRawFd(), onReadable);
      } catch (e) {
        reject(asError(e));
        return;
      }
      this.#waiters.add(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

/** A thrown value as an Error (syscalls throw KvmError; anything else is wrapped). */
function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}
