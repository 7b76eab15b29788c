/**
 * `Cap`: every variant of kvm-ioctls' enum (0.24 + DirtyLogRing), valued as the kernel's KVM_CAP_*.
 * The expected numbers are copied from /work/shared/notes/kvm-ioctls-api.md §4 (read from cap.rs),
 * not from the generated constants the enum itself uses, so a wrong mapping fails here.
 */
import { Cap, CapArch } from '../../src/wrappers/cap';

// kvm-ioctls cap.rs, in its order.
const EXPECTED: Record<string, number> = {
  Irqchip: 0,
  Hlt: 1,
  MmuShadowCacheControl: 2,
  UserMemory: 3,
  SetTssAddr: 4,
  Vapic: 6,
  ExtCpuid: 7,
  Clocksource: 8,
  NrVcpus: 9,
  NrMemslots: 10,
  Pit: 11,
  NopIoDelay: 12,
  PvMmu: 13,
  MpState: 14,
  CoalescedMmio: 15,
  SyncMmu: 16,
  Iommu: 18,
  DestroyMemoryRegionWorks: 21,
  UserNmi: 22,
  SetGuestDebug: 23,
  ReinjectControl: 24,
  IrqRouting: 25,
  IrqInjectStatus: 26,
  AssignDevIrq: 29,
  JoinMemoryRegionsWorks: 30,
  Mce: 31,
  Irqfd: 32,
  Pit2: 33,
  SetBootCpuId: 34,
  PitState2: 35,
  Ioeventfd: 36,
  SetIdentityMapAddr: 37,
  XenHvm: 38,
  AdjustClock: 39,
  InternalErrorData: 40,
  VcpuEvents: 41,
  S390Psw: 42,
  PpcSegstate: 43,
  Hyperv: 44,
  HypervVapic: 45,
  HypervSpin: 46,
  PciSegment: 47,
  PpcPairedSingles: 48,
  IntrShadow: 49,
  Debugregs: 50,
  X86RobustSinglestep: 51,
  PpcOsi: 52,
  PpcUnsetIrq: 53,
  EnableCap: 54,
  Xsave: 55,
  Xsave2: 208,
  Xcrs: 56,
  PpcGetPvinfo: 57,
  PpcIrqLevel: 58,
  AsyncPf: 59,
  TscControl: 60,
  GetTscKhz: 61,
  PpcBookeSregs: 62,
  SpaprTce: 63,
  PpcSmt: 64,
  PpcRma: 65,
  MaxVcpus: 66,
  MaxVcpuId: 128,
  PpcHior: 67,
  PpcPapr: 68,
  SwTlb: 69,
  OneReg: 70,
  S390Gmap: 71,
  TscDeadlineTimer: 72,
  S390Ucontrol: 73,
  SyncRegs: 74,
  Pci23: 75,
  KvmclockCtrl: 76,
  SignalMsi: 77,
  PpcGetSmmuInfo: 78,
  S390Cow: 79,
  PpcAllocHtab: 80,
  ReadonlyMem: 81,
  IrqfdResample: 82,
  PpcBookeWatchdog: 83,
  PpcHtabFd: 84,
  S390CssSupport: 85,
  PpcEpr: 86,
  ArmPsci: 87,
  ArmSetDeviceAddr: 88,
  DeviceCtrl: 89,
  IrqMpic: 90,
  PpcRtas: 91,
  IrqXics: 92,
  ArmEl132bit: 93,
  SpaprMultitce: 94,
  ExtEmulCpuid: 95,
  HypervTime: 96,
  IoapicPolarityIgnored: 97,
  EnableCapVm: 98,
  S390Irqchip: 99,
  IoeventfdNoLength: 100,
  VmAttributes: 101,
  ArmPsci02: 102,
  PpcFixupHcall: 103,
  PpcEnableHcall: 104,
  CheckExtensionVm: 105,
  S390UserSigp: 106,
  X86Smm: 117,
  SplitIrqchip: 121,
  ArmPmuV3: 126,
  ImmediateExit: 136,
  ArmVmIPASize: 165,
  MsiDevid: 131,
  HypervSynic: 123,
  HypervSynic2: 148,
  DebugHwBps: 119,
  DebugHwWps: 120,
  GetMsrFeatures: 153,
  CoalescedPio: 162,
  ArmSve: 170,
  ArmPtrAuthAddress: 171,
  ArmPtrAuthGeneric: 172,
  X86UserSpaceMsr: 188,
  X86MsrFilter: 189,
  ExitHypercall: 201,
  MemoryFaultInfo: 232,
  UserMemory2: 231,
  GuestMemfd: 234,
  MemoryAttributes: 233,
  NestedState: 157,
  X2ApicApi: 129,
  DirtyLogRing: 192,
};

describe('Cap', () => {
  it('has exactly the 128 variants of kvm-ioctls', () => {
    expect(Object.keys(EXPECTED)).toHaveLength(128);
    expect(Object.keys(Cap)).toHaveLength(128);
    expect(new Set(Object.keys(Cap))).toEqual(new Set(Object.keys(EXPECTED)));
  });

  it('values every variant with the kernel capability number', () => {
    for (const [name, value] of Object.entries(EXPECTED)) {
      expect([name, (Cap as Record<string, number>)[name]]).toEqual([name, value]);
    }
    expect(new Set(Object.values(Cap)).size).toBe(128);
  });

  it('includes the caps that only newer headers (kvm_compat.h) define', () => {
    expect([Cap.UserMemory2, Cap.MemoryFaultInfo, Cap.MemoryAttributes, Cap.GuestMemfd]).toEqual([231, 232, 233, 234]);
  });

  it('records per-arch availability as kvm-ioctls compiles it (x86_64 125, aarch64 111, riscv64 106)', () => {
    const names = Object.keys(Cap) as Array<keyof typeof Cap>;
    const on = (arch: 'x86_64' | 'aarch64' | 'riscv64') =>
      names.filter((n) => {
        const a = CapArch[n];
        return a === undefined || (a as readonly string[]).includes(arch);
      }).length;
    expect([on('x86_64'), on('aarch64'), on('riscv64')]).toEqual([125, 111, 106]);
    for (const n of Object.keys(CapArch)) expect(names).toContain(n);
  });
});
