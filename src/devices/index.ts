/**
 * Device models for the legacy PC ports, each a pipeline stage over a vCPU's exits.
 *
 * @module
 */
export { deviceStage, whileSubscribed, byteRegisters, performIo, composeStages, inRanges } from './port-device';
export type { PortDevice, DeviceStage } from './port-device';
export { Uart16550, uart16550, UART_REG, UART_FIFO_SIZE } from './uart16550';
export type { Uart16550Options } from './uart16550';
export { I8042, i8042, I8042_DATA_PORT, I8042_COMMAND_PORT, I8042_CMD_RESET } from './i8042';
export type { I8042Options } from './i8042';
export { Cmos, cmos, CMOS_INDEX_PORT, CMOS_DATA_PORT, CMOS_REG } from './cmos';
export type { CmosOptions } from './cmos';
export { PciAbsent, pciAbsent, PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA } from './pci-absent';
export { DebugPorts, debugPorts, DEBUGCON_READBACK } from './debug-ports';
export type { DebugPortsOptions } from './debug-ports';
export { legacyPc } from './legacy-pc';
export type { LegacyPcOptions, LegacyPcDevices } from './legacy-pc';
