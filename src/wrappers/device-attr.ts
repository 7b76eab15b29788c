/**
 * The `struct kvm_device_attr` argument of `KVM_SET_DEVICE_ATTR` / `KVM_HAS_DEVICE_ATTR`, shared
 * by the VM-fd and vCPU-fd methods (arm64) and usable by device fds.
 *
 * @module
 */
import { structBytes } from '../abi/codec';
import { kvm_device_attr } from '../abi/layouts';
import { checkObject, checkU32, checkU64, invalidType } from '../abi/validate';
import type { IoctlBackend } from '../backend/types';

/**
 * A `kvm_device_attr`. The kernel reads the attribute from, or writes it to, user memory: give
 * that memory as `value` (a typed array, kept alive by the call; `getDeviceAttr` returns it), or
 * as `addr` (the same, or a raw address; `0n` for none).
 */
export interface DeviceAttr {
  /** `kvm_device_attr.flags`; reserved by most attributes (default 0). */
  flags?: number;
  /** The attribute group (e.g. `KVM_DEV_VFIO_FILE`). */
  group: number;
  /** The attribute within the group. */
  attr: bigint | number;
  /** The attribute's value in user memory (an `Int32Array` holding an fd, a `BigUint64Array`, …). */
  value?: ArrayBufferView;
  /** The value buffer (its address is passed), or a raw address; default 0n. Ignored when `value` is given. */
  addr?: ArrayBufferView | bigint;
}

/**
 * @internal The kernel bytes of `attr`, and the buffer to keep referenced until the ioctl returns.
 */
export function deviceAttrBytes(
  backend: IoctlBackend,
  attr: DeviceAttr,
  name = 'attr',
): { bytes: Uint8Array; keep: ArrayBufferView | undefined } {
  checkObject(name, attr);
  const group = checkU32(`${name}.group`, attr.group);
  const a = checkU64(`${name}.attr`, attr.attr);
  const flags = attr.flags === undefined ? 0 : checkU32(`${name}.flags`, attr.flags);
  let addr = 0n;
  let keep: ArrayBufferView | undefined;
  if (attr.value !== undefined) {
    if (!ArrayBuffer.isView(attr.value)) invalidType(`${name}.value`, 'a TypedArray or DataView', attr.value);
    keep = attr.value;
    addr = backend.addressOf(attr.value);
  } else if (ArrayBuffer.isView(attr.addr)) {
    keep = attr.addr;
    addr = backend.addressOf(attr.addr);
  } else if (attr.addr !== undefined) {
    addr = checkU64(`${name}.addr`, attr.addr);
  }
  return { bytes: structBytes(kvm_device_attr, { flags, group, attr: a, addr }), keep };
}
