/**
 * `Kvm`: the system fd (`/dev/kvm`).
 *
 * @module
 */
import { ioctls, sys } from '../abi/kvm-constants';
import { checkBool, checkInt, checkObject, checkString, checkU64, invalidValue } from '../abi/validate';
import { nativeBackend } from '../backend/native';
import type { IoctlBackend } from '../backend/types';
import type { Cap } from './cap';
import { Cap as CapValues } from './cap';
import { FdOwner } from './fd';
import { VmFd } from './vm-fd';

/** Options accepted by every constructor that opens an fd. */
export interface BackendOptions {
  /** The syscall backend: the native one (default) or a `MockBackend` from `kvm-rx/testing`. */
  backend?: IoctlBackend;
}

function backendOf(options: BackendOptions | undefined): IoctlBackend {
  if (options === undefined) return nativeBackend();
  checkObject('options', options);
  if (options.backend === undefined) return nativeBackend();
  const b = options.backend as Partial<IoctlBackend>;
  if (typeof b !== 'object' || b === null || typeof b.ioctl !== 'function') {
    invalidValue('options.backend', 'must implement IoctlBackend', options.backend);
  }
  return options.backend;
}

/**
 * The KVM system fd (kvm-ioctls' `Kvm`). Closing it closes every VM created from it (and their
 * vCPUs and devices).
 *
 * @example
 * ```ts
 * using kvm = new Kvm();
 * console.log(kvm.getApiVersion());            // 12
 * using vm = kvm.createVm();
 * ```
 */
export class Kvm extends FdOwner {
  protected readonly label = 'Kvm';

  /**
   * Opens `/dev/kvm` (`O_RDWR | O_CLOEXEC`), as `Kvm::new`.
   * @throws {@link KvmError} from `open` (ENOENT: no KVM; EACCES: not in the `kvm` group)
   */
  constructor(options?: BackendOptions);
  /** @internal Wraps an fd the caller owns from now on. */
  constructor(options: BackendOptions | undefined, fd: number);
  constructor(options?: BackendOptions, fd?: number) {
    const backend = backendOf(options);
    super(backend, fd ?? backend.open('/dev/kvm', sys.O_RDWR | sys.O_CLOEXEC));
  }

  /**
   * Opens another KVM device path (`Kvm::new_with_path`).
   * @example `const kvm = Kvm.newWithPath('/dev/kvm');`
   * @throws {@link KvmError} from `open`
   */
  static newWithPath(path: string, options?: BackendOptions): Kvm {
    checkString('path', path);
    const backend = backendOf(options);
    return new Kvm({ backend }, backend.open(path, sys.O_RDWR | sys.O_CLOEXEC));
  }

  /**
   * Opens `/dev/kvm` and returns the raw fd, with `O_CLOEXEC` only when `closeOnExec` is true
   * (`Kvm::open_with_cloexec`). The caller owns the fd; wrap it with {@link Kvm.fromRawFd}.
   * @throws {@link KvmError} from `open`
   */
  static openWithCloexec(closeOnExec: boolean, options?: BackendOptions): number {
    return Kvm.openWithCloexecAt('/dev/kvm', closeOnExec, options);
  }

  /**
   * As {@link Kvm.openWithCloexec}, for another path (`Kvm::open_with_cloexec_at`).
   * @throws {@link KvmError} from `open`
   */
  static openWithCloexecAt(path: string, closeOnExec: boolean, options?: BackendOptions): number {
    checkString('path', path);
    checkBool('closeOnExec', closeOnExec);
    return backendOf(options).open(path, sys.O_RDWR | (closeOnExec ? sys.O_CLOEXEC : 0));
  }

  /**
   * Takes ownership of a raw KVM system fd (kvm-ioctls' `FromRawFd`).
   * @example `const kvm = Kvm.fromRawFd(Kvm.openWithCloexec(true));`
   */
  static fromRawFd(fd: number, options?: BackendOptions): Kvm {
    checkInt('fd', fd, 0, 0x7fff_ffff);
    return new Kvm(options, fd);
  }

  /**
   * `KVM_GET_API_VERSION`: always 12 on a current kernel.
   * @example `kvm.getApiVersion() === 12`
   * @throws {@link KvmError}
   */
  getApiVersion(): number {
    return this.ioctl(ioctls.KVM_GET_API_VERSION);
  }

  /**
   * `KVM_CHECK_EXTENSION` with any capability number; 0 means unsupported.
   * @example `kvm.checkExtensionRaw(696969) === 0`
   * @throws `RangeError` for a capability outside 0..2^32-1
   */
  checkExtensionRaw(cap: number | bigint): number {
    const c = checkU64('cap', cap);
    if (c > 0xffff_ffffn) invalidValue('cap', 'must fit in 32 bits', cap);
    return this.ioctl(ioctls.KVM_CHECK_EXTENSION, c);
  }

  /**
   * `KVM_CHECK_EXTENSION`, typed; the raw integer answer.
   * @example `kvm.checkExtensionInt(Cap.MaxVcpus)`
   */
  checkExtensionInt(cap: Cap): number {
    return this.checkExtensionRaw(checkInt('cap', cap, 0, 0xffff_ffff));
  }

  /**
   * Whether a capability is supported (`checkExtensionInt(cap) > 0`).
   * @example `kvm.checkExtension(Cap.UserMemory) === true`
   */
  checkExtension(cap: Cap): boolean {
    return this.checkExtensionInt(cap) > 0;
  }

  /**
   * `KVM_GET_VCPU_MMAP_SIZE`: bytes to mmap for a vCPU's `kvm_run`.
   * @example `kvm.getVcpuMmapSize() >= 4096`
   * @throws {@link KvmError}
   */
  getVcpuMmapSize(): number {
    const size = this.ioctl(ioctls.KVM_GET_VCPU_MMAP_SIZE);
    return size;
  }

  /**
   * The recommended number of vCPUs (`KVM_CAP_NR_VCPUS`), 4 when the kernel does not say.
   * @example `kvm.getNrVcpus() >= 1`
   */
  getNrVcpus(): number {
    let x = 0;
    try { x = this.checkExtensionInt(CapValues.NrVcpus); } catch (e) { if (this.closed) throw e; }
    return x > 0 ? x : 4;
  }

  /**
   * The maximum number of memory slots (`KVM_CAP_NR_MEMSLOTS`), 32 when the kernel does not say.
   * @example `kvm.getNrMemslots() >= 32`
   */
  getNrMemslots(): number {
    let x = 0;
    try { x = this.checkExtensionInt(CapValues.NrMemslots); } catch (e) { if (this.closed) throw e; }
    return x > 0 ? x : 32;
  }

  /**
   * The maximum number of vCPUs per VM (`KVM_CAP_MAX_VCPUS`), falling back to {@link getNrVcpus}.
   * @example `kvm.getMaxVcpus() >= kvm.getNrVcpus()`
   */
  getMaxVcpus(): number {
    const x = this.checkExtensionInt(CapValues.MaxVcpus);
    return x > 0 ? x : this.getNrVcpus();
  }

  /**
   * The maximum vCPU id + 1 (`KVM_CAP_MAX_VCPU_ID`), falling back to {@link getMaxVcpus}.
   * @example `vm.createVcpu(kvm.getMaxVcpuId() - 1)`
   */
  getMaxVcpuId(): number {
    const x = this.checkExtensionInt(CapValues.MaxVcpuId);
    return x > 0 ? x : this.getMaxVcpus();
  }

  /**
   * `KVM_CREATE_VM` with the default type.
   * @example `using vm = kvm.createVm();`
   * @throws {@link KvmError} from `KVM_CREATE_VM` (e.g. ENOMEM) or `KVM_GET_VCPU_MMAP_SIZE`
   */
  createVm(): VmFd {
    return this.createVmWithType(0n);
  }

  /**
   * `KVM_CREATE_VM` with a machine type (e.g. `KVM_X86_SW_PROTECTED_VM`).
   * @example `kvm.createVmWithType(0n)`
   * @throws {@link KvmError} EINVAL for an unknown type
   */
  createVmWithType(type: bigint | number): VmFd {
    const t = checkU64('type', type);
    const runSize = this.getVcpuMmapSize();
    const fd = this.ioctl(ioctls.KVM_CREATE_VM, t);
    return this.#adoptVm(fd, runSize);
  }

  /**
   * Wraps an existing VM fd, which the VmFd owns from now on (`create_vmfd_from_rawfd`).
   * @example `const vm2 = kvm.createVmfdFromRawfd(backend.dup(vm.asRawFd()));`
   */
  createVmfdFromRawfd(fd: number): VmFd {
    checkInt('fd', fd, 0, 0x7fff_ffff);
    return this.#adoptVm(fd, this.getVcpuMmapSize());
  }

  #adoptVm(fd: number, runSize: number): VmFd {
    const vm = new VmFd(this.backend, fd, runSize);
    const release = this.adopt(vm);
    vm.onClosed(release);
    return vm;
  }

  // @section x86 cpuid/msr (getSupportedCpuid, getEmulatedCpuid, getMsrIndexList, getMsrFeatureIndexList, getMsrs)

  // @section arm64 (getHostIpaLimit, getGuestDebugHwBps, getGuestDebugHwWps, createVmWithIpaSize)
}
