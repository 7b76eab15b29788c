/**
 * Recording a vCPU's exit stream (each exit and the answer it got), to replay it later on the
 * mock backend: record once on real KVM, then test the same device pipeline without KVM.
 *
 * @module
 */
import type { VcpuExit } from '../wrappers/vcpu-exit';

/** One recorded exit: its payload (plain, structured-cloneable) and the answer it was given. */
export type RecordedExit =
  | { kind: 'IoOut'; port: number; size: number; count: number; data: number[] }
  | { kind: 'IoIn'; port: number; size: number; count: number; answer: number[] }
  | { kind: 'MmioWrite'; addr: bigint; data: number[] }
  | { kind: 'MmioRead'; addr: bigint; len: number; answer: number[] }
  | { kind: 'Hypercall'; nr: bigint; args: bigint[]; longmode: number; answer: bigint }
  | { kind: 'X86Rdmsr'; index: number; reason: number; answer: { data: bigint; error: number } }
  | { kind: 'X86Wrmsr'; index: number; reason: number; data: bigint; answer: { error: number } }
  | { kind: 'Debug'; exception: number; pc: bigint; dr6: bigint; dr7: bigint }
  | { kind: 'InternalError'; suberror: number; data: bigint[] }
  | { kind: 'SystemEvent'; type: number; data: bigint[] }
  | { kind: 'FailEntry'; hardwareEntryFailureReason: bigint; cpu: number }
  | { kind: 'Unsupported'; reason: number }
  | {
      kind: Exclude<
        VcpuExit['kind'],
        | 'IoOut'
        | 'IoIn'
        | 'MmioWrite'
        | 'MmioRead'
        | 'Hypercall'
        | 'X86Rdmsr'
        | 'X86Wrmsr'
        | 'Debug'
        | 'InternalError'
        | 'SystemEvent'
        | 'FailEntry'
        | 'Unsupported'
      >;
    };

/**
 * Snapshots an exit after its handlers ran (so answers are final) and before the vCPU resumes.
 * Runners call this; users get the result from `run.recording` or `runInThread(…, { record })`.
 */
export function recordExit(exit: VcpuExit): RecordedExit {
  switch (exit.kind) {
    case 'IoOut':
      return { kind: 'IoOut', port: exit.port, size: exit.size, count: exit.count, data: [...exit.data] };
    case 'IoIn':
      return { kind: 'IoIn', port: exit.port, size: exit.size, count: exit.count, answer: [...exit.data] };
    case 'MmioWrite':
      return { kind: 'MmioWrite', addr: exit.addr, data: [...exit.data] };
    case 'MmioRead':
      return { kind: 'MmioRead', addr: exit.addr, len: exit.data.length, answer: [...exit.data] };
    case 'Hypercall':
      return { kind: 'Hypercall', nr: exit.nr, args: [...exit.args], longmode: exit.longmode, answer: exit.ret };
    case 'X86Rdmsr':
      return {
        kind: 'X86Rdmsr',
        index: exit.index,
        reason: exit.reason,
        answer: { data: exit.data, error: exit.error },
      };
    case 'X86Wrmsr':
      return {
        kind: 'X86Wrmsr',
        index: exit.index,
        reason: exit.reason,
        data: exit.data,
        answer: { error: exit.error },
      };
    case 'Debug':
      return { kind: 'Debug', exception: exit.exception, pc: exit.pc, dr6: exit.dr6, dr7: exit.dr7 };
    case 'InternalError':
      return { kind: 'InternalError', suberror: exit.suberror, data: [...exit.data] };
    case 'SystemEvent':
      return { kind: 'SystemEvent', type: exit.type, data: [...exit.data] };
    case 'FailEntry':
      return { kind: 'FailEntry', hardwareEntryFailureReason: exit.hardwareEntryFailureReason, cpu: exit.cpu };
    case 'Unsupported':
      return { kind: 'Unsupported', reason: exit.reason };
    case 'Exception':
    case 'Unknown':
    case 'IoapicEoi':
    case 'TprAccess':
    case 'MemoryFault':
      // Payloads that replays do not need to reproduce exactly; the kind is kept.
      return { kind: exit.kind };
    default:
      return { kind: exit.kind };
  }
}
