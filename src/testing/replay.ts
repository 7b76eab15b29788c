/**
 * Replaying a recorded exit stream on the mock backend.
 *
 * @module
 */
import { kvm } from '../abi/kvm-constants';
import {
  bareExit,
  debugExit,
  failEntry,
  hypercall,
  internalError,
  ioIn,
  ioOut,
  mmioRead,
  mmioWrite,
  rdmsr,
  systemEvent,
  wrmsr,
} from '../backend/mock/exits';
import type { ScriptedExit } from '../backend/mock/state';
import type { RecordedExit } from '../runtime/recording';
import { VCPU_EXIT_KINDS } from '../wrappers/vcpu-exit';

const BARE_REASONS: Record<string, number> = {
  Hlt: kvm.KVM_EXIT_HLT,
  IrqWindowOpen: kvm.KVM_EXIT_IRQ_WINDOW_OPEN,
  Shutdown: kvm.KVM_EXIT_SHUTDOWN,
  Intr: kvm.KVM_EXIT_INTR,
  SetTpr: kvm.KVM_EXIT_SET_TPR,
  S390Sieic: kvm.KVM_EXIT_S390_SIEIC,
  S390Reset: kvm.KVM_EXIT_S390_RESET,
  Dcr: kvm.KVM_EXIT_DCR,
  Nmi: kvm.KVM_EXIT_NMI,
  Osi: kvm.KVM_EXIT_OSI,
  PaprHcall: kvm.KVM_EXIT_PAPR_HCALL,
  S390Ucontrol: kvm.KVM_EXIT_S390_UCONTROL,
  Watchdog: kvm.KVM_EXIT_WATCHDOG,
  S390Tsch: kvm.KVM_EXIT_S390_TSCH,
  Epr: kvm.KVM_EXIT_EPR,
  S390Stsi: kvm.KVM_EXIT_S390_STSI,
  Hyperv: kvm.KVM_EXIT_HYPERV,
  Exception: kvm.KVM_EXIT_EXCEPTION,
  Unknown: kvm.KVM_EXIT_UNKNOWN,
  IoapicEoi: kvm.KVM_EXIT_IOAPIC_EOI,
  TprAccess: kvm.KVM_EXIT_TPR_ACCESS,
};

/** A replay: the exits to script into a mock vCPU, and the answers a correct pipeline gives. */
export interface Replay {
  script: ScriptedExit[];
  /** In the format of `backend.vcpu(id).answers`. */
  expectedAnswers: Array<{ exit: string; answer: unknown }>;
}

/**
 * Turns a recording (`outcome.recording` of a run started with `record: true`) into a mock script
 * and the answers the recorded run gave, so a pipeline can be checked against real behaviour
 * without KVM.
 *
 * @example
 * ```ts
 * // @ts-setup: declare const runtime: VcpuRuntime;
 * // @ts-setup: declare const mockVcpu: VcpuFd;
 * // @ts-setup: declare const myPipeline: VcpuPipeline;
 * const pipeline = require.resolve('./my-pipeline'); // the module that exports myPipeline
 * const { recording } = await runtime.start(vcpu, { pipeline, record: true }).done;   // real KVM
 * // later, anywhere:
 * const { script, expectedAnswers } = replayScript(recording!);
 * backend.vcpu(0).script(script);
 * await runInThread(mockVcpu, myPipeline);
 * expect(backend.vcpu(0).answers).toEqual(expectedAnswers);
 * ```
 */
export function replayScript(recording: readonly RecordedExit[]): Replay {
  const script: ScriptedExit[] = [];
  const expectedAnswers: Replay['expectedAnswers'] = [];
  for (const r of recording) {
    let s: ScriptedExit;
    switch (r.kind) {
      case 'IoOut':
        s = ioOut(r.port, r.data, r.size);
        break;
      case 'IoIn':
        s = ioIn(r.port, r.size, r.count);
        expectedAnswers.push({ exit: s.label, answer: Uint8Array.from(r.answer) });
        break;
      case 'MmioWrite':
        s = mmioWrite(r.addr, r.data);
        break;
      case 'MmioRead':
        s = mmioRead(r.addr, r.len);
        expectedAnswers.push({ exit: s.label, answer: Uint8Array.from(r.answer) });
        break;
      case 'Hypercall':
        s = hypercall(r.nr, r.args, r.longmode);
        expectedAnswers.push({ exit: s.label, answer: r.answer });
        break;
      case 'X86Rdmsr':
        s = rdmsr(r.index, r.reason);
        expectedAnswers.push({ exit: s.label, answer: r.answer });
        break;
      case 'X86Wrmsr':
        s = wrmsr(r.index, r.data, r.reason);
        expectedAnswers.push({ exit: s.label, answer: r.answer });
        break;
      case 'Debug':
        s = debugExit(r.pc, r.exception, r.dr6, r.dr7);
        break;
      case 'InternalError':
        s = internalError(r.suberror, r.data);
        break;
      case 'SystemEvent':
        s = systemEvent(r.type, r.data);
        break;
      case 'FailEntry':
        s = failEntry(r.hardwareEntryFailureReason, r.cpu);
        break;
      case 'Unsupported':
        s = bareExit(r.reason, `Unsupported(${r.reason})`);
        break;
      default: {
        const reason = BARE_REASONS[r.kind];
        if (reason === undefined || !VCPU_EXIT_KINDS.includes(r.kind)) {
          throw new TypeError(`cannot replay a ${(r as { kind: string }).kind} exit`);
        }
        s = bareExit(reason, r.kind);
      }
    }
    script.push(s);
  }
  return { script, expectedAnswers };
}
