/**
 * Mock ioctls on vCPU fds: register state and the scripted KVM_RUN.
 *
 * @module
 */
import { offsetOf } from '../../abi/codec';
import { ioctls } from '../../abi/kvm-constants';
import { kvm_regs, kvm_run, kvm_sregs, type StructDefName } from '../../abi/layouts';
import { cpuidMsrVcpuIoctls } from './cpuid-msr';
import { fail, type MockContext, type MockFile, type MockIoctl, type MockVcpu } from './state';
import { guestWrite } from './vm';

type VcpuFile = Extract<MockFile, { kind: 'vcpu' }>;

const IMMEDIATE_EXIT = offsetOf(kvm_run, 'immediate_exit');

/** A getter and a setter that copy a struct between the argument and `vcpu.state`. */
export function stateIoctls(name: StructDefName, size: number, get: number, set: number): Record<number, MockIoctl<VcpuFile>> {
  return {
    [get]: (ctx, { vcpu }, arg) => {
      const out = ctx.bytes(arg, requestOf(get), size);
      out.set(vcpu.state.get(name) ?? new Uint8Array(size));
      return 0;
    },
    [set]: (ctx, { vcpu }, arg) => {
      const input = ctx.bytes(arg, requestOf(set), size);
      vcpu.state.set(name, input.slice(0, size));
      return 0;
    },
  };
}

function requestOf(n: number): string {
  return Object.entries(ioctls).find(([, v]) => v === n)?.[0] ?? `0x${n.toString(16)}`;
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
  if (view.getUint8(IMMEDIATE_EXIT) !== 0) fail('EINTR', 'KVM_RUN');
  const next = vcpu.script.shift();
  if (!next) fail('EINTR', 'KVM_RUN', 'the mock vCPU has no scripted exit left');
  for (const w of next.writes ?? []) guestWrite(ctx, vcpu.vm, w.gpa, w.data);
  if (next.error !== undefined) fail(next.error, 'KVM_RUN');
  next.write(view, bytes);
  vcpu.pending = next;
  return 0;
}

export const vcpuIoctls: Record<number, MockIoctl<VcpuFile>> = {
  [ioctls.KVM_RUN]: (ctx, { vcpu }) => run(ctx, vcpu),
  ...stateIoctls('kvm_regs', kvm_regs.size, ioctls.KVM_GET_REGS, ioctls.KVM_SET_REGS),
  ...stateIoctls('kvm_sregs', kvm_sregs.size, ioctls.KVM_GET_SREGS, ioctls.KVM_SET_SREGS),
  // @section cpuid/msr
  ...cpuidMsrVcpuIoctls,
  // @section x86 state
  // @section sync regs and coalesced ring
};
