/**
 * Every VcpuExit kind decoded from a mock kvm_run (the 34 variants of kvm-ioctls), and the answers
 * written into live exit views reaching the mock kernel on the next KVM_RUN.
 */
import { offsetOf } from '../../src/abi/codec';
import { kvm as K } from '../../src/abi/kvm-constants';
import { kvm_run } from '../../src/abi/layouts';
import { MockBackend } from '../../src/backend/mock/index';
import {
  bareExit,
  debugExit,
  failEntry,
  hlt,
  hypercall,
  internalError,
  ioIn,
  ioOut,
  mmioRead,
  mmioWrite,
  rdmsr,
  runError,
  shutdown,
  systemEvent,
  wrmsr,
} from '../../src/backend/mock/exits';
import type { ScriptedExit } from '../../src/backend/mock/state';
import { Kvm } from '../../src/wrappers/kvm';
import { VCPU_EXIT_KINDS, type VcpuExit } from '../../src/wrappers/vcpu-exit';
import { expectKvmError } from '../helpers/kvm';

const O = (p: string) => offsetOf(kvm_run, p);

/** An exit whose payload the builders do not cover: `fill` writes it after the reason. */
function custom(reason: number, label: string, fill: (v: DataView) => void): ScriptedExit {
  const base = bareExit(reason, label);
  return {
    label,
    write: (v, b) => {
      base.write(v, b);
      fill(v);
    },
  };
}

describe('VcpuExit decoding (mock kvm_run)', () => {
  let backend: MockBackend;
  let kvm: Kvm;
  beforeEach(() => {
    backend = new MockBackend();
    kvm = new Kvm({ backend });
  });
  afterEach(() => kvm.close());

  it('decodes all 34 kinds with their payloads, and records the answers', () => {
    const memFault = custom(K.KVM_EXIT_MEMORY_FAULT, 'MemoryFault', (v) => {
      v.setBigUint64(O('hw'), 8n, true); // flags: KVM_MEMORY_EXIT_FLAG_PRIVATE
      v.setBigUint64(O('hw') + 8, 0x5000n, true);
      v.setBigUint64(O('hw') + 16, 0x1000n, true);
    });
    backend.vcpu(0).script([
      custom(K.KVM_EXIT_UNKNOWN, 'Unknown', (v) => v.setBigUint64(O('hw.hardware_exit_reason'), 0x30n, true)),
      custom(K.KVM_EXIT_EXCEPTION, 'Exception', (v) => {
        v.setUint32(O('ex.exception'), 13, true);
        v.setUint32(O('ex.error_code'), 0x18, true);
      }),
      ioIn(0x3f8, 1),
      ioOut(0x3f8, 'A'),
      hypercall(12n, [0x1234000n, 1n, 0n], 1),
      debugExit(0x1003n, 1, 0xffff4ff0n, 0x400n),
      hlt(),
      mmioRead(0xd000_0000n, 4),
      mmioWrite(0xd000_0000n, [1, 2]),
      bareExit(K.KVM_EXIT_IRQ_WINDOW_OPEN, 'IrqWindowOpen'),
      shutdown(),
      failEntry(0x80000021n, 1),
      bareExit(K.KVM_EXIT_INTR, 'Intr'),
      bareExit(K.KVM_EXIT_SET_TPR, 'SetTpr'),
      custom(K.KVM_EXIT_TPR_ACCESS, 'TprAccess', (v) => {
        v.setBigUint64(O('tpr_access.rip'), 0x2000n, true);
        v.setUint32(O('tpr_access.is_write'), 1, true);
      }),
      bareExit(K.KVM_EXIT_S390_SIEIC, 'S390Sieic'),
      bareExit(K.KVM_EXIT_S390_RESET, 'S390Reset'),
      bareExit(K.KVM_EXIT_DCR, 'Dcr'),
      bareExit(K.KVM_EXIT_NMI, 'Nmi'),
      internalError(K.KVM_INTERNAL_ERROR_EMULATION, [0n, 0x1000n]),
      bareExit(K.KVM_EXIT_OSI, 'Osi'),
      bareExit(K.KVM_EXIT_PAPR_HCALL, 'PaprHcall'),
      bareExit(K.KVM_EXIT_S390_UCONTROL, 'S390Ucontrol'),
      bareExit(K.KVM_EXIT_WATCHDOG, 'Watchdog'),
      bareExit(K.KVM_EXIT_S390_TSCH, 'S390Tsch'),
      bareExit(K.KVM_EXIT_EPR, 'Epr'),
      systemEvent(K.KVM_SYSTEM_EVENT_RESET, [7n]),
      bareExit(K.KVM_EXIT_S390_STSI, 'S390Stsi'),
      custom(K.KVM_EXIT_IOAPIC_EOI, 'IoapicEoi', (v) => v.setUint8(O('eoi.vector'), 0x31)),
      bareExit(K.KVM_EXIT_HYPERV, 'Hyperv'),
      rdmsr(0x474f4f00),
      wrmsr(0x474f4f00, 0xd0c0ffee_deadbeefn),
      memFault,
      bareExit(K.KVM_EXIT_NOTIFY, 'Notify'),
      // MemoryFault is also what KVM_RUN failing with EFAULT reports when exit_reason is 39.
      memFault,
      runError('EFAULT'),
      hlt(),
    ]);
    const vm = kvm.createVm();
    const vcpu = vm.createVcpu(0);
    vcpu.setRegs({ ...vcpu.getRegs(), rax: 0xffff_ff00n });
    const seen: VcpuExit[] = [];
    for (let i = 0; i < 34; i++) {
      const e = vcpu.run();
      // Views alias kvm_run and are valid only until the next run(): keep copies of write data.
      seen.push(e.kind === 'IoOut' || e.kind === 'MmioWrite' ? { ...e, data: e.data.slice() } : e);
      switch (e.kind) {
        case 'IoIn':
          e.data[0] = 0x42;
          break;
        case 'MmioRead':
          e.data.set([0x11, 0x22, 0x33, 0x44]);
          break;
        case 'Hypercall':
          e.ret = 0x77n;
          break;
        case 'X86Rdmsr':
          e.data = 0x1122334455667788n;
          break;
        case 'X86Wrmsr':
          e.error = 1;
          break;
        default:
          break;
      }
    }
    expect(seen.map((e) => e.kind)).toEqual([...VCPU_EXIT_KINDS]);
    const byKind = Object.fromEntries(seen.map((e) => [e.kind, e])) as Record<string, VcpuExit>;
    expect(byKind.Unknown).toEqual({ kind: 'Unknown', hardwareExitReason: 0x30n });
    expect(byKind.Exception).toEqual({ kind: 'Exception', exception: 13, errorCode: 0x18 });
    expect(byKind.IoOut).toMatchObject({ kind: 'IoOut', port: 0x3f8, size: 1, count: 1 });
    expect(Array.from((byKind.IoOut as { data: Uint8Array }).data)).toEqual([0x41]);
    expect(byKind.IoIn).toMatchObject({ kind: 'IoIn', port: 0x3f8, size: 1, count: 1 });
    expect(byKind.Hypercall).toMatchObject({
      kind: 'Hypercall',
      nr: 12n,
      args: [0x1234000n, 1n, 0n, 0n, 0n, 0n],
      longmode: 1,
    });
    expect(byKind.Debug).toEqual({ kind: 'Debug', exception: 1, pc: 0x1003n, dr6: 0xffff4ff0n, dr7: 0x400n });
    expect(byKind.MmioRead).toMatchObject({ kind: 'MmioRead', addr: 0xd000_0000n });
    expect(Array.from((byKind.MmioWrite as { data: Uint8Array }).data)).toEqual([1, 2]);
    expect(byKind.FailEntry).toEqual({ kind: 'FailEntry', hardwareEntryFailureReason: 0x80000021n, cpu: 1 });
    expect(byKind.TprAccess).toEqual({ kind: 'TprAccess', rip: 0x2000n, isWrite: 1 });
    expect(byKind.InternalError).toEqual({ kind: 'InternalError', suberror: 1, data: [0n, 0x1000n] });
    expect(byKind.SystemEvent).toEqual({ kind: 'SystemEvent', type: K.KVM_SYSTEM_EVENT_RESET, data: [7n] });
    expect(byKind.IoapicEoi).toEqual({ kind: 'IoapicEoi', vector: 0x31 });
    expect(byKind.X86Rdmsr).toMatchObject({
      kind: 'X86Rdmsr',
      reason: K.KVM_MSR_EXIT_REASON_UNKNOWN,
      index: 0x474f4f00,
    });
    expect(byKind.X86Wrmsr).toMatchObject({ kind: 'X86Wrmsr', index: 0x474f4f00, data: 0xd0c0ffee_deadbeefn });
    expect(byKind.MemoryFault).toEqual({ kind: 'MemoryFault', flags: 8n, gpa: 0x5000n, size: 0x1000n });
    expect(byKind.Unsupported).toEqual({ kind: 'Unsupported', reason: K.KVM_EXIT_NOTIFY });
    for (const k of ['Hlt', 'IrqWindowOpen', 'Shutdown', 'Intr', 'SetTpr', 'S390Sieic', 'Hyperv', 'Epr'])
      expect(byKind[k]).toEqual({ kind: k });

    // The EFAULT path: KVM_RUN failed, exit_reason 39 → MemoryFault instead of a throw.
    expect(vcpu.run().kind).toBe('MemoryFault');
    expect(vcpu.run()).toMatchObject({ kind: 'MemoryFault', gpa: 0x5000n });
    expect(vcpu.run().kind).toBe('Hlt');

    const answers = backend.vcpu(0).answers;
    const answerOf = (label: string) => answers.find((a) => a.exit.startsWith(label))?.answer;
    expect(Array.from(answerOf('IoIn') as Uint8Array)).toEqual([0x42]);
    expect(Array.from(answerOf('MmioRead') as Uint8Array)).toEqual([0x11, 0x22, 0x33, 0x44]);
    expect(answerOf('Hypercall')).toBe(0x77n);
    expect(answerOf('X86Rdmsr')).toEqual({ data: 0x1122334455667788n, error: 0 });
    expect(answerOf('X86Wrmsr')).toEqual({ error: 1 });
    // The IoIn answer reached AL of the mock vCPU's RAX (the upper bytes kept).
    expect(vcpu.getRegs().rax).toBe(0xffff_ff42n);
    vm.close();
  });

  it('an IO exit with an unknown direction is EINVAL, as kvm-ioctls', () => {
    backend.vcpu(0).script([
      custom(K.KVM_EXIT_IO, 'IoBad', (v) => {
        v.setUint8(O('io.direction'), 2);
        v.setUint8(O('io.size'), 1);
        v.setUint32(O('io.count'), 1, true);
        v.setBigUint64(O('io.data_offset'), 4096n, true);
      }),
    ]);
    const vm = kvm.createVm();
    const vcpu = vm.createVcpu(0);
    expectKvmError(() => vcpu.run(), 'EINVAL', 'KVM_RUN');
    vm.close();
  });

  it('coalesces scripted writes to registered zones into the ring, with sync regs stored after the run', () => {
    backend.vcpu(0).script([ioOut(0x2c, [0x39]), mmioWrite(0x124n, [0x39, 0]), hlt(), ioOut(0x2c, [0x39])]);
    const vm = kvm.createVm();
    const vcpu = vm.createVcpu(0);
    vm.registerCoalescedMmio({ kind: 'pio', addr: 0x2cn }, 1);
    vm.registerCoalescedMmio({ kind: 'mmio', addr: 0x124n }, 2);
    vcpu.mapCoalescedMmioRing();
    vcpu.setSyncValidReg(1);
    vcpu.setSyncRegs({ regs: { ...vcpu.getRegs(), rax: 0x8000n } });
    vcpu.setSyncDirtyReg(1);
    expect(vcpu.run().kind).toBe('Hlt');
    expect(vcpu.getRegs().rax).toBe(0x8000n);
    expect(vcpu.getKvmRun().kvmDirtyRegs).toBe(0n);
    expect(vcpu.coalescedMmioRead()).toMatchObject({ physAddr: 0x2cn, len: 1, pio: 1 });
    expect(vcpu.coalescedMmioRead()).toMatchObject({ physAddr: 0x124n, len: 2, pio: 0 });
    expect(vcpu.coalescedMmioRead()).toBeUndefined();
    vm.unregisterCoalescedMmio({ kind: 'pio', addr: 0x2cn }, 1);
    expect(vcpu.run().kind).toBe('IoOut');
    vm.close();
  });
});
