/**
 * arm64 ABI pieces that the x86_64 headers this project is generated from do not have:
 * `struct kvm_vcpu_init`, the arm-only request numbers (computed with the `_IOC` encoder of
 * `ioc.ts`, itself checked against every generated x86 number), and the arm64 register-id
 * constants of `arch/arm64/include/uapi/asm/kvm.h`.
 *
 * Experimental, as in kvm-ioctls: no arm64 host checks these here; the mock (`arch: 'aarch64'`)
 * models the ioctls that use them. Values are copied from Linux 6.x uapi headers.
 *
 * @module
 */
import type { StructDef } from './codec';
import { kvm } from './kvm-constants';
import { kvm_one_reg, kvm_reg_list } from './layouts';
import { _IOR, _IOW, _IOWR, KVMIO } from './ioc';
import { checkU64 } from './validate';

/** Layout of `struct kvm_vcpu_init` (32 bytes): `__u32 target; __u32 features[7];`. */
export const kvm_vcpu_init: StructDef = {
  kind: 'struct',
  size: 32,
  fields: {
    target: { c: 'target', offset: 0, size: 4, type: 'u32' },
    features: { c: 'features', offset: 4, size: 28, type: 'u32', count: 7 },
  },
};

/** `struct kvm_vcpu_init`, with camelCase field names. */
export interface KvmVcpuInit {
  /** `KVM_ARM_TARGET_*`; take it from `VmFd#getPreferredTarget()`. */
  target: number;
  /** Feature bitmap: bit `KVM_ARM_VCPU_*` of word `bit >> 5`. */
  features: number[];
}

/** arm64 request numbers (`_IOC` of the arm64 uapi definitions). */
export const arm64Ioctls = {
  /** `_IOW(KVMIO, 0xae, struct kvm_vcpu_init)` */
  KVM_ARM_VCPU_INIT: _IOW(KVMIO, 0xae, kvm_vcpu_init.size),
  /** `_IOR(KVMIO, 0xaf, struct kvm_vcpu_init)` */
  KVM_ARM_PREFERRED_TARGET: _IOR(KVMIO, 0xaf, kvm_vcpu_init.size),
  /** `_IOW(KVMIO, 0xc2, int)` */
  KVM_ARM_VCPU_FINALIZE: _IOW(KVMIO, 0xc2, 4),
  /** `_IOWR(KVMIO, 0xb0, struct kvm_reg_list)` (generic; same on every arch) */
  KVM_GET_REG_LIST: _IOWR(KVMIO, 0xb0, kvm_reg_list.size),
  /** `_IOW(KVMIO, 0xab, struct kvm_one_reg)` (generic) */
  KVM_GET_ONE_REG: _IOW(KVMIO, 0xab, kvm_one_reg.size),
  /** `_IOW(KVMIO, 0xac, struct kvm_one_reg)` (generic) */
  KVM_SET_ONE_REG: _IOW(KVMIO, 0xac, kvm_one_reg.size),
} as const;

/** `KVM_ARM_TARGET_*` (arm64 `kvm.h`). */
export const KVM_ARM_TARGET_AEM_V8 = 0;
export const KVM_ARM_TARGET_FOUNDATION_V8 = 1;
export const KVM_ARM_TARGET_CORTEX_A57 = 2;
export const KVM_ARM_TARGET_XGENE_POTENZA = 3;
export const KVM_ARM_TARGET_CORTEX_A53 = 4;
export const KVM_ARM_TARGET_GENERIC_V8 = 5;

/** `KVM_ARM_VCPU_*` feature bits of `kvm_vcpu_init.features`. */
export const KVM_ARM_VCPU_POWER_OFF = 0;
export const KVM_ARM_VCPU_EL1_32BIT = 1;
export const KVM_ARM_VCPU_PSCI_0_2 = 2;
export const KVM_ARM_VCPU_PMU_V3 = 3;
export const KVM_ARM_VCPU_SVE = 4;
export const KVM_ARM_VCPU_PTRAUTH_ADDRESS = 5;
export const KVM_ARM_VCPU_PTRAUTH_GENERIC = 6;
export const KVM_ARM_VCPU_HAS_EL2 = 7;

/** vCPU device-attribute groups (`KVM_SET_DEVICE_ATTR` on a vCPU fd). */
export const KVM_ARM_VCPU_PMU_V3_CTRL = 0;
export const KVM_ARM_VCPU_PMU_V3_IRQ = 0;
export const KVM_ARM_VCPU_PMU_V3_INIT = 1;
export const KVM_ARM_VCPU_TIMER_CTRL = 1;
export const KVM_ARM_VCPU_TIMER_IRQ_VTIMER = 0;
export const KVM_ARM_VCPU_TIMER_IRQ_PTIMER = 1;
export const KVM_ARM_VCPU_PVTIME_CTRL = 2;
export const KVM_ARM_VCPU_PVTIME_IPA = 0;

/** VM device-attribute groups (`KVM_SET_DEVICE_ATTR` on a VM fd): the SMCCC filter. */
export const KVM_ARM_VM_SMCCC_CTRL = 0;
export const KVM_ARM_VM_SMCCC_FILTER = 0;

/** `KVM_VM_TYPE_ARM_IPA_SIZE_MASK`: the IPA size bits of `KVM_CREATE_VM`'s type. */
export const KVM_VM_TYPE_ARM_IPA_SIZE_MASK = kvm.KVM_VM_TYPE_ARM_IPA_SIZE_MASK;

/** The arch field of an arm64 register id (`KVM_REG_ARM64`). */
export const KVM_REG_ARM64 = kvm.KVM_REG_ARM64;
/** Register size fields (generic), as bigint for building ids. */
export const KVM_REG_SIZE_U32 = kvm.KVM_REG_SIZE_U32;
export const KVM_REG_SIZE_U64 = kvm.KVM_REG_SIZE_U64;
export const KVM_REG_SIZE_U128 = kvm.KVM_REG_SIZE_U128;
export const KVM_REG_SIZE_MASK = kvm.KVM_REG_SIZE_MASK;
export const KVM_REG_SIZE_SHIFT = BigInt(kvm.KVM_REG_SIZE_SHIFT);
export const KVM_REG_ARCH_MASK = kvm.KVM_REG_ARCH_MASK;

/** `KVM_REG_ARM_COPROC_*`: the register class field. */
export const KVM_REG_ARM_COPROC_MASK = 0x0fff_0000n;
export const KVM_REG_ARM_COPROC_SHIFT = 16n;
/** Core registers (`struct kvm_regs`), indexed by offset / 4. */
export const KVM_REG_ARM_CORE = 0x0010n << KVM_REG_ARM_COPROC_SHIFT;
export const KVM_REG_ARM_DEMUX = 0x0011n << KVM_REG_ARM_COPROC_SHIFT;
/** System registers (op0, op1, CRn, CRm, op2). */
export const KVM_REG_ARM64_SYSREG = 0x0013n << KVM_REG_ARM_COPROC_SHIFT;
/** Firmware pseudo-registers (PSCI version, …). */
export const KVM_REG_ARM_FW = 0x0014n << KVM_REG_ARM_COPROC_SHIFT;
export const KVM_REG_ARM64_SVE = 0x0015n << KVM_REG_ARM_COPROC_SHIFT;
export const KVM_REG_ARM_FW_FEAT_BMAP = 0x0016n << KVM_REG_ARM_COPROC_SHIFT;

export const KVM_REG_ARM64_SYSREG_OP0_SHIFT = 14n;
export const KVM_REG_ARM64_SYSREG_OP1_SHIFT = 11n;
export const KVM_REG_ARM64_SYSREG_CRN_SHIFT = 7n;
export const KVM_REG_ARM64_SYSREG_CRM_SHIFT = 3n;
export const KVM_REG_ARM64_SYSREG_OP2_SHIFT = 0n;

/**
 * Byte offsets in arm64 `struct kvm_regs` of the core registers (`regs.regs[0..30]`, `regs.sp`,
 * `regs.pc`, `regs.pstate`, `sp_el1`, `elr_el1`, `spsr[0..4]`, `fp_regs.vregs[0..31]`,
 * `fp_regs.fpsr`, `fp_regs.fpcr`).
 */
export const ARM64_CORE_OFFSETS = {
  sp: 248,
  pc: 256,
  pstate: 264,
  spEl1: 272,
  elrEl1: 280,
  spsr: 288,
  vregs: 336,
  fpsr: 848,
  fpcr: 852,
} as const;

/** `KVM_REG_ARM_CORE_REG`-style id: `KVM_REG_ARM64 | size | KVM_REG_ARM_CORE | offset / 4`. */
export function arm64CoreRegId(offset: number, size: bigint = KVM_REG_SIZE_U64): bigint {
  return KVM_REG_ARM64 | size | KVM_REG_ARM_CORE | BigInt(offset / 4);
}

/** The id of general-purpose register `Xn` (n = 0..30). @example `arm64XReg(0) === 0x6030000000100000n` */
export function arm64XReg(n: number): bigint {
  if (!Number.isInteger(n) || n < 0 || n > 30) throw new RangeError(`X register ${n} does not exist`);
  return arm64CoreRegId(n * 8);
}

/** Ids of the core registers every arm64 vCPU has: SP, PC and PSTATE. */
export const ARM64_REG_SP = arm64CoreRegId(ARM64_CORE_OFFSETS.sp);
export const ARM64_REG_PC = arm64CoreRegId(ARM64_CORE_OFFSETS.pc);
export const ARM64_REG_PSTATE = arm64CoreRegId(ARM64_CORE_OFFSETS.pstate);

/** `ARM64_SYS_REG(op0, op1, crn, crm, op2)`: a 64-bit system register id. @example `arm64SysReg(3, 0, 0, 0, 5)` (MPIDR_EL1) */
export function arm64SysReg(op0: number, op1: number, crn: number, crm: number, op2: number): bigint {
  return (
    KVM_REG_ARM64 |
    KVM_REG_SIZE_U64 |
    KVM_REG_ARM64_SYSREG |
    (BigInt(op0 & 3) << KVM_REG_ARM64_SYSREG_OP0_SHIFT) |
    (BigInt(op1 & 7) << KVM_REG_ARM64_SYSREG_OP1_SHIFT) |
    (BigInt(crn & 15) << KVM_REG_ARM64_SYSREG_CRN_SHIFT) |
    (BigInt(crm & 15) << KVM_REG_ARM64_SYSREG_CRM_SHIFT) |
    (BigInt(op2 & 7) << KVM_REG_ARM64_SYSREG_OP2_SHIFT)
  );
}

/** `KVM_REG_ARM_PSCI_VERSION`: the firmware register holding the PSCI version. */
export const KVM_REG_ARM_PSCI_VERSION = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW | 0n;

/**
 * The size in bytes of a register from its id (kvm-ioctls' `reg_size`):
 * `2 ** ((id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT)`.
 * @example `regSize(ARM64_REG_PC) === 8`
 * @throws `TypeError`/`RangeError` when `id` is not a u64
 */
export function regSize(id: bigint | number): number {
  const v = checkU64('id', id);
  return 2 ** Number((v & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT);
}
