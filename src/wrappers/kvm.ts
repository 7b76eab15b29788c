/**
 * `Kvm`: the system fd (`/dev/kvm`).
 *
 * @module
 */
import { KVM_VM_TYPE_ARM_IPA_SIZE_MASK } from '../abi/arm64';
import { KvmError, errnoOf } from '../abi/errors';
import { ioctls, sys } from '../abi/kvm-constants';
import { checkBool, checkInt, checkString, checkU32, checkU64, invalidType } from '../abi/validate';
import { backendOf, type BackendOptions } from './backend-options';
import type { Cap } from './cap';
import { Cap as CapValues, capNumber } from './cap';
import { CpuId, famBuffer, KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES, MsrList, Msrs } from './fam';
import { FdOwner } from './fd';
import { VmFd } from './vm-fd';

export type { BackendOptions } from './backend-options';

/** How many times `createVmWithType` tries KVM_CREATE_VM while it fails with EINTR. */
const CREATE_VM_ATTEMPTS = 100;

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
   * Takes ownership of a raw KVM system fd (kvm-ioctls' `FromRawFd`): `close()` closes it. The fd
   * is not checked until the first ioctl (EBADF then, as in kvm-ioctls).
   * @example `const kvm = Kvm.fromRawFd(Kvm.openWithCloexec(true));`
   * @throws `RangeError` ERR_OUT_OF_RANGE for an fd outside 0..2^31-1; `TypeError` for a non-number
   *   fd or a bad `options.backend`
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
    return this.ioctl(ioctls.KVM_CHECK_EXTENSION, capNumber(cap));
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
    try {
      x = this.checkExtensionInt(CapValues.NrVcpus);
    } catch (e) {
      if (this.closed) throw e;
    }
    return x > 0 ? x : 4;
  }

  /**
   * The maximum number of memory slots (`KVM_CAP_NR_MEMSLOTS`), 32 when the kernel does not say.
   * @example `kvm.getNrMemslots() >= 32`
   */
  getNrMemslots(): number {
    let x = 0;
    try {
      x = this.checkExtensionInt(CapValues.NrMemslots);
    } catch (e) {
      if (this.closed) throw e;
    }
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
   *
   * KVM_CREATE_VM can fail with EINTR, creating nothing, when a signal arrives during the call
   * (measured here: 6–10 % of calls while the process received a signal every millisecond;
   * `bench/create-vm-eintr.ts`). It is retried, as QEMU and gVisor do, up to 100 times in a row.
   *
   * @example `kvm.createVmWithType(0n)`
   * @throws {@link KvmError} EINVAL for an unknown type; EINTR after 100 interrupted attempts
   */
  createVmWithType(type: bigint | number): VmFd {
    const t = checkU64('type', type);
    const runSize = this.getVcpuMmapSize();
    for (let attempt = 1; ; attempt++) {
      try {
        return this.#adoptVm(this.ioctl(ioctls.KVM_CREATE_VM, t), runSize);
      } catch (e) {
        if (!(e instanceof KvmError && e.code === 'EINTR') || attempt >= CREATE_VM_ATTEMPTS) throw e;
      }
    }
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

  /**
   * `KVM_GET_SUPPORTED_CPUID`: the CPUID leaves KVM can expose to a guest, in a buffer of
   * `maxEntries` entries (kvm-ioctls' `get_supported_cpuid`).
   * @example `vcpu.setCpuid2(kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES));`
   * @throws {@link KvmError} ENOMEM when `maxEntries` > 256 (`KVM_MAX_CPUID_ENTRIES`, checked
   *   before any ioctl, as kvm-ioctls); E2BIG from the kernel when the leaves do not fit
   * @throws `RangeError` for a negative or non-integer `maxEntries`
   */
  getSupportedCpuid(maxEntries: number): CpuId {
    return this.#getCpuid(ioctls.KVM_GET_SUPPORTED_CPUID, 'KVM_GET_SUPPORTED_CPUID', maxEntries);
  }

  /**
   * `KVM_GET_EMULATED_CPUID`: the CPUID features KVM emulates (possibly slowly), in a buffer of
   * `maxEntries` entries (kvm-ioctls' `get_emulated_cpuid`).
   * @example `const emulated = kvm.getEmulatedCpuid(KVM_MAX_CPUID_ENTRIES);`
   * @throws {@link KvmError} ENOMEM when `maxEntries` > 256 (local check); E2BIG from the kernel
   *   when the leaves do not fit
   */
  getEmulatedCpuid(maxEntries: number): CpuId {
    return this.#getCpuid(ioctls.KVM_GET_EMULATED_CPUID, 'KVM_GET_EMULATED_CPUID', maxEntries);
  }

  #getCpuid(request: number, name: string, maxEntries: number): CpuId {
    const n = checkInt('maxEntries', maxEntries, 0, Number.MAX_SAFE_INTEGER);
    if (n > KVM_MAX_CPUID_ENTRIES) {
      throw new KvmError(errnoOf('ENOMEM'), 'ioctl', {
        request: name,
        detail: `maxEntries ${n} > KVM_MAX_CPUID_ENTRIES (${KVM_MAX_CPUID_ENTRIES})`,
      });
    }
    const buf = famBuffer('CpuId', n);
    this.ioctl(request, buf);
    return CpuId.decode(buf);
  }

  /**
   * `KVM_GET_MSR_INDEX_LIST`: the MSRs a VMM should save and restore (kvm-ioctls'
   * `get_msr_index_list`; room for 256 indices, `KVM_MAX_MSR_ENTRIES`).
   * @example `const saved = new Msrs(kvm.getMsrIndexList().entries.map((index) => ({ index })));`
   * @throws {@link KvmError} E2BIG when the kernel has more than 256
   */
  getMsrIndexList(): MsrList {
    return this.#getMsrList(ioctls.KVM_GET_MSR_INDEX_LIST);
  }

  /**
   * `KVM_GET_MSR_FEATURE_INDEX_LIST`: the feature MSRs readable with {@link Kvm.getMsrs}
   * (kvm-ioctls' `get_msr_feature_index_list`).
   * @example `kvm.getMsrFeatureIndexList().entries.includes(0x10a)`
   * @throws {@link KvmError} E2BIG when the kernel has more than 256
   */
  getMsrFeatureIndexList(): MsrList {
    return this.#getMsrList(ioctls.KVM_GET_MSR_FEATURE_INDEX_LIST);
  }

  #getMsrList(request: number): MsrList {
    const buf = famBuffer('MsrList', KVM_MAX_MSR_ENTRIES);
    this.ioctl(request, buf);
    return MsrList.decode(buf);
  }

  /**
   * `KVM_GET_MSRS` on the system fd: reads feature MSRs (kvm-ioctls' `Kvm::get_msrs`). The data
   * of `msrs.entries` is updated in place; the kernel stops at the first MSR it cannot read, so
   * only the first `count` entries are valid.
   * @returns the number of MSRs read
   * @example
   * ```ts
   * const msrs = new Msrs([{ index: 0x10a }, { index: 0x345 }]);
   * kvm.getMsrs(msrs) === 2; // msrs.entries[0].data: IA32_ARCH_CAPABILITIES
   * ```
   * @throws {@link KvmError} E2BIG for 256 or more entries (the kernel's MAX_IO_MSRS)
   * @throws `TypeError` when `msrs` is not an {@link Msrs}
   */
  getMsrs(msrs: Msrs): number {
    if (!(msrs instanceof Msrs)) invalidType('msrs', 'an instance of Msrs', msrs);
    this.checkOpen();
    const buf = msrs.encode();
    const n = this.ioctl(ioctls.KVM_GET_MSRS, buf);
    msrs.loadFrom(buf);
    return n;
  }

  // @section arm64 (getHostIpaLimit, getGuestDebugHwBps, getGuestDebugHwWps, createVmWithIpaSize)

  /**
   * The largest guest IPA (physical address) size in bits the host supports
   * (`KVM_CAP_ARM_VM_IPA_SIZE`), 0 when the kernel only supports the default 40 bits or is not
   * arm64 (kvm-ioctls' `get_host_ipa_limit`, aarch64; experimental here).
   * @example `const bits = kvm.getHostIpaLimit(); if (bits > 0) kvm.createVmWithIpaSize(bits);`
   * @throws {@link KvmError} from `KVM_CHECK_EXTENSION`
   */
  getHostIpaLimit(): number {
    return this.checkExtensionInt(CapValues.ArmVmIPASize);
  }

  /**
   * The number of hardware breakpoints (`KVM_CAP_GUEST_DEBUG_HW_BPS`; 0 on x86), kvm-ioctls'
   * `get_guest_debug_hw_bps` (aarch64; experimental).
   * @example `kvm.getGuestDebugHwBps() >= 0`
   * @throws {@link KvmError} from `KVM_CHECK_EXTENSION`
   */
  getGuestDebugHwBps(): number {
    return this.checkExtensionInt(CapValues.DebugHwBps);
  }

  /**
   * The number of hardware watchpoints (`KVM_CAP_GUEST_DEBUG_HW_WPS`; 0 on x86), kvm-ioctls'
   * `get_guest_debug_hw_wps` (aarch64; experimental).
   * @example `kvm.getGuestDebugHwWps() >= 0`
   * @throws {@link KvmError} from `KVM_CHECK_EXTENSION`
   */
  getGuestDebugHwWps(): number {
    return this.checkExtensionInt(CapValues.DebugHwWps);
  }

  /**
   * `KVM_CREATE_VM` with an arm64 IPA size: the type is `ipaSize & KVM_VM_TYPE_ARM_IPA_SIZE_MASK`
   * (kvm-ioctls' `create_vm_with_ipa_size`, aarch64; experimental).
   * @example `using vm = kvm.createVmWithIpaSize(kvm.getHostIpaLimit());`
   * @throws {@link KvmError} EINVAL for a size below 32 or above {@link getHostIpaLimit}, and on x86
   * @throws `RangeError` when `ipaSize` is not a u32
   */
  createVmWithIpaSize(ipaSize: number): VmFd {
    const bits = checkU32('ipaSize', ipaSize);
    return this.createVmWithType(BigInt(bits & KVM_VM_TYPE_ARM_IPA_SIZE_MASK));
  }
}
