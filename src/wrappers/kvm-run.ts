/**
 * `KvmRunWrapper`: the mmapped `struct kvm_run` of a vCPU.
 *
 * @module
 */
import { KvmClosedError } from '../abi/errors';
import { offsetOf } from '../abi/codec';
import { kvm_run } from '../abi/layouts';
import { checkInt, checkU8, checkU64 } from '../abi/validate';
import type { IoctlBackend } from '../backend/types';

/** Offsets into `struct kvm_run` (x86_64), from the generated layout. */
export const RUN = {
  requestInterruptWindow: offsetOf(kvm_run, 'request_interrupt_window'),
  immediateExit: offsetOf(kvm_run, 'immediate_exit'),
  exitReason: offsetOf(kvm_run, 'exit_reason'),
  readyForInterruptInjection: offsetOf(kvm_run, 'ready_for_interrupt_injection'),
  ifFlag: offsetOf(kvm_run, 'if_flag'),
  flags: offsetOf(kvm_run, 'flags'),
  cr8: offsetOf(kvm_run, 'cr8'),
  apicBase: offsetOf(kvm_run, 'apic_base'),
  exit: offsetOf(kvm_run, 'hw'),
  hwExitReason: offsetOf(kvm_run, 'hw.hardware_exit_reason'),
  failEntryReason: offsetOf(kvm_run, 'fail_entry.hardware_entry_failure_reason'),
  failEntryCpu: offsetOf(kvm_run, 'fail_entry.cpu'),
  exException: offsetOf(kvm_run, 'ex.exception'),
  exErrorCode: offsetOf(kvm_run, 'ex.error_code'),
  ioDirection: offsetOf(kvm_run, 'io.direction'),
  ioSize: offsetOf(kvm_run, 'io.size'),
  ioPort: offsetOf(kvm_run, 'io.port'),
  ioCount: offsetOf(kvm_run, 'io.count'),
  ioDataOffset: offsetOf(kvm_run, 'io.data_offset'),
  debugException: offsetOf(kvm_run, 'debug.arch.exception'),
  debugPc: offsetOf(kvm_run, 'debug.arch.pc'),
  debugDr6: offsetOf(kvm_run, 'debug.arch.dr6'),
  debugDr7: offsetOf(kvm_run, 'debug.arch.dr7'),
  mmioPhysAddr: offsetOf(kvm_run, 'mmio.phys_addr'),
  mmioData: offsetOf(kvm_run, 'mmio.data'),
  mmioLen: offsetOf(kvm_run, 'mmio.len'),
  mmioIsWrite: offsetOf(kvm_run, 'mmio.is_write'),
  hypercallNr: offsetOf(kvm_run, 'hypercall.nr'),
  hypercallArgs: offsetOf(kvm_run, 'hypercall.args'),
  hypercallRet: offsetOf(kvm_run, 'hypercall.ret'),
  hypercallLongmode: offsetOf(kvm_run, 'hypercall.longmode'),
  tprRip: offsetOf(kvm_run, 'tpr_access.rip'),
  tprIsWrite: offsetOf(kvm_run, 'tpr_access.is_write'),
  internalSuberror: offsetOf(kvm_run, 'internal.suberror'),
  internalNdata: offsetOf(kvm_run, 'internal.ndata'),
  internalData: offsetOf(kvm_run, 'internal.data'),
  systemEventType: offsetOf(kvm_run, 'system_event.type'),
  systemEventNdata: offsetOf(kvm_run, 'system_event.ndata'),
  systemEventData: offsetOf(kvm_run, 'system_event.data'),
  eoiVector: offsetOf(kvm_run, 'eoi.vector'),
  msrError: offsetOf(kvm_run, 'msr.error'),
  msrReason: offsetOf(kvm_run, 'msr.reason'),
  msrIndex: offsetOf(kvm_run, 'msr.index'),
  msrData: offsetOf(kvm_run, 'msr.data'),
  kvmValidRegs: offsetOf(kvm_run, 'kvm_valid_regs'),
  kvmDirtyRegs: offsetOf(kvm_run, 'kvm_dirty_regs'),
  syncRegs: offsetOf(kvm_run, 's'),
  /** `memory_fault {flags, gpa, size}` shares the start of the exit union (Linux >= 6.8). */
  memoryFaultFlags: offsetOf(kvm_run, 'hw'),
  memoryFaultGpa: offsetOf(kvm_run, 'hw') + 8,
  memoryFaultSize: offsetOf(kvm_run, 'hw') + 16,
} as const;

/**
 * The mmapped `struct kvm_run` of a vCPU (kvm-ioctls' `KvmRunWrapper`). Owned by its `VcpuFd`,
 * which unmaps it on close; every view it handed out is detached first.
 *
 * @example
 * ```ts
 * const run = vcpu.getKvmRun();
 * run.immediateExit = 1;           // the next KVM_RUN returns EINTR at once
 * ```
 */
export class KvmRunWrapper implements Disposable {
  readonly size: number;
  readonly backend: IoctlBackend;
  #address: bigint;
  #buffer: ArrayBuffer | undefined;
  #view: DataView | undefined;
  #bytes: Uint8Array | undefined;
  #closed = false;

  private constructor(backend: IoctlBackend, address: bigint, size: number) {
    this.backend = backend;
    this.#address = address;
    this.size = size;
    this.#buffer = backend.view(address, size);
    this.#view = new DataView(this.#buffer);
    this.#bytes = new Uint8Array(this.#buffer);
  }

  /**
   * Maps `size` bytes of a vCPU fd (`mmap(PROT_READ|PROT_WRITE, MAP_SHARED, offset 0)`), as
   * kvm-ioctls' `KvmRunWrapper::mmap_from_fd`.
   *
   * @param fd - the vCPU fd
   * @param size - `Kvm#getVcpuMmapSize()`
   * @throws {@link KvmError} from `mmap`
   */
  static mmapFromFd(backend: IoctlBackend, fd: number, size: number): KvmRunWrapper {
    checkInt('fd', fd, 0, 0x7fff_ffff);
    checkInt('size', size, 1, 1 << 30);
    // Only this thread uses its kvm_run view: unmapped with the thread if nothing closed it.
    const address = backend.mmap(size, { shared: true, anonymous: false, unmapAtExit: true }, fd, 0);
    try {
      return new KvmRunWrapper(backend, address, size);
    } catch (e) {
      backend.munmap(address, size);
      throw e;
    }
  }

  /** Whether `close()` was called. */
  get closed(): boolean {
    return this.#closed;
  }

  #check(): void {
    if (this.#closed) throw new KvmClosedError('KvmRunWrapper');
  }

  /** The DataView over the whole mapping (kvm-ioctls' `as_mut_ref`). Throws once closed. */
  asMutRef(): DataView {
    this.#check();
    return this.#view!;
  }

  /** The mapping's bytes. Throws once closed. */
  get bytes(): Uint8Array {
    this.#check();
    return this.#bytes!;
  }

  /** The host address of the mapping (for the kick and for worker threads' own views). */
  get address(): bigint {
    this.#check();
    return this.#address;
  }

  get immediateExit(): number {
    return this.asMutRef().getUint8(RUN.immediateExit);
  }
  set immediateExit(v: number) {
    this.asMutRef().setUint8(RUN.immediateExit, checkU8('immediateExit', v));
  }
  get requestInterruptWindow(): number {
    return this.asMutRef().getUint8(RUN.requestInterruptWindow);
  }
  set requestInterruptWindow(v: number) {
    this.asMutRef().setUint8(RUN.requestInterruptWindow, checkU8('requestInterruptWindow', v));
  }
  get exitReason(): number {
    return this.asMutRef().getUint32(RUN.exitReason, true);
  }
  get readyForInterruptInjection(): number {
    return this.asMutRef().getUint8(RUN.readyForInterruptInjection);
  }
  get ifFlag(): number {
    return this.asMutRef().getUint8(RUN.ifFlag);
  }
  get flags(): number {
    return this.asMutRef().getUint16(RUN.flags, true);
  }
  get cr8(): bigint {
    return this.asMutRef().getBigUint64(RUN.cr8, true);
  }
  set cr8(v: bigint) {
    this.asMutRef().setBigUint64(RUN.cr8, checkU64('cr8', v), true);
  }
  get apicBase(): bigint {
    return this.asMutRef().getBigUint64(RUN.apicBase, true);
  }
  get kvmValidRegs(): bigint {
    return this.asMutRef().getBigUint64(RUN.kvmValidRegs, true);
  }
  set kvmValidRegs(v: bigint) {
    this.asMutRef().setBigUint64(RUN.kvmValidRegs, checkU64('kvmValidRegs', v), true);
  }
  get kvmDirtyRegs(): bigint {
    return this.asMutRef().getBigUint64(RUN.kvmDirtyRegs, true);
  }
  set kvmDirtyRegs(v: bigint) {
    this.asMutRef().setBigUint64(RUN.kvmDirtyRegs, checkU64('kvmDirtyRegs', v), true);
  }

  #pins = 0;
  #unmapPending = false;

  /**
   * @internal Keeps the mapping (and the views taken before) alive until the returned function is
   * called, even across `close()`: a running `VcpuRun` kicks its worker by writing
   * `immediate_exit` through this mapping, which must never be unmapped (and reused) under it.
   */
  pin(): () => void {
    this.#check();
    this.#pins++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.#pins === 0 && this.#unmapPending) this.#unmap();
    };
  }

  /**
   * Detaches the views and unmaps. Idempotent. While a running vCPU's runtime pins the mapping,
   * the object is closed at once (every member throws `ERR_KVM_CLOSED`) and the unmap waits for
   * the run to end.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#pins > 0) {
      this.#unmapPending = true;
      return;
    }
    this.#unmap();
  }

  #unmap(): void {
    this.#unmapPending = false;
    if (this.#buffer !== undefined) this.backend.detach(this.#buffer);
    this.#buffer = undefined;
    this.#view = undefined;
    this.#bytes = undefined;
    this.backend.munmap(this.#address, this.size);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
