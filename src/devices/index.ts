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

// virtio over MMIO: the transport, split virtqueues, devices.
export {
  VirtioMmioReg,
  VirtioStatus,
  VirtioFeature,
  VirtioInterrupt,
  VIRTIO_MMIO_MAGIC,
  VIRTIO_MMIO_WINDOW,
  VIRTIO_MMIO_MAX_QUEUES,
  VIRTIO_MMIO_MAX_CONFIG,
  VirtioMmioRegisters,
  VirtioMmioDeviceState,
  createVirtioMmioState,
} from './virtio/mmio-transport';
export type { VirtioMmioLayout, VirtioMmioShared, VirtioQueueRegisters } from './virtio/mmio-transport';
export { VirtioMmioDevice } from './virtio/mmio-device';
export type { VirtioDevice, VirtioDeviceContext, VirtioQueue, VirtioMmioDeviceOptions } from './virtio/mmio-device';
export { virtioMmio } from './virtio/virtioMmio';
export {
  SplitQueue,
  DescriptorChain,
  splitQueueSizes,
  VIRTQ_DESC_F,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  VIRTQ_MAX_SIZE,
} from './virtio/split-queue';
export type { SplitQueueConfig, SplitQueueOptions, Descriptor } from './virtio/split-queue';
export { VirtqueueError } from './virtio/errors';
export type { VirtqueueErrorCode, VirtqueueRule } from './virtio/errors';
export { virtioRng } from './virtio/rng';
export type { VirtioRngOptions } from './virtio/rng';
export { virtioConsole } from './virtio/console';
export type { VirtioConsoleOptions } from './virtio/console';
export {
  virtioBlk,
  VirtioBlkFeature,
  VirtioBlkRequest,
  VirtioBlkStatus,
  VIRTIO_BLK_SECTOR,
  VIRTIO_BLK_ID_BYTES,
} from './virtio/blk';
export type { VirtioBlkOptions } from './virtio/blk';
export { virtioNet, VirtioNetFeature, VIRTIO_NET_HDR_SIZE, VIRTIO_NET_MAX_PACKET } from './virtio/net';
export type { VirtioNetBackend, VirtioNetOptions, VirtioNetStats } from './virtio/net';
export { virtioVsock, VsockOp, VsockShutdown, VSOCK_HOST_CID, VSOCK_HDR_SIZE } from './virtio/vsock';
export type { VirtioVsockOptions, VirtioVsockStats } from './virtio/vsock';
