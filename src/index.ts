/**
 * kvm-rx: safe, typed Linux KVM for Node.js.
 *
 * The wrappers mirror rust-vmm's kvm-ioctls: {@link Kvm}, {@link VmFd}, {@link VcpuFd},
 * {@link DeviceFd}, {@link KvmRunWrapper}, {@link Cap}, {@link IoEventAddress}, {@link NoDatamatch},
 * {@link VcpuExit} and {@link KvmError}.
 *
 * @packageDocumentation
 */
export { KvmError, KvmClosedError, KvmRangeError, KvmTypeError } from './abi/errors';
export type { KvmErrorOptions } from './abi/errors';
import { kvm as constants } from './abi/kvm-constants';
export { ioctls, kvm as constants } from './abi/kvm-constants';
export * from './abi/layouts';
export type { FieldDef, Scalar, StructDef } from './abi/codec';
export type { IoctlBackend, IoctlArg, MmapFlags } from './backend/types';
export { NativeBackend } from './backend/native';
export { Kvm } from './wrappers/kvm';
export type { BackendOptions } from './wrappers/kvm';
export type { Closeable } from './wrappers/fd';
export { VmFd } from './wrappers/vm-fd';
export type { UserMemoryRegion } from './wrappers/vm-fd';
export { VcpuFd } from './wrappers/vcpu-fd';
export { KvmRunWrapper } from './wrappers/kvm-run';
export { Cap } from './wrappers/cap';
export { GuestMemory, GuestMemoryMap } from './wrappers/guest-memory';
export type { GuestMemoryFileOptions, GuestMemoryOptions, GuestRegion } from './wrappers/guest-memory';
export { VCPU_EXIT_KINDS } from './wrappers/vcpu-exit';
export type * from './wrappers/vcpu-exit';

/** `KVM_MEM_LOG_DIRTY_PAGES`: the slot keeps a dirty-page log (see `VmFd#getDirtyLog`). */
export const KVM_MEM_LOG_DIRTY_PAGES = constants.KVM_MEM_LOG_DIRTY_PAGES;
/** `KVM_MEM_READONLY`: guest writes to the slot exit as MMIO. */
export const KVM_MEM_READONLY = constants.KVM_MEM_READONLY;
export * from './runtime/operators/index';
// @section exports: VM interrupts, events and devices
export { DeviceFd } from './wrappers/device-fd';
export type { DeviceAttr } from './wrappers/device-fd';
export { EventFd, AbortError } from './wrappers/event-fd';
export type { EventFdOptions } from './wrappers/event-fd';
export { Tap, TUN, VNET_HDR_SIZE } from './wrappers/tap';
export type { TapOptions } from './wrappers/tap';
export { IoEventAddress, NoDatamatch, Datamatch } from './wrappers/io-event';
export type { IoEventDatamatch } from './wrappers/io-event';
export { GuestMemfd } from './wrappers/guest-memfd';
export { MsrFilterDefaultAction, MsrFilterRangeFlags } from './wrappers/vm-args';
export type {
  CreateDeviceInput,
  IrqRoutingEntry,
  IrqchipInput,
  MsrFilterRange,
  UserMemoryRegion2,
} from './wrappers/vm-args';
/** `KVM_MEM_GUEST_MEMFD`: the slot's private memory comes from a guest_memfd (`VmFd#setUserMemoryRegion2`). */
export const KVM_MEM_GUEST_MEMFD = constants.KVM_MEM_GUEST_MEMFD;
export { SyncReg, Xsave, KvmNestedStateBuffer } from './wrappers/vcpu-fd';
export type { EnableCap, DeepPartial } from './wrappers/vcpu-fd';
export type { CoalescedAddress } from './wrappers/vm-fd';

// CPUID/MSR collections and arm64 (experimental) ABI helpers.
export { CapArch } from './wrappers/cap';
export {
  CpuId,
  Msrs,
  MsrList,
  RegList,
  FamCollection,
  KVM_MAX_CPUID_ENTRIES,
  KVM_MAX_MSR_ENTRIES,
  KVM_MAX_REG_LIST_ENTRIES,
} from './wrappers/fam';
export type { CpuIdEntryInput, MsrEntryInput } from './wrappers/fam';
export * as arm64 from './abi/arm64';
export { regSize } from './abi/arm64';
export { _IO, _IOR, _IOW, _IOWR, _IOC, iocFields } from './abi/ioc';

// The vCPU runtime: worker threads, Observables, the in-thread runner.
export { VcpuRuntime } from './runtime/pool';
export type { StartOptions, VcpuRuntimeOptions } from './runtime/pool';
export type { VcpuContext, VcpuPipeline } from './runtime/pipeline';
export type { PostedRange } from './runtime/protocol';
export { VcpuRun } from './runtime/vcpu-run';
export type { ExitSummary, RunOutcome } from './runtime/vcpu-run';
export { runInThread, vcpuExits } from './runtime/in-thread';
export type { InThreadOptions } from './runtime/in-thread';
export { fromIoEvent } from './runtime/from-io-event';
export * from './devices/index';
// virtio device snapshots (issue 11): the saved state of a VirtioMmioDevice.
export type { VirtioMmioState, VirtioMmioQueueState, VirtioRestoreOptions } from './devices/virtio/mmio-device';
export type { VirtioMmioRegisterFile } from './devices/virtio/mmio-transport';
export { VSOCK_EVENT_TRANSPORT_RESET } from './devices/virtio/vsock';
// The legacy PC devices' saved state (issue 11: snapshots).
export type { Uart16550State } from './devices/uart16550';
export type { I8042State } from './devices/i8042';
export type { CmosState } from './devices/cmos';
export type { PciAbsentState } from './devices/pci-absent';
export type { DebugPortsState } from './devices/debug-ports';
export type { LegacyPcState } from './devices/legacy-pc';
// The VMM: bootLinux at the high level; createLinuxMachine for your own run loop; prepareKernel
// (recognise, decompress and load a kernel image) and e820Map for your own layout; cpioNewc for
// initramfs images. (The other building blocks stay in src/vmm/: not public API.)
export { bootLinux, restoreLinux, VIRTIO_MMIO_BASE, VIRTIO_GSIS } from './vmm/linux';
export { createLinuxMachine, e820Map, prepareKernel } from './vmm/boot';
export type {
  BootInfo,
  E820Entry,
  LinuxMachine,
  LinuxMachineConfig,
  PreparedKernel,
  PrepareKernelOptions,
} from './vmm/boot';
export type { ElfKernel, ElfSegment, PhysWriter } from './vmm/elf';
export type { BzImage, PayloadFormat } from './vmm/bzimage';
export { cpioNewc } from './vmm/cpio';
export { saveVcpuState, restoreVcpuState, saveVmState, restoreVmState, saveableMsrs } from './vmm/vcpu-state';
export type { VcpuState, VmState } from './vmm/vcpu-state';
export type { CpioEntry } from './vmm/cpio';
// Sandboxes: a guest built with the guest SDK (guest/sdk/), called function by function.
export { Sandbox, SandboxError, GuestError, SANDBOX_ABI_VERSION, SANDBOX_LAYOUT } from './vmm/sandbox/index';
export type {
  SandboxOptions,
  CallOptions,
  HostFunction,
  SandboxErrorCode,
  SandboxFault,
  SandboxValue,
  JsonValue,
} from './vmm/sandbox/index';
export type {
  BootLinuxOptions,
  LinuxOutcome,
  LinuxSnapshotOptions,
  LinuxVm,
  RestoreLinuxOptions,
  RunLinuxOptions,
} from './vmm/linux';
export type { LinuxSnapshotState, LinuxSnapshotVirtio, PrepareLinuxRestoreOptions } from './vmm/linux-snapshot';
export { PreparedLinuxVm, prepareLinuxRestore } from './vmm/linux-snapshot';
export {
  SNAPSHOT_FORMAT_VERSION,
  SNAPSHOT_MAGIC,
  SNAPSHOT_PAGE_SIZE,
  checkSnapshotHost,
  decodeSnapshotState,
  encodeSnapshotState,
  mapSnapshotMemory,
  mergeSnapshots,
  readSnapshotChain,
  readSnapshotFile,
  snapshotHost,
  writeSnapshotFile,
} from './vmm/snapshot-file';
export type {
  ReadSnapshotOptions,
  SnapshotFile,
  SnapshotHeader,
  SnapshotHost,
  SnapshotRegionHeader,
  SnapshotRegionSource,
  WriteSnapshotOptions,
} from './vmm/snapshot-file';
export type { LinuxDeviceStage, LinuxResetCause } from './vmm/linux-devices';
export { runDemo } from './vmm/demo';
export type { DemoOptions, DemoOutcome } from './vmm/demo';
export { restoreDemo, startDemo } from './vmm/demo';
export { restoreMachine } from './vmm/restore-machine';
export type { RestoreMachineOptions, RestoredMachine } from './vmm/restore-machine';
export type { DemoSnapshotOptions, DemoVm, RestoreDemoOptions } from './vmm/demo';
export { DEMO_MEM_SIZE, DEMO_SNAPSHOT_MACHINE, checkDemoSnapshotState } from './vmm/demo-snapshot';
export type { DemoConsoleState, DemoSnapshotState } from './vmm/demo-snapshot';
export { BootImageError, SnapshotError } from './vmm/errors';
export type { BootImageErrorCode, SnapshotErrorCode } from './vmm/errors';
export { hostVirtualization, stockKernelCmdline } from './vmm/host';
export { enterLongMode, LONG_MODE_TABLES } from './vmm/long-mode';
export { enterRealMode } from './vmm/real-mode';
export type { HostVirtualization } from './vmm/host';
export { checkHost, hostSummary, formatReport, reportJson, RELIED_ON_CAPS } from './vmm/doctor';
export type { CapNeed, CheckHostOptions, CheckStatus, HostCheck, HostFacts, HostReport } from './vmm/doctor';
export { EmulationFailureError } from './vmm/emulation-fallback';
export type { EmulationFallbackStats } from './vmm/emulation-fallback';
// The GDB remote stub: attachGdb(machine, { listen }) for bootLinux()/startDemo() handles (or a
// GdbMachine of your own); GdbSession and GdbTarget to serve gdb for a target of your own.
export { attachGdb, parseGdbListen, GdbSession, GdbTargetError, KvmGdbTarget, GDB_MACHINE } from './vmm/gdb/index';
export type {
  AddressSpace,
  AttachGdbOptions,
  BreakpointType,
  Debuggable,
  GdbListen,
  GdbMachine,
  GdbServer,
  GdbSessionOptions,
  GdbTarget,
  GdbTransport,
  KvmGdbTargetOptions,
  SessionEnd,
  SoftwareBreakpoints,
  StopReason,
  TargetExited,
} from './vmm/gdb/index';
