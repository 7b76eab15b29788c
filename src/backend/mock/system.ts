/**
 * Mock ioctls on the system fd (`/dev/kvm`).
 *
 * @module
 */
import { ioctls, kvm } from '../../abi/kvm-constants';
import { cpuidMsrSystemIoctls } from './cpuid-msr';
import { argInt, fail, type MockContext, type MockFile, type MockIoctl, type MockVm } from './state';

type SystemFile = Extract<MockFile, { kind: 'system' }>;

/** KVM_CHECK_EXTENSION, shared by the system and VM fds. */
export function checkExtension(ctx: MockContext, cap: bigint): number {
  const c = ctx.config;
  switch (Number(cap)) {
    case kvm.KVM_CAP_NR_VCPUS:
      return c.nrVcpus;
    case kvm.KVM_CAP_MAX_VCPUS:
      return c.maxVcpus;
    case kvm.KVM_CAP_MAX_VCPU_ID:
      return c.maxVcpuId;
    case kvm.KVM_CAP_NR_MEMSLOTS:
      return c.nrMemslots;
    default:
      return cap > 0xffff_ffffn ? 0 : (c.caps[Number(cap)] ?? 0);
  }
}

export const systemIoctls: Record<number, MockIoctl<SystemFile>> = {
  [ioctls.KVM_GET_API_VERSION]: (ctx) => ctx.config.apiVersion,
  [ioctls.KVM_CHECK_EXTENSION]: (ctx, _f, arg) => checkExtension(ctx, argInt(arg)),
  [ioctls.KVM_GET_VCPU_MMAP_SIZE]: (ctx) => ctx.config.vcpuMmapSize,
  [ioctls.KVM_CREATE_VM]: (ctx, _f, arg) => {
    const type = argInt(arg);
    if (type !== 0n) fail('EINVAL', 'KVM_CREATE_VM');
    const vm: MockVm = { fd: -1, type, slots: new Map(), vcpus: new Map(), extra: new Map() };
    vm.extra.set('createdAt', process.hrtime.bigint()); // kvmclock counts from VM creation
    vm.fd = ctx.install({ kind: 'vm', vm });
    return vm.fd;
  },
  // @section x86 cpuid/msr
  ...cpuidMsrSystemIoctls,
};
