/**
 * Argument types of `VmFd`'s x86 platform, interrupt and device methods, and the kvm-ioctls
 * MSR-filter types (`MsrFilterDefaultAction`, `MsrFilterRangeFlags`, `MsrFilterRange`).
 *
 * @module
 */
import { structBytes } from '../abi/codec';
import { kvm } from '../abi/kvm-constants';
import { kvm_irq_routing_entry, type KvmIoapicState, type KvmIrqRoutingEntry, type KvmPicState } from '../abi/layouts';
import { checkObject, checkU32, invalidValue } from '../abi/validate';
import type { GuestMemfd } from './guest-memfd';
import type { UserMemoryRegion } from './vm-fd';

/** kvm-ioctls' `MsrFilterDefaultAction`: what happens to MSRs no range covers. */
export const MsrFilterDefaultAction = Object.freeze({
  /** `KVM_MSR_FILTER_DEFAULT_ALLOW` (0). */
  ALLOW: kvm.KVM_MSR_FILTER_DEFAULT_ALLOW,
  /** `KVM_MSR_FILTER_DEFAULT_DENY` (1). */
  DENY: kvm.KVM_MSR_FILTER_DEFAULT_DENY,
} as const);
/** A value of {@link MsrFilterDefaultAction}. */
export type MsrFilterDefaultAction = (typeof MsrFilterDefaultAction)[keyof typeof MsrFilterDefaultAction];

/** kvm-ioctls' `MsrFilterRangeFlags` (bit flags): the accesses a range filters. */
export const MsrFilterRangeFlags = Object.freeze({
  /** `KVM_MSR_FILTER_READ` (1). */
  READ: kvm.KVM_MSR_FILTER_READ,
  /** `KVM_MSR_FILTER_WRITE` (2). */
  WRITE: kvm.KVM_MSR_FILTER_WRITE,
} as const);

/**
 * kvm-ioctls' `MsrFilterRange`: MSRs `[base, base + msrCount)`; bit n of `bitmap` set = MSR
 * `base + n` is allowed for the accesses in `flags`, clear = denied.
 */
export interface MsrFilterRange {
  /** `MsrFilterRangeFlags.READ | MsrFilterRangeFlags.WRITE`. */
  flags: number;
  base: number;
  msrCount: number;
  /** At least `ceil(msrCount / 8)` bytes. */
  bitmap: Uint8Array;
}

/** Argument of `VmFd#setIrqchip`: a `kvm_irqchip` whose `chip` holds the member for `chipId`. */
export interface IrqchipInput {
  chipId: number;
  chip: {
    pic?: Partial<KvmPicState>;
    ioapic?: Partial<Omit<KvmIoapicState, 'redirtbl'>> & {
      redirtbl?: Array<{ bits?: bigint; fields?: { vector?: number; destId?: number } }>;
    };
    dummy?: Uint8Array;
  };
}

/** One `kvm_irq_routing_entry` for `VmFd#setGsiRouting`: set the `u` member matching `type`. */
export interface IrqRoutingEntry {
  gsi: number;
  /** `KVM_IRQ_ROUTING_IRQCHIP` (1), `KVM_IRQ_ROUTING_MSI` (2), … */
  type: number;
  /** `KVM_MSI_VALID_DEVID` for MSI entries (default 0). */
  flags?: number;
  u?: { [K in keyof KvmIrqRoutingEntry['u']]?: Partial<KvmIrqRoutingEntry['u'][K]> };
}

const ROUTING_MEMBER: Record<number, keyof KvmIrqRoutingEntry['u']> = {
  [kvm.KVM_IRQ_ROUTING_IRQCHIP]: 'irqchip',
  [kvm.KVM_IRQ_ROUTING_MSI]: 'msi',
  [kvm.KVM_IRQ_ROUTING_S390_ADAPTER]: 'adapter',
  [kvm.KVM_IRQ_ROUTING_HV_SINT]: 'hvSint',
  [kvm.KVM_IRQ_ROUTING_XEN_EVTCHN]: 'xenEvtchn',
};

/** @internal Encodes one routing entry, only the union member its `type` selects. */
export function routingEntryBytes(entry: IrqRoutingEntry, name: string): Uint8Array {
  checkObject(name, entry);
  const type = checkU32(`${name}.type`, entry.type);
  let u: Record<string, unknown> | undefined;
  if (entry.u !== undefined) {
    const given = checkObject<Record<string, unknown>>(`${name}.u`, entry.u);
    const member = ROUTING_MEMBER[type];
    if (member !== undefined && given[member] !== undefined) {
      u = { [member]: given[member] };
    } else {
      const keys = Object.keys(given).filter((k) => given[k] !== undefined);
      if (keys.length > 1) invalidValue(`${name}.u`, `must hold one member for type ${type}`);
      u = given;
    }
  }
  return structBytes(kvm_irq_routing_entry, { gsi: entry.gsi, type, flags: entry.flags ?? 0, u }, name);
}

/** Argument of `VmFd#createDevice` (`kvm_create_device`); `fd` is written back by the kernel. */
export interface CreateDeviceInput {
  /** `KVM_DEV_TYPE_*`. */
  type: number;
  /** `KVM_CREATE_DEVICE_TEST` to only probe support (default 0). */
  flags?: number;
  /** Out: the new device's fd (left unchanged with `KVM_CREATE_DEVICE_TEST`). */
  fd?: number;
}

/** Argument of `VmFd#setUserMemoryRegion2`: {@link UserMemoryRegion} plus the guest_memfd fields. */
export interface UserMemoryRegion2 extends UserMemoryRegion {
  /** The guest_memfd backing private memory (with `KVM_MEM_GUEST_MEMFD` in `flags`). */
  guestMemfd?: GuestMemfd;
  /** Offset into the guest_memfd (page aligned; default 0). */
  guestMemfdOffset?: bigint | number;
}
