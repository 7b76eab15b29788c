/**
 * The seam between the safe wrappers and the operating system.
 *
 * Everything above this layer (wrappers, runtime, devices, VMM) talks to the kernel only through
 * an `IoctlBackend`. Two implementations exist: {@link NativeBackend} (the N-API addon, real
 * syscalls) and `MockBackend` (an in-memory model of KVM, shipped as `kvm-rx/testing`). Both throw
 * {@link KvmError} for a failed syscall, with the same `code`, `errno`, `syscall` and `request`.
 *
 * The interface is byte-level on purpose: structs cross it as the kernel's own bytes, so the mock
 * checks the same encodings the kernel does, and one contract suite (`spec/contract/`) runs
 * against both.
 *
 * @module
 */

/** A single ioctl argument: nothing, an integer passed by value, or a struct buffer passed by pointer. */
export type IoctlArg = undefined | number | bigint | ArrayBufferView;

/** Flags for {@link IoctlBackend.mmap}. Values are Linux's. */
export interface MmapFlags {
  shared: boolean;
  anonymous: boolean;
  noreserve?: boolean;
  hugetlb?: boolean;
  populate?: boolean;
  /**
   * `MAP_FIXED` at this address: the new mapping replaces what was mapped there. The backend does
   * not check whose mapping that is; the safe layer (`GuestMemory.replaceWithFile`) only passes
   * the address of a mapping it owns.
   */
  fixed?: bigint;
  /**
   * Unmap it when this thread's environment is torn down, if it is still mapped then (a worker
   * thread that ends, e.g. by `process.exit()`, without closing its objects). For mappings that
   * only this thread uses, such as its own kvm_run view.
   */
  unmapAtExit?: boolean;
}

/** The syscall layer. Every method throws `KvmError` when the kernel returns an error. */
export interface IoctlBackend {
  /** `'native'` or `'mock'`. */
  readonly kind: 'native' | 'mock';
  /** The host page size in bytes. */
  readonly pageSize: number;

  /** `open(path, flags)` → fd. `flags` are Linux `O_*` bits. */
  open(path: string, flags: number): number;
  /** `close(fd)`. */
  close(fd: number): void;
  /** `dup(fd)` with `O_CLOEXEC` → a new fd. */
  dup(fd: number): number;
  /** `fcntl(fd, F_GETFD)` → the fd flags (`FD_CLOEXEC` = 1). */
  getFdFlags(fd: number): number;

  /**
   * `ioctl(fd, request, arg)`. A number/bigint is passed by value; an ArrayBufferView by pointer
   * (the kernel reads and writes its bytes). Returns the non-negative result.
   */
  ioctl(fd: number, request: number, arg?: IoctlArg): number;

  /** `mmap(NULL, length, PROT_READ|PROT_WRITE, flags, fd, offset)` → the address. */
  mmap(length: number, flags: MmapFlags, fd: number, offset: number): bigint;
  /** `munmap(address, length)`. Every view created by {@link view} must be detached first. */
  munmap(address: bigint, length: number): void;
  /** `madvise(address, length, advice)`. */
  madvise(address: bigint, length: number, advice: number): void;
  /**
   * An ArrayBuffer over a whole live mapping (`address` and `length` exactly as given to and
   * returned by {@link mmap}), for this thread. Make sub-range views with typed arrays.
   */
  view(address: bigint, length: number): ArrayBuffer;
  /** Detaches an ArrayBuffer from {@link view} so no JavaScript access can reach the memory again. */
  detach(buffer: ArrayBuffer): void;
  /**
   * The address of a view's first byte, for structs that carry a pointer (dirty bitmaps, device
   * attributes, MSR filter bitmaps). Valid while the view is alive.
   */
  addressOf(view: ArrayBufferView): bigint;

  /** `eventfd(initval, flags)` → fd. Flags: `EFD_NONBLOCK`, `EFD_SEMAPHORE` (Linux values). */
  eventfd(initval: number, flags: number): number;
  /** `read(fd, buf)` → bytes read. Throws `KvmError` EAGAIN when a non-blocking fd has nothing. */
  read(fd: number, buffer: Uint8Array): number;
  /** `write(fd, buf)` → bytes written. */
  write(fd: number, buffer: Uint8Array): number;
  /**
   * Watches `fd` for readability on this thread's event loop and calls `onReadable` each time it
   * is readable, until the returned function is called.
   */
  watchReadable(fd: number, onReadable: () => void): () => void;

  /** Installs the (empty) kick signal handler once per process and returns the signal number. */
  kickSignal(): number;
  /** The calling thread's id, for {@link kick}. */
  threadSelf(): bigint;
  /**
   * Kicks a vCPU: stores 1 into `kvm_run.immediate_exit` at `runAddress` and sends the kick signal
   * to `thread`, so its `KVM_RUN` returns `EINTR` whether or not it was already inside the guest.
   * `runAddress` 0n sends only the signal (interrupts a blocking syscall of that thread).
   */
  kick(thread: bigint, runAddress: bigint): void;
  /** Pins the calling thread to `cpu` (`-1`: every CPU again). For benchmarks. */
  setThreadAffinity(cpu: number): void;
  /**
   * The run loop's native fast path: `KVM_RUN` on vCPU `fd` until an exit needs JavaScript. An OUT
   * to a port whose bit is set in `portBitmap` (8192 bytes) is appended to `ring` as a posted-write
   * record (counters in `control`, record layout in `layout`: see {@link runPostedLayout}) and the
   * vCPU re-enters the guest at once. Returns `fast * 2 + pending`: `pending` is 1 when an exit is
   * left in kvm_run, 0 after `maxBatch` fast exits.
   */
  runPosted(
    fd: number,
    runAddress: bigint,
    portBitmap: Uint8Array,
    ring: Uint8Array,
    control: Int32Array,
    layout: Int32Array,
    maxBatch: number,
  ): number;
  /** The names of the slots of {@link runPosted}'s `layout`, in order. */
  runPostedLayout(): string[];
}
