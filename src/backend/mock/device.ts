/**
 * Mock ioctls on device fds (`KVM_CREATE_DEVICE`).
 *
 * @module
 */
import { decodeStruct, dv } from '../../abi/codec';
import { ioctls, kvm } from '../../abi/kvm-constants';
import { kvm_device_attr, type KvmDeviceAttr } from '../../abi/layouts';
import type { IoctlArg } from '../types';
import { fail, type MockContext, type MockFile, type MockIoctl } from './state';

type DeviceFile = Extract<MockFile, { kind: 'device' }>;

export const deviceIoctls: Record<number, MockIoctl<DeviceFile>> = {
  // @section device attributes
  [ioctls.KVM_HAS_DEVICE_ATTR]: (ctx, f, arg) => {
    const a = deviceAttr(ctx, arg, 'KVM_HAS_DEVICE_ATTR');
    if (!vfioAttr(f, a)) fail('ENXIO', 'KVM_HAS_DEVICE_ATTR');
    return 0;
  },
  [ioctls.KVM_SET_DEVICE_ATTR]: (ctx, f, arg) => {
    const R = 'KVM_SET_DEVICE_ATTR';
    const a = deviceAttr(ctx, arg, R);
    if (!vfioAttr(f, a)) fail('ENXIO', R);
    const fd = dv(ctx.userMemory(a.addr, 4, R)).getInt32(0, true);
    if (ctx.file(fd) === undefined) fail('EBADF', R);
    // The mock has no VFIO files: adding anything else is EINVAL, deleting finds nothing.
    if (a.attr === BigInt(kvm.KVM_DEV_VFIO_GROUP_ADD)) fail('EINVAL', R, 'not a VFIO file');
    return fail('ENOENT', R, 'file not attached');
  },
  // The VFIO device has no get_attr: the kernel answers EPERM.
  [ioctls.KVM_GET_DEVICE_ATTR]: (ctx, _f, arg) => {
    deviceAttr(ctx, arg, 'KVM_GET_DEVICE_ATTR');
    return fail('EPERM', 'KVM_GET_DEVICE_ATTR');
  },
};

function deviceAttr(ctx: MockContext, arg: IoctlArg, request: string): KvmDeviceAttr {
  return decodeStruct<KvmDeviceAttr>(kvm_device_attr, dv(ctx.bytes(arg, request, kvm_device_attr.size)));
}

/** KVM_DEV_VFIO_FILE (= GROUP) with ADD or DEL: the only attributes of the x86 VFIO device. */
function vfioAttr(f: DeviceFile, a: KvmDeviceAttr): boolean {
  return (
    f.type === kvm.KVM_DEV_TYPE_VFIO &&
    a.group === kvm.KVM_DEV_VFIO_GROUP &&
    (a.attr === BigInt(kvm.KVM_DEV_VFIO_GROUP_ADD) || a.attr === BigInt(kvm.KVM_DEV_VFIO_GROUP_DEL))
  );
}
