/**
 * `Cap`: the KVM capabilities of kvm-ioctls' `Cap` enum, valued like `KVM_CAP_*`.
 *
 * Query one with `kvm.checkExtension(Cap.UserMemory)`; a capability the enum lacks with
 * `kvm.checkExtensionRaw(number)`.
 *
 * @module
 */
import { kvm } from '../abi/kvm-constants';
import { checkU64, invalidValue } from '../abi/validate';

/** KVM capabilities (kvm-ioctls `Cap`, all 128 variants). Values are the kernel's `KVM_CAP_*`. */
export const Cap = {
  Irqchip: kvm.KVM_CAP_IRQCHIP,
  Hlt: kvm.KVM_CAP_HLT,
  UserMemory: kvm.KVM_CAP_USER_MEMORY,
  SetTssAddr: kvm.KVM_CAP_SET_TSS_ADDR,
  NrVcpus: kvm.KVM_CAP_NR_VCPUS,
  NrMemslots: kvm.KVM_CAP_NR_MEMSLOTS,
  MaxVcpus: kvm.KVM_CAP_MAX_VCPUS,
  MaxVcpuId: kvm.KVM_CAP_MAX_VCPU_ID,
  ImmediateExit: kvm.KVM_CAP_IMMEDIATE_EXIT,
  // @section caps (the remaining variants, in the order of kvm-ioctls' cap.rs)
  MmuShadowCacheControl: kvm.KVM_CAP_MMU_SHADOW_CACHE_CONTROL,
  Vapic: kvm.KVM_CAP_VAPIC,
  ExtCpuid: kvm.KVM_CAP_EXT_CPUID,
  Clocksource: kvm.KVM_CAP_CLOCKSOURCE,
  Pit: kvm.KVM_CAP_PIT,
  NopIoDelay: kvm.KVM_CAP_NOP_IO_DELAY,
  PvMmu: kvm.KVM_CAP_PV_MMU,
  MpState: kvm.KVM_CAP_MP_STATE,
  CoalescedMmio: kvm.KVM_CAP_COALESCED_MMIO,
  SyncMmu: kvm.KVM_CAP_SYNC_MMU,
  Iommu: kvm.KVM_CAP_IOMMU,
  DestroyMemoryRegionWorks: kvm.KVM_CAP_DESTROY_MEMORY_REGION_WORKS,
  UserNmi: kvm.KVM_CAP_USER_NMI,
  /** x86_64 and aarch64 only in kvm-ioctls. */
  SetGuestDebug: kvm.KVM_CAP_SET_GUEST_DEBUG,
  /** x86_64 only in kvm-ioctls. */
  ReinjectControl: kvm.KVM_CAP_REINJECT_CONTROL,
  IrqRouting: kvm.KVM_CAP_IRQ_ROUTING,
  IrqInjectStatus: kvm.KVM_CAP_IRQ_INJECT_STATUS,
  AssignDevIrq: kvm.KVM_CAP_ASSIGN_DEV_IRQ,
  JoinMemoryRegionsWorks: kvm.KVM_CAP_JOIN_MEMORY_REGIONS_WORKS,
  /** x86_64 only in kvm-ioctls. */
  Mce: kvm.KVM_CAP_MCE,
  Irqfd: kvm.KVM_CAP_IRQFD,
  /** x86_64 only in kvm-ioctls. */
  Pit2: kvm.KVM_CAP_PIT2,
  SetBootCpuId: kvm.KVM_CAP_SET_BOOT_CPU_ID,
  /** x86_64 only in kvm-ioctls. */
  PitState2: kvm.KVM_CAP_PIT_STATE2,
  Ioeventfd: kvm.KVM_CAP_IOEVENTFD,
  SetIdentityMapAddr: kvm.KVM_CAP_SET_IDENTITY_MAP_ADDR,
  /** x86_64 only in kvm-ioctls. */
  XenHvm: kvm.KVM_CAP_XEN_HVM,
  AdjustClock: kvm.KVM_CAP_ADJUST_CLOCK,
  InternalErrorData: kvm.KVM_CAP_INTERNAL_ERROR_DATA,
  /** x86_64 and aarch64 only in kvm-ioctls. */
  VcpuEvents: kvm.KVM_CAP_VCPU_EVENTS,
  S390Psw: kvm.KVM_CAP_S390_PSW,
  PpcSegstate: kvm.KVM_CAP_PPC_SEGSTATE,
  Hyperv: kvm.KVM_CAP_HYPERV,
  HypervVapic: kvm.KVM_CAP_HYPERV_VAPIC,
  HypervSpin: kvm.KVM_CAP_HYPERV_SPIN,
  PciSegment: kvm.KVM_CAP_PCI_SEGMENT,
  PpcPairedSingles: kvm.KVM_CAP_PPC_PAIRED_SINGLES,
  IntrShadow: kvm.KVM_CAP_INTR_SHADOW,
  /** x86_64 only in kvm-ioctls. */
  Debugregs: kvm.KVM_CAP_DEBUGREGS,
  X86RobustSinglestep: kvm.KVM_CAP_X86_ROBUST_SINGLESTEP,
  PpcOsi: kvm.KVM_CAP_PPC_OSI,
  PpcUnsetIrq: kvm.KVM_CAP_PPC_UNSET_IRQ,
  EnableCap: kvm.KVM_CAP_ENABLE_CAP,
  /** x86_64 only in kvm-ioctls. */
  Xsave: kvm.KVM_CAP_XSAVE,
  /** x86_64 only in kvm-ioctls. */
  Xsave2: kvm.KVM_CAP_XSAVE2,
  /** x86_64 only in kvm-ioctls. */
  Xcrs: kvm.KVM_CAP_XCRS,
  PpcGetPvinfo: kvm.KVM_CAP_PPC_GET_PVINFO,
  PpcIrqLevel: kvm.KVM_CAP_PPC_IRQ_LEVEL,
  AsyncPf: kvm.KVM_CAP_ASYNC_PF,
  TscControl: kvm.KVM_CAP_TSC_CONTROL,
  GetTscKhz: kvm.KVM_CAP_GET_TSC_KHZ,
  PpcBookeSregs: kvm.KVM_CAP_PPC_BOOKE_SREGS,
  SpaprTce: kvm.KVM_CAP_SPAPR_TCE,
  PpcSmt: kvm.KVM_CAP_PPC_SMT,
  PpcRma: kvm.KVM_CAP_PPC_RMA,
  PpcHior: kvm.KVM_CAP_PPC_HIOR,
  PpcPapr: kvm.KVM_CAP_PPC_PAPR,
  SwTlb: kvm.KVM_CAP_SW_TLB,
  OneReg: kvm.KVM_CAP_ONE_REG,
  S390Gmap: kvm.KVM_CAP_S390_GMAP,
  TscDeadlineTimer: kvm.KVM_CAP_TSC_DEADLINE_TIMER,
  S390Ucontrol: kvm.KVM_CAP_S390_UCONTROL,
  SyncRegs: kvm.KVM_CAP_SYNC_REGS,
  Pci23: kvm.KVM_CAP_PCI_2_3,
  KvmclockCtrl: kvm.KVM_CAP_KVMCLOCK_CTRL,
  SignalMsi: kvm.KVM_CAP_SIGNAL_MSI,
  PpcGetSmmuInfo: kvm.KVM_CAP_PPC_GET_SMMU_INFO,
  S390Cow: kvm.KVM_CAP_S390_COW,
  PpcAllocHtab: kvm.KVM_CAP_PPC_ALLOC_HTAB,
  ReadonlyMem: kvm.KVM_CAP_READONLY_MEM,
  IrqfdResample: kvm.KVM_CAP_IRQFD_RESAMPLE,
  PpcBookeWatchdog: kvm.KVM_CAP_PPC_BOOKE_WATCHDOG,
  PpcHtabFd: kvm.KVM_CAP_PPC_HTAB_FD,
  S390CssSupport: kvm.KVM_CAP_S390_CSS_SUPPORT,
  PpcEpr: kvm.KVM_CAP_PPC_EPR,
  ArmPsci: kvm.KVM_CAP_ARM_PSCI,
  ArmSetDeviceAddr: kvm.KVM_CAP_ARM_SET_DEVICE_ADDR,
  DeviceCtrl: kvm.KVM_CAP_DEVICE_CTRL,
  IrqMpic: kvm.KVM_CAP_IRQ_MPIC,
  PpcRtas: kvm.KVM_CAP_PPC_RTAS,
  IrqXics: kvm.KVM_CAP_IRQ_XICS,
  ArmEl132bit: kvm.KVM_CAP_ARM_EL1_32BIT,
  SpaprMultitce: kvm.KVM_CAP_SPAPR_MULTITCE,
  ExtEmulCpuid: kvm.KVM_CAP_EXT_EMUL_CPUID,
  HypervTime: kvm.KVM_CAP_HYPERV_TIME,
  IoapicPolarityIgnored: kvm.KVM_CAP_IOAPIC_POLARITY_IGNORED,
  EnableCapVm: kvm.KVM_CAP_ENABLE_CAP_VM,
  S390Irqchip: kvm.KVM_CAP_S390_IRQCHIP,
  IoeventfdNoLength: kvm.KVM_CAP_IOEVENTFD_NO_LENGTH,
  VmAttributes: kvm.KVM_CAP_VM_ATTRIBUTES,
  ArmPsci02: kvm.KVM_CAP_ARM_PSCI_0_2,
  PpcFixupHcall: kvm.KVM_CAP_PPC_FIXUP_HCALL,
  PpcEnableHcall: kvm.KVM_CAP_PPC_ENABLE_HCALL,
  CheckExtensionVm: kvm.KVM_CAP_CHECK_EXTENSION_VM,
  S390UserSigp: kvm.KVM_CAP_S390_USER_SIGP,
  /** x86_64 only in kvm-ioctls. */
  X86Smm: kvm.KVM_CAP_X86_SMM,
  /** x86_64 only in kvm-ioctls. */
  SplitIrqchip: kvm.KVM_CAP_SPLIT_IRQCHIP,
  ArmPmuV3: kvm.KVM_CAP_ARM_PMU_V3,
  ArmVmIPASize: kvm.KVM_CAP_ARM_VM_IPA_SIZE,
  MsiDevid: kvm.KVM_CAP_MSI_DEVID,
  HypervSynic: kvm.KVM_CAP_HYPERV_SYNIC,
  HypervSynic2: kvm.KVM_CAP_HYPERV_SYNIC2,
  DebugHwBps: kvm.KVM_CAP_GUEST_DEBUG_HW_BPS,
  DebugHwWps: kvm.KVM_CAP_GUEST_DEBUG_HW_WPS,
  GetMsrFeatures: kvm.KVM_CAP_GET_MSR_FEATURES,
  CoalescedPio: kvm.KVM_CAP_COALESCED_PIO,
  /** aarch64 only in kvm-ioctls. */
  ArmSve: kvm.KVM_CAP_ARM_SVE,
  /** aarch64 only in kvm-ioctls. */
  ArmPtrAuthAddress: kvm.KVM_CAP_ARM_PTRAUTH_ADDRESS,
  /** aarch64 only in kvm-ioctls. */
  ArmPtrAuthGeneric: kvm.KVM_CAP_ARM_PTRAUTH_GENERIC,
  /** x86_64 only in kvm-ioctls. */
  X86UserSpaceMsr: kvm.KVM_CAP_X86_USER_SPACE_MSR,
  /** x86_64 only in kvm-ioctls. */
  X86MsrFilter: kvm.KVM_CAP_X86_MSR_FILTER,
  /** x86_64 only in kvm-ioctls. */
  ExitHypercall: kvm.KVM_CAP_EXIT_HYPERCALL,
  /** x86_64 only in kvm-ioctls. */
  MemoryFaultInfo: kvm.KVM_CAP_MEMORY_FAULT_INFO,
  UserMemory2: kvm.KVM_CAP_USER_MEMORY2,
  GuestMemfd: kvm.KVM_CAP_GUEST_MEMFD,
  MemoryAttributes: kvm.KVM_CAP_MEMORY_ATTRIBUTES,
  /** x86_64 only in kvm-ioctls. */
  NestedState: kvm.KVM_CAP_NESTED_STATE,
  /** x86_64 only in kvm-ioctls. */
  X2ApicApi: kvm.KVM_CAP_X2APIC_API,
  DirtyLogRing: kvm.KVM_CAP_DIRTY_LOG_RING,
} as const;

/** A capability number from {@link Cap}. */
export type Cap = (typeof Cap)[keyof typeof Cap];

/**
 * The architectures kvm-ioctls compiles each {@link Cap} variant for (its `#[cfg]`s). Variants
 * not listed here exist on every architecture (x86_64, aarch64, riscv64). The value is still a
 * plain capability number everywhere: asking an x86 kernel about an arm-only cap answers 0.
 */
export const CapArch: Readonly<Partial<Record<keyof typeof Cap, ReadonlyArray<'x86_64' | 'aarch64'>>>> = {
  SetGuestDebug: ['x86_64', 'aarch64'],
  VcpuEvents: ['x86_64', 'aarch64'],
  ReinjectControl: ['x86_64'],
  Mce: ['x86_64'],
  Pit2: ['x86_64'],
  PitState2: ['x86_64'],
  XenHvm: ['x86_64'],
  Debugregs: ['x86_64'],
  Xsave: ['x86_64'],
  Xsave2: ['x86_64'],
  Xcrs: ['x86_64'],
  X86Smm: ['x86_64'],
  SplitIrqchip: ['x86_64'],
  X86UserSpaceMsr: ['x86_64'],
  X86MsrFilter: ['x86_64'],
  ExitHypercall: ['x86_64'],
  MemoryFaultInfo: ['x86_64'],
  NestedState: ['x86_64'],
  X2ApicApi: ['x86_64'],
  ArmSve: ['aarch64'],
  ArmPtrAuthAddress: ['aarch64'],
  ArmPtrAuthGeneric: ['aarch64'],
};

/**
 * The argument of `KVM_CHECK_EXTENSION` (on the system or a VM fd): any capability number that
 * fits in 32 bits, as a number or a bigint.
 *
 * @throws `TypeError`/`RangeError` for anything else
 * @internal
 */
export function capNumber(cap: number | bigint): bigint {
  const c = checkU64('cap', cap);
  if (c > 0xffff_ffffn) invalidValue('cap', 'must fit in 32 bits', cap);
  return c;
}
