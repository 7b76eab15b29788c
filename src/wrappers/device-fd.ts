/**
 * `DeviceFd`: a device created with `VmFd#createDevice` (`KVM_CREATE_DEVICE`).
 *
 * @module
 */
import { ioctls } from '../abi/kvm-constants';
import type { IoctlBackend } from '../backend/types';
import { deviceAttrBytes, type DeviceAttr } from './device-attr';
import { FdOwner } from './fd';

/**
 * A KVM device (kvm-ioctls' `DeviceFd`). Closed by its VM.
 *
 * @example
 * ```ts
 * const dev = vm.createDevice({ type: constants.KVM_DEV_TYPE_VFIO, flags: 0 })!;
 * dev.hasDeviceAttr({ group: constants.KVM_DEV_VFIO_GROUP, attr: constants.KVM_DEV_VFIO_GROUP_ADD });
 * dev.setDeviceAttr({ group: 1, attr: 1, value: new Int32Array([groupFd]) });
 * ```
 */
export type { DeviceAttr } from './device-attr';

export class DeviceFd extends FdOwner {
  protected readonly label = 'DeviceFd';
  /** The `KVM_DEV_TYPE_*` it was created with (-1 when wrapped from a raw fd). */
  readonly type: number;

  /** @internal Use `VmFd#createDevice()`. */
  constructor(backend: IoctlBackend, fd: number, type = -1) {
    super(backend, fd);
    this.type = type;
  }

  /**
   * `KVM_HAS_DEVICE_ATTR`: succeeds if the device supports the attribute (`value` is ignored).
   * @example `dev.hasDeviceAttr({ group: 1, attr: 1 });`
   * @throws {@link KvmError} ENXIO (not supported); `TypeError`/`RangeError` for bad fields
   */
  hasDeviceAttr(attr: DeviceAttr): void {
    this.checkOpen();
    this.ioctl(ioctls.KVM_HAS_DEVICE_ATTR, deviceAttrBytes(this.backend, attr).bytes);
  }

  /**
   * `KVM_SET_DEVICE_ATTR`: the kernel reads the attribute from `attr.value`.
   * @example `dev.setDeviceAttr({ group: 1, attr: 1, value: new Int32Array([groupFd]) });`
   * @throws {@link KvmError} ENXIO (unknown attribute), EFAULT (no `value`), EINVAL, EBADF, …
   */
  setDeviceAttr(attr: DeviceAttr): void {
    this.checkOpen();
    const { bytes } = deviceAttrBytes(this.backend, attr);
    this.ioctl(ioctls.KVM_SET_DEVICE_ATTR, bytes);
  }

  /**
   * `KVM_GET_DEVICE_ATTR`: the kernel writes the attribute into `attr.value`, which is returned.
   * @example `const nr = dev.getDeviceAttr({ group: 3, attr: 0, value: new Uint32Array(1) })[0];`
   * @throws {@link KvmError} ENXIO (unknown attribute), EFAULT (no `value`), EPERM, …
   */
  getDeviceAttr<T extends ArrayBufferView | undefined>(attr: DeviceAttr & { value?: T }): T {
    this.checkOpen();
    const { bytes } = deviceAttrBytes(this.backend, attr);
    this.ioctl(ioctls.KVM_GET_DEVICE_ATTR, bytes);
    return attr.value as T;
  }
}
