/**
 * Mock ioctls on vCPU fds: register state and the scripted KVM_RUN.
 *
 * @module
 */
import { decodeStruct, dv, encodeStruct, offsetOf, structBytes } from '../../abi/codec';
import { ioctls, kvm } from '../../abi/kvm-constants';
import {
  kvm_debugregs,
  kvm_enable_cap,
  kvm_fpu,
  kvm_guest_debug,
  kvm_lapic_state,
  kvm_mp_state,
  kvm_regs,
  kvm_run,
  kvm_sregs,
  kvm_sync_regs,
  kvm_translation,
  kvm_vcpu_events,
  kvm_xcrs,
  kvm_xsave,
  type KvmDebugregs,
  type KvmEnableCap,
  type KvmMpState,
  type KvmSregs,
  type KvmTranslation,
  type KvmVcpuEvents,
  type KvmXcrs,
  type StructDefName,
} from '../../abi/layouts';
import { argInt, fail, requestName, type MockContext, type MockFile, type MockIoctl, type MockVcpu } from './state';
import { coalesceWrite, guestWrite, guestWriteExit, hasIrqchip } from './vm';
import { signalIoevent } from './vm-irq';
import { cpuidMsrVcpuIoctls } from './cpuid-msr';

type VcpuFile = Extract<MockFile, { kind: 'vcpu' }>;

const IMMEDIATE_EXIT = offsetOf(kvm_run, 'immediate_exit');

/** A getter and a setter that copy a struct between the argument and `vcpu.state`. */
export function stateIoctls(
  name: StructDefName,
  size: number,
  get: number,
  set: number,
): Record<number, MockIoctl<VcpuFile>> {
  const getName = requestName(get);
  const setName = requestName(set);
  return {
    [get]: (ctx, { vcpu }, arg) => {
      const out = ctx.bytes(arg, getName, size);
      out.set(vcpu.state.get(name) ?? new Uint8Array(size));
      return 0;
    },
    [set]: (ctx, { vcpu }, arg) => {
      const input = ctx.bytes(arg, setName, size);
      vcpu.state.set(name, input.slice(0, size));
      return 0;
    },
  };
}

/** KVM_RUN: collect the previous exit's answer, then report the next scripted exit. */
function run(ctx: MockContext, vcpu: MockVcpu): number {
  const view = new DataView(vcpu.run);
  const bytes = new Uint8Array(vcpu.run);
  vcpu.runs++;
  const prev = vcpu.pending;
  vcpu.pending = undefined;
  if (prev) {
    if (prev.answer) vcpu.answers.push({ exit: prev.label, answer: prev.answer(view, bytes) });
    prev.complete?.(vcpu, view, bytes);
  }
  syncRegsIn(vcpu, view);
  try {
    if (view.getUint8(IMMEDIATE_EXIT) !== 0) fail('EINTR', 'KVM_RUN');
    for (;;) {
      const next = vcpu.script.shift();
      if (!next) fail('EINTR', 'KVM_RUN', 'the mock vCPU has no scripted exit left');
      for (const w of next.writes ?? []) guestWrite(ctx, vcpu.vm, w.gpa, w.data);
      if (next.error !== undefined) fail(next.error, 'KVM_RUN');
      next.write(view, bytes);
      // A write matching an ioeventfd signals it, and one to a registered coalesced zone lands in
      // the ring, instead of exiting.
      const w = guestWriteExit(view, bytes);
      if (w !== undefined && (signalIoevent(vcpu.vm, w) || coalesceWrite(ctx, vcpu.vm, w))) continue;
      vcpu.pending = next;
      return 0;
    }
  } finally {
    syncRegsOut(vcpu, view);
  }
}

export const vcpuIoctls: Record<number, MockIoctl<VcpuFile>> = {
  [ioctls.KVM_RUN]: (ctx, { vcpu }) => run(ctx, vcpu),
  ...stateIoctls('kvm_regs', kvm_regs.size, ioctls.KVM_GET_REGS, ioctls.KVM_SET_REGS),
  ...stateIoctls('kvm_sregs', kvm_sregs.size, ioctls.KVM_GET_SREGS, ioctls.KVM_SET_SREGS),
  // @section cpuid/msr
  ...cpuidMsrVcpuIoctls,
  // @section x86 state
  ...x86StateIoctls(),
  // @section sync regs and coalesced ring
};

// @section x86 state (mock)

/** Lazily created reset state of the x86 register sets the kernel reports on this host. */
function x86State(vcpu: MockVcpu, name: StructDefName): Uint8Array {
  let b = vcpu.state.get(name);
  if (b !== undefined) return b;
  switch (name) {
    case 'kvm_fpu':
      b = structBytes(kvm_fpu, { fcw: 0x37f, mxcsr: 0x1f80 });
      break;
    case 'kvm_xsave': {
      b = new Uint8Array(
        Math.max(kvm_xsave.size, (vcpu.vm.extra.get('xsave2Size') as number | undefined) ?? kvm_xsave.size),
      );
      const w = new Uint32Array(b.buffer);
      w[0] = 0x37f;
      w[6] = 0x1f80;
      w[7] = 0x2ffff;
      w[116] = 0xe7;
      break;
    }
    case 'kvm_xcrs':
      b = structBytes(kvm_xcrs, { nrXcrs: 1, xcrs: [{ xcr: 0, value: 1n }] });
      break;
    case 'kvm_debugregs':
      b = structBytes(kvm_debugregs, { dr6: 0xffff0ff0n, dr7: 0x400n });
      break;
    case 'kvm_vcpu_events':
      b = structBytes(kvm_vcpu_events, {
        flags: kvm.KVM_VCPUEVENT_VALID_NMI_PENDING | kvm.KVM_VCPUEVENT_VALID_SHADOW | kvm.KVM_VCPUEVENT_VALID_SMM,
      });
      break;
    case 'kvm_mp_state':
      b = structBytes(kvm_mp_state, {
        mpState: vcpu.id !== 0 && hasIrqchip(vcpu.vm) ? kvm.KVM_MP_STATE_UNINITIALIZED : kvm.KVM_MP_STATE_RUNNABLE,
      });
      break;
    case 'kvm_lapic_state': {
      b = new Uint8Array(kvm_lapic_state.size);
      const d = dv(b);
      d.setUint32(0x20, (vcpu.id << 24) >>> 0, true); // ID
      d.setUint32(0x30, 0x50014, true); // version
      d.setUint32(0xe0, 0xffffffff, true); // DFR
      d.setUint32(0xf0, 0xff, true); // SVR
      for (const r of [0x320, 0x330, 0x340, 0x350, 0x360, 0x370]) d.setUint32(r, 0x10000, true); // LVTs masked
      if (vcpu.id === 0) d.setUint32(0x350, 0x700, true); // LINT0: ExtINT on the BSP
      break;
    }
    default:
      b = new Uint8Array(0);
  }
  vcpu.state.set(name, b);
  return b;
}

function getter(
  name: StructDefName,
  size: number,
  request: string,
  check?: (vcpu: MockVcpu) => void,
): MockIoctl<VcpuFile> {
  return (ctx, { vcpu }, arg) => {
    check?.(vcpu);
    const out = ctx.bytes(arg, request, size);
    out.set(x86State(vcpu, name).subarray(0, size));
    return 0;
  };
}

function setter(
  name: StructDefName,
  size: number,
  request: string,
  check?: (vcpu: MockVcpu, input: Uint8Array) => void,
): MockIoctl<VcpuFile> {
  return (ctx, { vcpu }, arg) => {
    const input = ctx.bytes(arg, request, size);
    check?.(vcpu, input);
    x86State(vcpu, name).set(input.subarray(0, size));
    return 0;
  };
}

function needIrqchip(request: string): (vcpu: MockVcpu) => void {
  return (vcpu) => {
    if (!hasIrqchip(vcpu.vm)) fail('EINVAL', request, 'no in-kernel irqchip');
  };
}

const VALID_EVENT_FLAGS = 0x3f;

function x86StateIoctls(): Record<number, MockIoctl<VcpuFile>> {
  const xsaveSize = (ctx: MockContext) => Math.max(kvm_xsave.size, ctx.config.caps[kvm.KVM_CAP_XSAVE2] ?? 0);
  return {
    [ioctls.KVM_GET_FPU]: (ctx, { vcpu }, arg) => {
      const out = ctx.bytes(arg, 'KVM_GET_FPU', kvm_fpu.size);
      out.set(x86State(vcpu, 'kvm_fpu'));
      // KVM reads MXCSR back as set (fxsave.mxcsr); a PVM host reports a fixed value instead
      // (`fpuMxcsr: 0` models this project's Intel host, which reports 0).
      if (ctx.config.fpuMxcsr !== 'as-set') dv(out).setUint32(kvm_fpu.fields.mxcsr.offset, ctx.config.fpuMxcsr, true);
      return 0;
    },
    [ioctls.KVM_SET_FPU]: setter('kvm_fpu', kvm_fpu.size, 'KVM_SET_FPU'),
    [ioctls.KVM_GET_LAPIC]: getter(
      'kvm_lapic_state',
      kvm_lapic_state.size,
      'KVM_GET_LAPIC',
      needIrqchip('KVM_GET_LAPIC'),
    ),
    [ioctls.KVM_SET_LAPIC]: setter(
      'kvm_lapic_state',
      kvm_lapic_state.size,
      'KVM_SET_LAPIC',
      needIrqchip('KVM_SET_LAPIC'),
    ),
    [ioctls.KVM_GET_MP_STATE]: getter('kvm_mp_state', kvm_mp_state.size, 'KVM_GET_MP_STATE'),
    [ioctls.KVM_SET_MP_STATE]: setter('kvm_mp_state', kvm_mp_state.size, 'KVM_SET_MP_STATE', (vcpu, input) => {
      const { mpState } = decodeStruct<KvmMpState>(kvm_mp_state, dv(input));
      if (!hasIrqchip(vcpu.vm) && mpState !== kvm.KVM_MP_STATE_RUNNABLE)
        fail('EINVAL', 'KVM_SET_MP_STATE', 'needs the in-kernel LAPIC');
      if (mpState > kvm.KVM_MP_STATE_SIPI_RECEIVED) fail('EINVAL', 'KVM_SET_MP_STATE');
    }),
    [ioctls.KVM_GET_XSAVE]: getter('kvm_xsave', kvm_xsave.size, 'KVM_GET_XSAVE'),
    [ioctls.KVM_GET_XSAVE2]: (ctx, { vcpu }, arg) => {
      const n = xsaveSize(ctx);
      ctx.bytes(arg, 'KVM_GET_XSAVE2', n).set(x86State(vcpu, 'kvm_xsave').subarray(0, n));
      return 0;
    },
    [ioctls.KVM_SET_XSAVE]: (ctx, { vcpu }, arg) => {
      const n = xsaveSize(ctx);
      const input = ctx.bytes(arg, 'KVM_SET_XSAVE', n);
      const st = x86State(vcpu, 'kvm_xsave');
      st.set(input.subarray(0, Math.min(n, st.length)));
      // MXCSR and its mask read back as their init values while SSE is not in the guest's XCR0.
      const w = new Uint32Array(st.buffer);
      w[6] = 0x1f80;
      w[7] = 0x2ffff;
      return 0;
    },
    [ioctls.KVM_GET_XCRS]: getter('kvm_xcrs', kvm_xcrs.size, 'KVM_GET_XCRS'),
    [ioctls.KVM_SET_XCRS]: setter('kvm_xcrs', kvm_xcrs.size, 'KVM_SET_XCRS', (_vcpu, input) => {
      const x = decodeStruct<KvmXcrs>(kvm_xcrs, dv(input));
      if (x.nrXcrs > kvm.KVM_MAX_XCRS || x.flags !== 0) fail('EINVAL', 'KVM_SET_XCRS');
      for (const e of x.xcrs.slice(0, x.nrXcrs)) {
        // Without KVM_SET_CPUID2 the guest supports x87 only: XCR0 must be exactly 1.
        if (e.xcr === 0 && e.value !== 1n) fail('EINVAL', 'KVM_SET_XCRS', 'XCR0 not supported by the guest');
      }
    }),
    [ioctls.KVM_GET_DEBUGREGS]: getter('kvm_debugregs', kvm_debugregs.size, 'KVM_GET_DEBUGREGS'),
    [ioctls.KVM_SET_DEBUGREGS]: setter('kvm_debugregs', kvm_debugregs.size, 'KVM_SET_DEBUGREGS', (_vcpu, input) => {
      const d = decodeStruct<KvmDebugregs>(kvm_debugregs, dv(input));
      if (d.flags !== 0n || d.dr6 >> 32n !== 0n || d.dr7 >> 32n !== 0n) fail('EINVAL', 'KVM_SET_DEBUGREGS');
    }),
    [ioctls.KVM_GET_VCPU_EVENTS]: getter('kvm_vcpu_events', kvm_vcpu_events.size, 'KVM_GET_VCPU_EVENTS'),
    [ioctls.KVM_SET_VCPU_EVENTS]: (ctx, { vcpu }, arg) => {
      const R = 'KVM_SET_VCPU_EVENTS';
      const input = ctx.bytes(arg, R, kvm_vcpu_events.size);
      const e = decodeStruct<KvmVcpuEvents>(kvm_vcpu_events, dv(input));
      // The triple-fault flag needs KVM_CAP_X86_TRIPLE_FAULT_EVENT enabled; vectors are < 32.
      if (e.flags & ~VALID_EVENT_FLAGS || e.flags & kvm.KVM_VCPUEVENT_VALID_TRIPLE_FAULT) fail('EINVAL', R);
      if ((e.exception.injected || e.exception.pending) && e.exception.nr >= 32) fail('EINVAL', R);
      const st = x86State(vcpu, 'kvm_vcpu_events');
      const cur = decodeStruct<KvmVcpuEvents>(kvm_vcpu_events, dv(st));
      cur.exception = e.exception;
      cur.interrupt = e.interrupt;
      cur.nmi = { ...cur.nmi, injected: e.nmi.injected, masked: e.nmi.masked };
      if (e.flags & kvm.KVM_VCPUEVENT_VALID_NMI_PENDING) cur.nmi.pending = e.nmi.pending;
      if (e.flags & kvm.KVM_VCPUEVENT_VALID_SIPI_VECTOR) cur.sipiVector = e.sipiVector;
      if (e.flags & kvm.KVM_VCPUEVENT_VALID_SMM) cur.smi = e.smi;
      cur.exceptionHasPayload = e.exceptionHasPayload;
      cur.exceptionPayload = e.exceptionPayload;
      encodeStruct(kvm_vcpu_events, cur, dv(st));
      return 0;
    },
    [ioctls.KVM_SET_GUEST_DEBUG]: (ctx, { vcpu }, arg) => {
      vcpu.extra.set(
        'guestDebug',
        ctx.bytes(arg, 'KVM_SET_GUEST_DEBUG', kvm_guest_debug.size).slice(0, kvm_guest_debug.size),
      );
      return 0;
    },
    // The guest has not enabled kvmclock (no MSR write), so the kernel refuses.
    [ioctls.KVM_KVMCLOCK_CTRL]: () => fail('EINVAL', 'KVM_KVMCLOCK_CTRL'),
    [ioctls.KVM_GET_TSC_KHZ]: (_ctx, { vcpu }) => (vcpu.extra.get('tscKhz') as number | undefined) ?? MOCK_TSC_KHZ,
    [ioctls.KVM_SET_TSC_KHZ]: (_ctx, { vcpu }, arg) => {
      const khz = Number(argInt(arg));
      const cur = (vcpu.extra.get('tscKhz') as number | undefined) ?? MOCK_TSC_KHZ;
      if (khz === 0) return 0;
      // No TSC scaling: lower than the host rate beyond the 250 ppm tolerance is refused, higher is caught up.
      if (khz < MOCK_TSC_KHZ - Math.floor((MOCK_TSC_KHZ * 250) / 1_000_000)) fail('EINVAL', 'KVM_SET_TSC_KHZ');
      vcpu.extra.set('tscKhz', khz >= cur || khz >= MOCK_TSC_KHZ ? khz : cur);
      return 0;
    },
    [ioctls.KVM_TRANSLATE]: (ctx, { vcpu }, arg) => {
      const buf = ctx.bytes(arg, 'KVM_TRANSLATE', kvm_translation.size);
      const t = decodeStruct<KvmTranslation>(kvm_translation, dv(buf));
      const sregs = decodeStruct<KvmSregs>(kvm_sregs, dv(vcpu.state.get('kvm_sregs')!));
      const INVALID = 0xffff_ffff_ffff_ffffn;
      // Paging off: identity (the mock does not walk page tables: with paging on nothing is valid).
      const gpa = sregs.cr0 & 0x8000_0000n ? INVALID : t.linearAddress;
      encodeStruct(
        kvm_translation,
        { physicalAddress: gpa, valid: gpa !== INVALID ? 1 : 0, writeable: 1, usermode: 0 },
        dv(buf),
      );
      return 0;
    },
    [ioctls.KVM_SMI]: (ctx, { vcpu }) => {
      if (!ctx.config.caps[kvm.KVM_CAP_X86_SMM]) fail('ENOTTY', 'KVM_SMI');
      const st = x86State(vcpu, 'kvm_vcpu_events');
      st[kvm_vcpu_events.fields.smi.offset + 1] = 1;
      return 0;
    },
    [ioctls.KVM_NMI]: (_ctx, { vcpu }) => {
      x86State(vcpu, 'kvm_vcpu_events')[kvm_vcpu_events.fields.nmi.offset + 1] = 1; // nmi.pending
      return 0;
    },
    [ioctls.KVM_GET_NESTED_STATE]: (ctx) => {
      if (!ctx.config.caps[kvm.KVM_CAP_NESTED_STATE]) fail('EINVAL', 'KVM_GET_NESTED_STATE');
      return fail('EINVAL', 'KVM_GET_NESTED_STATE', 'the mock has no nested virtualization');
    },
    [ioctls.KVM_SET_NESTED_STATE]: (ctx) => {
      if (!ctx.config.caps[kvm.KVM_CAP_NESTED_STATE]) fail('EINVAL', 'KVM_SET_NESTED_STATE');
      return fail('EINVAL', 'KVM_SET_NESTED_STATE', 'the mock has no nested virtualization');
    },
    [ioctls.KVM_ENABLE_CAP]: (ctx, { vcpu }, arg) => {
      const c = decodeStruct<KvmEnableCap>(kvm_enable_cap, dv(ctx.bytes(arg, 'KVM_ENABLE_CAP', kvm_enable_cap.size)));
      if (c.flags !== 0) fail('EINVAL', 'KVM_ENABLE_CAP');
      if (c.cap === kvm.KVM_CAP_ENFORCE_PV_FEATURE_CPUID && ctx.config.caps[c.cap]) {
        vcpu.extra.set('enforcePvFeatureCpuid', c.args[0] !== 0n);
        return 0;
      }
      return fail('EINVAL', 'KVM_ENABLE_CAP', `cap ${c.cap} cannot be enabled on a vCPU`);
    },
  };
}

/** The guest TSC rate the mock reports (this host's measured value). */
export const MOCK_TSC_KHZ = 2596130;

// @section sync regs and coalesced ring (mock)

const SYNC_VALID = kvm.KVM_SYNC_X86_VALID_FIELDS;
const RUN_VALID_REGS = offsetOf(kvm_run, 'kvm_valid_regs');
const RUN_DIRTY_REGS = offsetOf(kvm_run, 'kvm_dirty_regs');
const RUN_SYNC = offsetOf(kvm_run, 's');
const SYNC_PARTS: Array<[number, 'regs' | 'sregs' | 'events', StructDefName]> = [
  [kvm.KVM_SYNC_X86_REGS, 'regs', 'kvm_regs'],
  [kvm.KVM_SYNC_X86_SREGS, 'sregs', 'kvm_sregs'],
  [kvm.KVM_SYNC_X86_EVENTS, 'events', 'kvm_vcpu_events'],
];

function stateFor(vcpu: MockVcpu, name: StructDefName): Uint8Array {
  return vcpu.state.get(name) ?? x86State(vcpu, name);
}

/** Start of KVM_RUN: reject unknown bits, load the sets marked dirty (and clear their bits). */
function syncRegsIn(vcpu: MockVcpu, view: DataView): void {
  const valid = view.getBigUint64(RUN_VALID_REGS, true);
  let dirty = view.getBigUint64(RUN_DIRTY_REGS, true);
  if (valid & ~BigInt(SYNC_VALID) || dirty & ~BigInt(SYNC_VALID))
    fail('EINVAL', 'KVM_RUN', 'unknown kvm_valid_regs/kvm_dirty_regs bits');
  for (const [bit, field, name] of SYNC_PARTS) {
    if (!(dirty & BigInt(bit))) continue;
    const f = kvm_sync_regs.fields[field];
    stateFor(vcpu, name).set(new Uint8Array(view.buffer, RUN_SYNC + f.offset, f.size));
    dirty &= ~BigInt(bit);
  }
  view.setBigUint64(RUN_DIRTY_REGS, dirty, true);
}

/** End of KVM_RUN (also on errors): store the sets marked valid into kvm_run.s.regs. */
function syncRegsOut(vcpu: MockVcpu, view: DataView): void {
  const valid = view.getBigUint64(RUN_VALID_REGS, true);
  if (valid & ~BigInt(SYNC_VALID)) return;
  for (const [bit, field, name] of SYNC_PARTS) {
    if (!(valid & BigInt(bit))) continue;
    const f = kvm_sync_regs.fields[field];
    new Uint8Array(view.buffer, RUN_SYNC + f.offset, f.size).set(stateFor(vcpu, name).subarray(0, f.size));
  }
}
