/**
 * `DeviceFd`: a device created with `VmFd#createDevice` (`KVM_CREATE_DEVICE`).
 *
 * @module
 */
import { ioctls } from '../abi/kvm-constants';
import { checkInt } from '../abi/validate';
import type { IoctlBackend } from '../backend/types';
import { backendOf, type BackendOptions } from './backend-options';
import { deviceAttrBytes, type DeviceAttr } from './device-attr';
import { FdOwner } from './fd';

export type { DeviceAttr } from './device-attr';

/**
 * A KVM device (kvm-ioctls' `DeviceFd`). One from `VmFd#createDevice` is closed by its VM; one
 * from {@link DeviceFd.fromRawFd} belongs to the caller, who closes it.
 *
 * @example
 * ```ts
 * import { openSync } from 'node:fs';
 * import { constants } from 'kvm-rx';
 * const groupFd = openSync('/dev/vfio/12', 'r+'); // the VFIO group of the device to assign
 * const dev = vm.createDevice({ type: constants.KVM_DEV_TYPE_VFIO, flags: 0 })!;
 * const add = { group: constants.KVM_DEV_VFIO_GROUP, attr: constants.KVM_DEV_VFIO_GROUP_ADD };
 * dev.hasDeviceAttr(add);
 * dev.setDeviceAttr({ ...add, value: new Int32Array([groupFd]) });
 * ```
 */

export class DeviceFd extends FdOwner {
  protected readonly label = 'DeviceFd';
  /** The `KVM_DEV_TYPE_*` it was created with (-1 when wrapped from a raw fd). */
  readonly type: number;

  /** @internal Use `VmFd#createDevice()` or {@link DeviceFd.fromRawFd}. */
  constructor(backend: IoctlBackend, fd: number, type = -1) {
    super(backend, fd);
    this.type = type;
  }

  /**
   * Takes ownership of a raw device fd (kvm-ioctls' `FromRawFd` for `DeviceFd`), as
   * `Kvm.fromRawFd` does for the system fd: `close()` closes it, and no VM does (the kernel
   * keeps the VM alive while a device fd is open). `type` is -1, as the fd does not tell it. The fd
   * is not checked until the first ioctl (EBADF then, as in kvm-ioctls).
   * @example
   * ```ts
   * const dev = vm.createDevice({ type: constants.KVM_DEV_TYPE_VFIO })!;
   * using copy = DeviceFd.fromRawFd(backend.dup(dev.asRawFd()), { backend });
   * copy.hasDeviceAttr({ group: constants.KVM_DEV_VFIO_GROUP, attr: constants.KVM_DEV_VFIO_GROUP_ADD });
   * ```
   * @throws `RangeError` ERR_OUT_OF_RANGE for an fd outside 0..2^31-1; `TypeError` for a non-number
   *   fd or a bad `options.backend`
   */
  static fromRawFd(fd: number, options?: BackendOptions): DeviceFd {
    checkInt('fd', fd, 0, 0x7fff_ffff);
    return new DeviceFd(backendOf(options), fd);
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
   * @example
   * ```ts
   * // @ts-setup: declare const groupFd: number; // an open /dev/vfio/<group> fd
   * import { constants } from 'kvm-rx';
   * dev.setDeviceAttr({
   *   group: constants.KVM_DEV_VFIO_GROUP,
   *   attr: constants.KVM_DEV_VFIO_GROUP_ADD,
   *   value: new Int32Array([groupFd]),
   * });
   * ```
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
