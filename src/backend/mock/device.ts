/**
 * Mock ioctls on device fds (`KVM_CREATE_DEVICE`).
 *
 * @module
 */
import type { MockFile, MockIoctl } from './state';

type DeviceFile = Extract<MockFile, { kind: 'device' }>;

export const deviceIoctls: Record<number, MockIoctl<DeviceFile>> = {
  // @section device attributes
};
