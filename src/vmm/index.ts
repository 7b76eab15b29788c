/**
 * The VMM layer: booting Linux on kvm-rx. Kernel image parsing (ELF vmlinux, bzImage), the
 * direct 64-bit boot machine, userspace fallbacks for KVM emulation failures, and a newc cpio
 * writer for initramfs images.
 *
 * @module
 */
export { BootImageError } from './errors';
export type { BootImageErrorCode } from './errors';
export { parseElf, loadElf, isElf, EM_X86_64 } from './elf';
export type { ElfKernel, ElfSegment, PhysWriter } from './elf';
export {
  parseBzImage,
  bzImagePayload,
  isBzImage,
  payloadFormat,
  BZIMAGE_LOAD_ADDRESS,
  ENTRY64_OFFSET,
  MIN_PROTOCOL,
} from './bzimage';
export type { BzImage, PayloadFormat } from './bzimage';
export {
  createLinuxMachine,
  prepareKernel,
  layoutGuest,
  setupBootVcpu,
  buildZeroPage,
  readE820,
  e820Map,
  placeInitrd,
  identityPageTables,
  gdtBytes,
  longModeSregs,
  segmentFromGdt,
  configureLapic,
  vcpuCpuid,
  BOOT_LAYOUT,
  DEFAULT_MEM_SIZE,
  MAX_MEM_SIZE,
  E820_RAM,
  E820_RESERVED,
} from './boot';
export type {
  LinuxMachine,
  LinuxMachineConfig,
  BootInfo,
  E820Entry,
  PreparedKernel,
  PrepareKernelOptions,
  ZeroPageInput,
} from './boot';
export {
  handleEmulationFailure,
  decideEmulationFallback,
  insnBytesFromExit,
  readGuestVirtual,
  emulationFallbackStats,
  EmulationFailureError,
} from './emulation-fallback';
export type { EmulationDecision, EmulationFallbackStats } from './emulation-fallback';
export { hostVirtualization, stockKernelCmdline, BASE_CMDLINE, PVM_CMDLINE, HW_CMDLINE } from './host';
export type { HostVirtualization } from './host';
export { enterLongMode, LONG_MODE_TABLES } from './long-mode';
export { cpioNewc } from './cpio';
export type { CpioEntry } from './cpio';
export { bootLinux } from './linux';
export type { BootLinuxOptions, LinuxOutcome, LinuxVm } from './linux';
export { LINUX_EVENT_CHANNELS } from './linux-devices';
export type { LinuxDeviceStage, LinuxDevicesOptions, LinuxDevicesStats, LinuxResetCause } from './linux-devices';
export * from './sandbox/index';
export * from './gdb/index';
