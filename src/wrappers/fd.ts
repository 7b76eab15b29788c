/**
 * Ownership of file descriptors and the parent/child close order shared by every wrapper.
 *
 * @module
 */
import { KvmClosedError } from '../abi/errors';
import { decodeStruct, dv, type StructDef } from '../abi/codec';
import type { IoctlArg, IoctlBackend } from '../backend/types';

/** Something a parent closes before itself (vCPUs and devices of a VM, views of a mapping). */
export interface Closeable {
  close(): void;
}

/**
 * Base of every class that owns an fd. `close()` is idempotent, closes the children first, and
 * makes every later call throw {@link KvmClosedError} (code `ERR_KVM_CLOSED`) without touching the
 * fd number again, since the kernel may already have given it to someone else.
 */
export abstract class FdOwner implements Closeable {
  /** The backend every syscall of this object goes through. */
  readonly backend: IoctlBackend;
  #fd: number;
  #closed = false;
  #children = new Set<Closeable>();
  #onClose: Array<() => void> = [];
  /** For messages: `'VmFd'`, `'VcpuFd 0'`, … */
  protected abstract readonly label: string;

  #borrowed = false;

  protected constructor(backend: IoctlBackend, fd: number) {
    this.backend = backend;
    this.#fd = fd;
  }

  /**
   * @internal Marks the fd as borrowed: `close()` then releases this wrapper (children, views,
   * mappings) but leaves the fd itself open, because another wrapper (on another thread) owns it.
   */
  protected borrow(): void {
    this.#borrowed = true;
  }

  /** The raw fd (kvm-ioctls' `as_raw_fd`). Throws once closed. */
  asRawFd(): number {
    this.checkOpen();
    return this.#fd;
  }

  /** Whether `close()` has been called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Throws `ERR_KVM_CLOSED` if closed. */
  protected checkOpen(): void {
    if (this.#closed) throw new KvmClosedError(this.label);
  }

  /** `ioctl` on this fd; `request` is the request number. */
  protected ioctl(request: number, arg?: IoctlArg): number {
    this.checkOpen();
    return this.backend.ioctl(this.#fd, request, arg);
  }
  /** An ioctl that fills a `def` struct, decoded. */
  protected getStruct<T>(def: StructDef, request: number): T {
    const buf = new Uint8Array(def.size);
    this.ioctl(request, buf);
    return decodeStruct<T>(def, dv(buf));
  }

  /** Registers a child closed before this object. Returns a function that unregisters it. */
  adopt(child: Closeable): () => void {
    this.checkOpen();
    this.#children.add(child);
    return () => this.#children.delete(child);
  }

  /** @internal Registers a callback run after the children close and before the fd closes. */
  onClosed(fn: () => void): void {
    this.#onClose.push(fn);
  }

  /**
   * Closes the children, then this fd. Idempotent. If several steps fail, the first error is
   * thrown after every step has run, so nothing leaks.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    let first: unknown;
    for (const child of [...this.#children].reverse()) {
      try {
        child.close();
      } catch (e) {
        first ??= e;
      }
    }
    this.#children.clear();
    for (const fn of this.#onClose) {
      try {
        fn();
      } catch (e) {
        first ??= e;
      }
    }
    if (!this.#borrowed) {
      try {
        this.backend.close(this.#fd);
      } catch (e) {
        first ??= e;
      }
    }
    this.#fd = -1;
    if (first !== undefined) throw first;
  }

  /** Same as {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
