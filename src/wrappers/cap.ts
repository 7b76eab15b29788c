/**
 * `Cap`: the KVM capabilities of kvm-ioctls' `Cap` enum, valued like `KVM_CAP_*`.
 *
 * Query one with `kvm.checkExtension(Cap.UserMemory)`; a capability the enum lacks with
 * `kvm.checkExtensionRaw(number)`.
 *
 * @module
 */
import { kvm } from '../abi/kvm-constants';

/** KVM capabilities (kvm-ioctls `Cap`, all 128 variants). Values are the kernel's `KVM_CAP_*`. */
export const Cap = {
  Irqchip: kvm.KVM_CAP_IRQCHIP,
  Hlt: kvm.KVM_CAP_HLT,
  UserMemory: kvm.KVM_CAP_USER_MEMORY,
  SetTssAddr: kvm.KVM_CAP_SET_TSS_ADDR,
  NrVcpus: kvm.KVM_CAP_NR_VCPUS,
  NrMemslots: kvm.KVM_CAP_NR_MEMSLOTS,
  MaxVcpus: kvm.KVM_CAP_MAX_VCPUS,
  MaxVcpuId: kvm.KVM_CAP_MAX_VCPU_ID,
  ImmediateExit: kvm.KVM_CAP_IMMEDIATE_EXIT,
  // @section caps (the remaining variants)
} as const;

/** A capability number from {@link Cap}. */
export type Cap = (typeof Cap)[keyof typeof Cap];
