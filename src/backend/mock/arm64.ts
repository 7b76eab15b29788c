/**
 * The mock's arm64 (aarch64) model, active only with `new MockBackend({ arch: 'aarch64' })`.
 * Experimental like kvm-ioctls' arm64 support: it follows arch/arm64/kvm (arm.c, guest.c,
 * reset.c) of Linux 6.x as read from source, not measured (no arm64 host here):
 *
 * - `KVM_CREATE_VM(type)`: `type & 0xff` is the IPA size; 0 means the default 40 bits; below 32
 *   or above `KVM_CAP_ARM_VM_IPA_SIZE` (or any other bit set) → EINVAL.
 * - `KVM_ARM_PREFERRED_TARGET` → `{ target: KVM_ARM_TARGET_GENERIC_V8, features: 0 }`.
 * - `KVM_ARM_VCPU_INIT`: EINVAL for another target or an unsupported feature bit, or a second
 *   init with different features.
 * - `KVM_ARM_VCPU_FINALIZE(what)`: ENOEXEC before init; EINVAL unless what = SVE and SVE is on;
 *   EPERM the second time.
 * - `KVM_GET_REG_LIST` / `KVM_{GET,SET}_ONE_REG`: ENOEXEC before init, EPERM while SVE is not
 *   finalized; the reg list writes `n` back and fails E2BIG when the room is smaller; an id of
 *   another arch or a size the register does not have → EINVAL; an unknown id → ENOENT.
 * - `KVM_{SET,HAS}_DEVICE_ATTR` on the VM (SMCCC filter) and the vCPU (PMU, timer, PV time):
 *   ENXIO for an unknown group/attribute, EFAULT for a bad `addr`.
 *
 * @module
 */
import {
  ARM64_CORE_OFFSETS,
  arm64CoreRegId,
  arm64Ioctls,
  arm64SysReg,
  KVM_ARM_TARGET_GENERIC_V8,
  KVM_ARM_VCPU_PMU_V3,
  KVM_ARM_VCPU_PMU_V3_CTRL,
  KVM_ARM_VCPU_PSCI_0_2,
  KVM_ARM_VCPU_PVTIME_CTRL,
  KVM_ARM_VCPU_PVTIME_IPA,
  KVM_ARM_VCPU_SVE,
  KVM_ARM_VCPU_TIMER_CTRL,
  KVM_ARM_VM_SMCCC_CTRL,
  KVM_ARM_VM_SMCCC_FILTER,
  KVM_REG_ARCH_MASK,
  KVM_REG_ARM64,
  KVM_REG_ARM_PSCI_VERSION,
  KVM_REG_SIZE_MASK,
  KVM_REG_SIZE_U128,
  KVM_REG_SIZE_U32,
  kvm_vcpu_init,
  regSize,
  type KvmVcpuInit,
} from '../../abi/arm64';
import { decodeStruct, dv, structBytes } from '../../abi/codec';
import { ioctls, kvm } from '../../abi/kvm-constants';
import { kvm_device_attr, kvm_one_reg, kvm_reg_list, type KvmDeviceAttr, type KvmOneReg } from '../../abi/layouts';
import { argInt, fail, type MockContext, type MockFile, type MockIoctl, type MockVcpu, type MockVm } from './state';

type SystemFile = Extract<MockFile, { kind: 'system' }>;
type VmFile = Extract<MockFile, { kind: 'vm' }>;
type VcpuFile = Extract<MockFile, { kind: 'vcpu' }>;

/**
 * KVM_CHECK_EXTENSION answers of the aarch64 mock: typical values of an arm64 host with GICv3,
 * SVE and pointer authentication (not measured).
 */
export const ARM64_CAPS: Record<number, number> = {
  [kvm.KVM_CAP_IRQCHIP]: 1,
  [kvm.KVM_CAP_USER_MEMORY]: 1,
  [kvm.KVM_CAP_NR_VCPUS]: 2,
  [kvm.KVM_CAP_NR_MEMSLOTS]: 32764,
  [kvm.KVM_CAP_MAX_VCPUS]: 512,
  [kvm.KVM_CAP_MAX_VCPU_ID]: 512,
  [kvm.KVM_CAP_ONE_REG]: 1,
  [kvm.KVM_CAP_ARM_PSCI]: 1,
  [kvm.KVM_CAP_ARM_PSCI_0_2]: 1,
  [kvm.KVM_CAP_ARM_SET_DEVICE_ADDR]: 1,
  [kvm.KVM_CAP_DEVICE_CTRL]: 1,
  [kvm.KVM_CAP_ARM_PMU_V3]: 1,
  [kvm.KVM_CAP_ARM_VM_IPA_SIZE]: 48,
  [kvm.KVM_CAP_GUEST_DEBUG_HW_BPS]: 6,
  [kvm.KVM_CAP_GUEST_DEBUG_HW_WPS]: 4,
  [kvm.KVM_CAP_ARM_SVE]: 1,
  [kvm.KVM_CAP_ARM_PTRAUTH_ADDRESS]: 1,
  [kvm.KVM_CAP_ARM_PTRAUTH_GENERIC]: 1,
  [kvm.KVM_CAP_SET_GUEST_DEBUG]: 1,
  [kvm.KVM_CAP_VCPU_EVENTS]: 1,
  [kvm.KVM_CAP_IMMEDIATE_EXIT]: 1,
  [kvm.KVM_CAP_READONLY_MEM]: 1,
  [kvm.KVM_CAP_IOEVENTFD]: 1,
  [kvm.KVM_CAP_IRQFD]: 1,
  [kvm.KVM_CAP_MP_STATE]: 1,
  [kvm.KVM_CAP_COALESCED_MMIO]: 1,
  [kvm.KVM_CAP_SYNC_MMU]: 1,
  [kvm.KVM_CAP_CHECK_EXTENSION_VM]: 1,
};

const DEFAULT_IPA = 40;

interface ArmVcpu {
  init?: KvmVcpuInit;
  sveFinalized: boolean;
  regs: Map<bigint, Uint8Array>;
  attrs: Map<string, bigint>;
}

function arm(vcpu: MockVcpu): ArmVcpu {
  let a = vcpu.extra.get('arm64') as ArmVcpu | undefined;
  if (!a) {
    a = { sveFinalized: false, regs: new Map(), attrs: new Map() };
    vcpu.extra.set('arm64', a);
  }
  return a;
}

function hasFeature(init: KvmVcpuInit | undefined, bit: number): boolean {
  return init !== undefined && ((init.features[bit >> 5] ?? 0) >>> (bit & 31)) & 1 ? true : false;
}

function u64(v: bigint, size = 8): Uint8Array {
  const b = new Uint8Array(size);
  dv(b).setBigUint64(0, v & 0xffff_ffff_ffff_ffffn, true);
  return b;
}

/** The registers of an initialised vCPU, in reset state (PSTATE EL1h with DAIF masked). */
function resetRegs(vcpu: MockVcpu, init: KvmVcpuInit): Map<bigint, Uint8Array> {
  const regs = new Map<bigint, Uint8Array>();
  for (let n = 0; n < 31; n++) regs.set(arm64CoreRegId(n * 8), u64(0n));
  regs.set(arm64CoreRegId(ARM64_CORE_OFFSETS.sp), u64(0n));
  regs.set(arm64CoreRegId(ARM64_CORE_OFFSETS.pc), u64(0n));
  regs.set(arm64CoreRegId(ARM64_CORE_OFFSETS.pstate), u64(0x3c5n));
  regs.set(arm64CoreRegId(ARM64_CORE_OFFSETS.spEl1), u64(0n));
  regs.set(arm64CoreRegId(ARM64_CORE_OFFSETS.elrEl1), u64(0n));
  for (let i = 0; i < 5; i++) regs.set(arm64CoreRegId(ARM64_CORE_OFFSETS.spsr + 8 * i), u64(0n));
  for (let i = 0; i < 32; i++)
    regs.set(arm64CoreRegId(ARM64_CORE_OFFSETS.vregs + 16 * i, KVM_REG_SIZE_U128), new Uint8Array(16));
  regs.set(arm64CoreRegId(ARM64_CORE_OFFSETS.fpsr, KVM_REG_SIZE_U32), new Uint8Array(4));
  regs.set(arm64CoreRegId(ARM64_CORE_OFFSETS.fpcr, KVM_REG_SIZE_U32), new Uint8Array(4));
  regs.set(arm64SysReg(3, 0, 0, 0, 5), u64(0x8000_0000n | BigInt(vcpu.id))); // MPIDR_EL1
  regs.set(arm64SysReg(3, 0, 1, 0, 0), u64(0x30d0_0800n)); // SCTLR_EL1 reset value
  regs.set(KVM_REG_ARM_PSCI_VERSION, u64(hasFeature(init, KVM_ARM_VCPU_PSCI_0_2) ? 0x10001n : 0n));
  return regs;
}

/** Common gate of the register ioctls: initialised, and SVE finalized when enabled. */
function ready(vcpu: MockVcpu, request: string): ArmVcpu {
  const a = arm(vcpu);
  if (!a.init) fail('ENOEXEC', request, 'vCPU not initialised (KVM_ARM_VCPU_INIT)');
  if (hasFeature(a.init, KVM_ARM_VCPU_SVE) && !a.sveFinalized) fail('EPERM', request, 'SVE not finalized');
  return a;
}

function findReg(a: ArmVcpu, id: bigint, request: string): Uint8Array {
  if ((id & KVM_REG_ARCH_MASK) !== KVM_REG_ARM64) fail('EINVAL', request, 'not an arm64 register id');
  const r = a.regs.get(id);
  if (r) return r;
  const base = id & ~KVM_REG_SIZE_MASK;
  for (const k of a.regs.keys()) if ((k & ~KVM_REG_SIZE_MASK) === base) fail('EINVAL', request, 'wrong register size');
  return fail('ENOENT', request);
}

function attrOf(ctx: MockContext, arg: unknown, request: string): KvmDeviceAttr {
  return decodeStruct<KvmDeviceAttr>(kvm_device_attr, dv(ctx.bytes(arg as never, request, kvm_device_attr.size)));
}

function supportedFeatures(ctx: MockContext): number {
  const c = ctx.config.caps;
  let mask = (1 << 0) | (1 << KVM_ARM_VCPU_PSCI_0_2);
  if (c[kvm.KVM_CAP_ARM_PMU_V3]) mask |= 1 << KVM_ARM_VCPU_PMU_V3;
  if (c[kvm.KVM_CAP_ARM_EL1_32BIT]) mask |= 1 << 1;
  if (c[kvm.KVM_CAP_ARM_SVE]) mask |= 1 << KVM_ARM_VCPU_SVE;
  if (c[kvm.KVM_CAP_ARM_PTRAUTH_ADDRESS]) mask |= 1 << 5;
  if (c[kvm.KVM_CAP_ARM_PTRAUTH_GENERIC]) mask |= 1 << 6;
  return mask;
}

export const arm64SystemIoctls: Record<number, MockIoctl<SystemFile>> = {
  [ioctls.KVM_CREATE_VM]: (ctx, _f, arg) => {
    const type = argInt(arg);
    const limit = ctx.config.caps[kvm.KVM_CAP_ARM_VM_IPA_SIZE] ?? 0;
    if (type & ~BigInt(kvm.KVM_VM_TYPE_ARM_IPA_SIZE_MASK)) fail('EINVAL', 'KVM_CREATE_VM', 'unknown type bits');
    const ipa = Number(type) || DEFAULT_IPA;
    if (type !== 0n && (ipa < 32 || ipa > limit))
      fail('EINVAL', 'KVM_CREATE_VM', `IPA size ${ipa} outside 32..${limit}`);
    const vm: MockVm = { fd: -1, type, slots: new Map(), vcpus: new Map(), extra: new Map([['arm64.ipa', ipa]]) };
    vm.fd = ctx.install({ kind: 'vm', vm });
    return vm.fd;
  },
};

export const arm64VmIoctls: Record<number, MockIoctl<VmFile>> = {
  [arm64Ioctls.KVM_ARM_PREFERRED_TARGET]: (ctx, _f, arg) => {
    const out = ctx.bytes(arg, 'KVM_ARM_PREFERRED_TARGET', kvm_vcpu_init.size);
    out.set(structBytes(kvm_vcpu_init, { target: KVM_ARM_TARGET_GENERIC_V8 }));
    return 0;
  },
  [ioctls.KVM_HAS_DEVICE_ATTR]: (ctx, _f, arg) => {
    const a = attrOf(ctx, arg, 'KVM_HAS_DEVICE_ATTR');
    if (a.group !== KVM_ARM_VM_SMCCC_CTRL || a.attr !== BigInt(KVM_ARM_VM_SMCCC_FILTER))
      fail('ENXIO', 'KVM_HAS_DEVICE_ATTR');
    return 0;
  },
  [ioctls.KVM_SET_DEVICE_ATTR]: (ctx, { vm }, arg) => {
    const R = 'KVM_SET_DEVICE_ATTR';
    const a = attrOf(ctx, arg, R);
    if (a.group !== KVM_ARM_VM_SMCCC_CTRL || a.attr !== BigInt(KVM_ARM_VM_SMCCC_FILTER)) fail('ENXIO', R);
    // struct kvm_smccc_filter { __u32 base; __u32 nr_functions; __u8 action; __u8 pad[15]; }
    const f = dv(ctx.userMemory(a.addr, 24, R));
    const base = f.getUint32(0, true);
    const nr = f.getUint32(4, true);
    const action = f.getUint8(8);
    for (let i = 9; i < 24; i++) if (f.getUint8(i) !== 0) fail('EINVAL', R, 'padding not zero');
    if (nr === 0 || action > 2 || base + nr > 0x1_0000_0000) fail('EINVAL', R);
    const ranges = (vm.extra.get('arm64.smccc') as Array<[number, number]> | undefined) ?? [];
    if (ranges.some(([b, n]) => base < b + n && b < base + nr)) fail('EEXIST', R);
    ranges.push([base, nr]);
    vm.extra.set('arm64.smccc', ranges);
    return 0;
  },
};

function vcpuAttrKnown(init: KvmVcpuInit | undefined, a: KvmDeviceAttr): boolean {
  switch (a.group) {
    case KVM_ARM_VCPU_PMU_V3_CTRL:
      return hasFeature(init, KVM_ARM_VCPU_PMU_V3) && a.attr <= 3n;
    case KVM_ARM_VCPU_TIMER_CTRL:
      return a.attr <= 1n;
    case KVM_ARM_VCPU_PVTIME_CTRL:
      return a.attr === BigInt(KVM_ARM_VCPU_PVTIME_IPA);
    default:
      return false;
  }
}

export const arm64VcpuIoctls: Record<number, MockIoctl<VcpuFile>> = {
  [arm64Ioctls.KVM_ARM_VCPU_INIT]: (ctx, { vcpu }, arg) => {
    const R = 'KVM_ARM_VCPU_INIT';
    const init = decodeStruct<KvmVcpuInit>(kvm_vcpu_init, dv(ctx.bytes(arg, R, kvm_vcpu_init.size)));
    if (init.target !== KVM_ARM_TARGET_GENERIC_V8) fail('EINVAL', R, 'unknown target');
    if (init.features[0] & ~supportedFeatures(ctx) || init.features.slice(1).some((w) => w !== 0))
      fail('EINVAL', R, 'unsupported feature');
    const a = arm(vcpu);
    if (a.init && a.init.features.some((w, i) => w !== init.features[i]))
      fail('EINVAL', R, 'features differ from the first init');
    a.init = init;
    a.regs = resetRegs(vcpu, init);
    return 0;
  },
  [arm64Ioctls.KVM_ARM_VCPU_FINALIZE]: (ctx, { vcpu }, arg) => {
    const R = 'KVM_ARM_VCPU_FINALIZE';
    const a = arm(vcpu);
    if (!a.init) fail('ENOEXEC', R);
    const what = dv(ctx.bytes(arg, R, 4)).getInt32(0, true);
    if (what !== KVM_ARM_VCPU_SVE || !hasFeature(a.init, KVM_ARM_VCPU_SVE)) fail('EINVAL', R);
    if (a.sveFinalized) fail('EPERM', R);
    a.sveFinalized = true;
    return 0;
  },
  [ioctls.KVM_GET_REG_LIST]: (ctx, { vcpu }, arg) => {
    const R = 'KVM_GET_REG_LIST';
    const a = ready(vcpu, R);
    const bytes = ctx.bytes(arg, R, kvm_reg_list.size);
    const view = dv(bytes);
    const room = view.getBigUint64(0, true);
    const ids = [...a.regs.keys()];
    view.setBigUint64(0, BigInt(ids.length), true);
    if (room < BigInt(ids.length)) fail('E2BIG', R);
    if (bytes.length < kvm_reg_list.size + 8 * ids.length) fail('EFAULT', R);
    ids.forEach((id, i) => view.setBigUint64(kvm_reg_list.size + 8 * i, id, true));
    return 0;
  },
  [ioctls.KVM_GET_ONE_REG]: (ctx, { vcpu }, arg) => {
    const R = 'KVM_GET_ONE_REG';
    const a = ready(vcpu, R);
    const r = decodeStruct<KvmOneReg>(kvm_one_reg, dv(ctx.bytes(arg, R, kvm_one_reg.size)));
    const value = findReg(a, r.id, R);
    ctx.userMemory(r.addr, regSize(r.id), R).set(value);
    return 0;
  },
  [ioctls.KVM_SET_ONE_REG]: (ctx, { vcpu }, arg) => {
    const R = 'KVM_SET_ONE_REG';
    const a = ready(vcpu, R);
    const r = decodeStruct<KvmOneReg>(kvm_one_reg, dv(ctx.bytes(arg, R, kvm_one_reg.size)));
    const value = findReg(a, r.id, R);
    value.set(ctx.userMemory(r.addr, regSize(r.id), R));
    return 0;
  },
  [ioctls.KVM_HAS_DEVICE_ATTR]: (ctx, { vcpu }, arg) => {
    const a = attrOf(ctx, arg, 'KVM_HAS_DEVICE_ATTR');
    if (!vcpuAttrKnown(arm(vcpu).init, a)) fail('ENXIO', 'KVM_HAS_DEVICE_ATTR');
    return 0;
  },
  [ioctls.KVM_SET_DEVICE_ATTR]: (ctx, { vcpu }, arg) => {
    const R = 'KVM_SET_DEVICE_ATTR';
    const a = attrOf(ctx, arg, R);
    const st = arm(vcpu);
    if (!vcpuAttrKnown(st.init, a)) fail('ENXIO', R);
    const k = `${a.group}/${a.attr}`;
    if (a.group === KVM_ARM_VCPU_PVTIME_CTRL) {
      const ipa = dv(ctx.userMemory(a.addr, 8, R)).getBigUint64(0, true);
      if (ipa % 64n !== 0n) fail('EINVAL', R, 'PV time IPA not 64-byte aligned');
      if (st.attrs.has(k)) fail('EEXIST', R);
      st.attrs.set(k, ipa);
    } else if (a.group === KVM_ARM_VCPU_TIMER_CTRL) {
      const irq = dv(ctx.userMemory(a.addr, 4, R)).getInt32(0, true);
      if (irq < 16 || irq > 31) fail('EINVAL', R, 'timer IRQ must be a PPI (16..31)');
      st.attrs.set(k, BigInt(irq));
    } else {
      st.attrs.set(k, a.addr === 0n ? 0n : BigInt(dv(ctx.userMemory(a.addr, 4, R)).getInt32(0, true)));
    }
    return 0;
  },
};

/** The arm64 handler tables by file kind (looked up before the generic ones when arch is aarch64). */
export const ARM64_TABLES: Partial<Record<MockFile['kind'], Record<number, MockIoctl<never>>>> = {
  system: arm64SystemIoctls,
  vm: arm64VmIoctls,
  vcpu: arm64VcpuIoctls,
};
