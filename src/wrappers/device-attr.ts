/**
 * The `struct kvm_device_attr` argument of `KVM_SET_DEVICE_ATTR` / `KVM_HAS_DEVICE_ATTR`, shared
 * by the VM-fd and vCPU-fd methods (arm64) and usable by device fds.
 *
 * @module
 */
import { structBytes } from '../abi/codec';
import { kvm_device_attr } from '../abi/layouts';
import { checkObject, checkU32, checkU64 } from '../abi/validate';
import type { IoctlBackend } from '../backend/types';

/**
 * A device attribute. `addr` is the user pointer the kernel reads from or writes to: give the
 * buffer itself (a typed array, kept alive by the call) or a raw address (`0n` for none).
 */
export interface DeviceAttr {
  /** Reserved by most attributes; default 0. */
  flags?: number;
  group: number;
  attr: bigint | number;
  /** The value buffer (its address is passed), or a raw address; default 0n. */
  addr?: ArrayBufferView | bigint;
}

/**
 * @internal The kernel bytes of `attr`, and the buffer to keep referenced until the ioctl returns.
 */
export function deviceAttrBytes(backend: IoctlBackend, attr: DeviceAttr, name = 'attr'): { bytes: Uint8Array; keep: ArrayBufferView | undefined } {
  checkObject(name, attr);
  const group = checkU32(`${name}.group`, attr.group);
  const a = checkU64(`${name}.attr`, attr.attr);
  const flags = attr.flags === undefined ? 0 : checkU32(`${name}.flags`, attr.flags);
  let addr = 0n;
  let keep: ArrayBufferView | undefined;
  if (ArrayBuffer.isView(attr.addr)) {
    keep = attr.addr;
    addr = backend.addressOf(attr.addr);
  } else if (attr.addr !== undefined) {
    addr = checkU64(`${name}.addr`, attr.addr);
  }
  return { bytes: structBytes(kvm_device_attr, { flags, group, attr: a, addr }), keep };
}
