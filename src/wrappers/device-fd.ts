/**
 * `DeviceFd`: a device created with `VmFd#createDevice` (`KVM_CREATE_DEVICE`).
 *
 * @module
 */
import { structBytes } from '../abi/codec';
import { ioctls } from '../abi/kvm-constants';
import { kvm_device_attr } from '../abi/layouts';
import { checkObject, checkU32, checkU64, invalidType } from '../abi/validate';
import type { IoctlBackend } from '../backend/types';
import { FdOwner } from './fd';

/**
 * A `kvm_device_attr` whose `addr` pointer is replaced by the memory it points at: `value` is
 * the typed array the kernel reads (`KVM_SET_DEVICE_ATTR`) or fills (`KVM_GET_DEVICE_ATTR`).
 * Without `value`, `addr` is 0.
 */
export interface DeviceAttr {
  /** `kvm_device_attr.flags` (default 0). */
  flags?: number;
  /** The attribute group (e.g. `KVM_DEV_VFIO_FILE`). */
  group: number;
  /** The attribute within the group. */
  attr: bigint | number;
  /** The attribute's value in user memory (an `Int32Array` holding an fd, a `BigUint64Array`, …). */
  value?: ArrayBufferView;
}

/** @internal Encodes a {@link DeviceAttr}; the caller keeps `value` alive across the ioctl. */
export function deviceAttrBytes(backend: IoctlBackend, attr: DeviceAttr, name = 'attr'): Uint8Array {
  checkObject(name, attr);
  const flags = attr.flags === undefined ? 0 : checkU32(`${name}.flags`, attr.flags);
  const group = checkU32(`${name}.group`, attr.group);
  const a = checkU64(`${name}.attr`, attr.attr);
  let addr = 0n;
  if (attr.value !== undefined) {
    if (!ArrayBuffer.isView(attr.value)) invalidType(`${name}.value`, 'a TypedArray or DataView', attr.value);
    addr = backend.addressOf(attr.value);
  }
  return structBytes(kvm_device_attr, { flags, group, attr: a, addr });
}

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
    this.ioctl(ioctls.KVM_HAS_DEVICE_ATTR, deviceAttrBytes(this.backend, attr));
  }

  /**
   * `KVM_SET_DEVICE_ATTR`: the kernel reads the attribute from `attr.value`.
   * @example `dev.setDeviceAttr({ group: 1, attr: 1, value: new Int32Array([groupFd]) });`
   * @throws {@link KvmError} ENXIO (unknown attribute), EFAULT (no `value`), EINVAL, EBADF, …
   */
  setDeviceAttr(attr: DeviceAttr): void {
    this.checkOpen();
    const bytes = deviceAttrBytes(this.backend, attr);
    this.ioctl(ioctls.KVM_SET_DEVICE_ATTR, bytes);
  }

  /**
   * `KVM_GET_DEVICE_ATTR`: the kernel writes the attribute into `attr.value`, which is returned.
   * @example `const nr = dev.getDeviceAttr({ group: 3, attr: 0, value: new Uint32Array(1) })[0];`
   * @throws {@link KvmError} ENXIO (unknown attribute), EFAULT (no `value`), EPERM, …
   */
  getDeviceAttr<T extends ArrayBufferView | undefined>(attr: DeviceAttr & { value?: T }): T {
    this.checkOpen();
    const bytes = deviceAttrBytes(this.backend, attr);
    this.ioctl(ioctls.KVM_GET_DEVICE_ATTR, bytes);
    return attr.value as T;
  }
}
