/**
 * Userspace fallbacks for KVM emulation failures: the decision table, the vCPU state changes on
 * the mock, and the real kernel: on a PVM host (kvm_pvm), where KVM emulates these instructions
 * and the failures really happen, and on a VMX/SVM host, where the same guests run natively.
 */
import { kvm as K } from '../../src/abi/kvm-constants';
import { MockBackend } from '../../src/backend/mock/index';
import { emulationFailureData, internalError } from '../../src/backend/mock/exits';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import type { VcpuFd } from '../../src/wrappers/vcpu-fd';
import type { InternalErrorExit } from '../../src/wrappers/vcpu-exit';
import type { VmFd } from '../../src/wrappers/vm-fd';
import { createLinuxMachine, type LinuxMachine } from '../../src/vmm/boot';
import {
  EmulationFailureError,
  decideEmulationFallback,
  emulationFallbackStats,
  handleEmulationFailure,
  insnBytesFromExit,
} from '../../src/vmm/emulation-fallback';
import { describeKvm, kvmVendor } from '../helpers/kvm';
import { buildElf } from './images';

/** A PVM host (no VMX/SVM): guest kernel code goes through KVM's emulator. */
const emulatingHost = kvmVendor === 'pvm';

describe('decideEmulationFallback', () => {
  it.each([
    ['int3', [0xcc], { action: 'inject-bp', mnemonic: 'int3', length: 1 }],
    ['fwait', [0x9b, 0xdb, 0xe3], { action: 'skip', mnemonic: 'fwait', length: 1 }],
    ['clac', [0x0f, 0x01, 0xca], { action: 'clear-ac', mnemonic: 'clac', length: 3 }],
    ['stac', [0x0f, 0x01, 0xcb], { action: 'set-ac', mnemonic: 'stac', length: 3 }],
    ['cmpxchg16b', [0x48, 0x0f, 0xc7, 0x0e], { action: 'fail' }],
    ['xrstor64', [0x48, 0x0f, 0xae, 0x2f], { action: 'fail' }],
    ['lgdt (0f 01 /2, not clac)', [0x0f, 0x01, 0x15], { action: 'fail' }],
    ['truncated 0f 01', [0x0f, 0x01], { action: 'fail' }],
    ['nothing', [], { action: 'fail' }],
  ])('%s', (_name, bytes, decision) => {
    expect(decideEmulationFallback(Uint8Array.from(bytes))).toEqual(decision);
  });
});

describe('insnBytesFromExit', () => {
  it('decodes insn_size and insn_bytes from the data words when the flag says they are there', () => {
    const exit: InternalErrorExit = {
      kind: 'InternalError',
      suberror: 1,
      data: emulationFailureData([0x0f, 0x01, 0xca]),
    };
    expect(Array.from(insnBytesFromExit(exit)!)).toEqual([0x0f, 0x01, 0xca]);
    expect(insnBytesFromExit({ kind: 'InternalError', suberror: 1, data: [0n, 0n, 0n] })).toBeUndefined();
    expect(
      insnBytesFromExit({ kind: 'InternalError', suberror: 3, data: emulationFailureData([0xcc]) }),
    ).toBeUndefined();
    expect(insnBytesFromExit({ kind: 'InternalError', suberror: 1, data: [1n] })).toBeUndefined();
  });
});

describe('handleEmulationFailure on the mock', () => {
  let kvm: Kvm;
  let vm: VmFd;
  let mem: GuestMemory;
  let vcpu: VcpuFd;
  let backend: MockBackend;
  beforeEach(() => {
    backend = new MockBackend();
    kvm = new Kvm({ backend });
    vm = kvm.createVm();
    mem = GuestMemory.anonymous(0x10000, { backend });
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory: mem });
    vcpu = vm.createVcpu(0);
  });
  afterEach(() => {
    vm.close();
    mem.close();
    kvm.close();
  });

  /** Puts `code` at 0x1000 (paging off: the mock translates 1:1), sets RIP there, runs to the failure. */
  function failAt(code: number[], data: bigint[] = [], rflags = 2n): InternalErrorExit {
    mem.bytes.set(code, 0x1000);
    vcpu.setRegs({ ...vcpu.getRegs(), rip: 0x1000n, rflags, rax: 7n });
    backend.vcpu(0).script([internalError(K.KVM_INTERNAL_ERROR_EMULATION, data)]);
    const e = vcpu.run();
    if (e.kind !== 'InternalError') throw new Error(e.kind);
    return e;
  }

  it('int3: RIP + 1 and #BP injected through KVM_SET_VCPU_EVENTS', () => {
    const stats = emulationFallbackStats();
    expect(handleEmulationFailure(vcpu, failAt([0xcc]), stats).action).toBe('inject-bp');
    expect(vcpu.getRegs().rip).toBe(0x1001n);
    expect(vcpu.getVcpuEvents().exception).toEqual({ injected: 1, nr: 3, hasErrorCode: 0, pending: 0, errorCode: 0 });
    expect(stats).toEqual({ int3: 1, fwait: 0, clac: 0, stac: 0 });
  });

  it('fwait: skipped, nothing injected, other registers kept', () => {
    const stats = emulationFallbackStats();
    handleEmulationFailure(vcpu, failAt([0x9b]), stats);
    const r = vcpu.getRegs();
    expect([r.rip, r.rax, r.rflags]).toEqual([0x1001n, 7n, 2n]);
    expect(vcpu.getVcpuEvents().exception.injected).toBe(0);
    expect(stats.fwait).toBe(1);
  });

  it('stac sets RFLAGS.AC, clac clears it; both skip 3 bytes', () => {
    const stats = emulationFallbackStats();
    handleEmulationFailure(vcpu, failAt([0x0f, 0x01, 0xcb]), stats);
    expect(vcpu.getRegs()).toMatchObject({ rip: 0x1003n, rflags: 0x40002n });
    handleEmulationFailure(vcpu, failAt([0x0f, 0x01, 0xca], [], 0x40202n), stats);
    expect(vcpu.getRegs()).toMatchObject({ rip: 0x1003n, rflags: 0x202n });
    expect(stats).toEqual({ int3: 0, fwait: 0, clac: 1, stac: 1 });
  });

  it('anything else: EmulationFailureError naming RIP and the bytes; the vCPU is left alone', () => {
    const exit = failAt([0x48, 0x0f, 0xc7, 0x0e, 0x90]);
    let err: unknown;
    try {
      handleEmulationFailure(vcpu, exit);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EmulationFailureError);
    const f = err as EmulationFailureError;
    expect(f.code).toBe('ERR_KVM_EMULATION_FAILURE');
    expect(f.rip).toBe(0x1000n);
    expect(f.message).toMatch(/^KVM internal error \(suberror 1\) at rip 0x1000, instruction bytes 48 0f c7 0e 90 00/);
    expect(vcpu.getRegs().rip).toBe(0x1000n);
  });

  it("uses the exit's insn_bytes when RIP does not translate (paging on in the mock)", () => {
    const exit = failAt([0x90], emulationFailureData([0xcc]));
    const s = vcpu.getSregs();
    vcpu.setSregs({ ...s, cr0: s.cr0 | 0x8000_0001n });
    expect(vcpu.translateGva(0x1000n).valid).toBe(0);
    expect(handleEmulationFailure(vcpu, exit).action).toBe('inject-bp');
  });

  it('other suberrors are errors, not fallbacks', () => {
    mem.bytes.set([0xcc], 0x1000);
    vcpu.setRegs({ ...vcpu.getRegs(), rip: 0x1000n, rflags: 2n });
    backend.vcpu(0).script([internalError(K.KVM_INTERNAL_ERROR_DELIVERY_EV, [0x80000b0en])]);
    const e = vcpu.run() as InternalErrorExit;
    expect(() => handleEmulationFailure(vcpu, e)).toThrow(
      /suberror 3\) at rip 0x1000, instruction bytes unreadable: not an emulation failure \(data \[0x80000b0e\]\)/,
    );
  });
});

describeKvm('emulation fallbacks on the real kernel', () => {
  let m: LinuxMachine | undefined;
  let kvm: Kvm;
  afterEach(() => {
    m?.close();
    m = undefined;
    kvm?.close();
  });

  function boot(code: number[]): LinuxMachine {
    kvm = new Kvm();
    m = createLinuxMachine(kvm, {
      kernel: buildElf({
        entry: 0x200000n,
        segments: [{ paddr: 0x200000, data: Uint8Array.from(code), memsz: 0x1000 }],
      }),
      memSize: 32 * (1 << 20),
      irqchip: false,
    });
    return m;
  }

  it('stac/clac: AC flips as the guest sees it in RFLAGS (PVM: both are emulation failures; VMX/SVM run them)', () => {
    const flagOut = [0x9c, 0x58, 0xc1, 0xe8, 0x12, 0x24, 0x01, 0x04, 0x30, 0xee]; // pushfq; pop %rax; shr $18,%eax; and $1,%al; add $'0',%al; out %al,(%dx)
    const machine = boot([0x66, 0xba, 0xf8, 0x03, 0x0f, 0x01, 0xcb, ...flagOut, 0x0f, 0x01, 0xca, ...flagOut, 0xf4]);
    const stats = emulationFallbackStats();
    const out: number[] = [];
    for (let i = 0; i < 20; i++) {
      const e = machine.vcpu.run();
      if (e.kind === 'Hlt') break;
      if (e.kind === 'IoOut') out.push(...e.data);
      else if (e.kind === 'InternalError') handleEmulationFailure(machine.vcpu, e, stats);
      else throw new Error(e.kind);
    }
    expect(Buffer.from(out).toString('latin1')).toBe('10');
    // the fallback ran once for each where KVM emulates, never where the CPU ran them
    expect(stats).toEqual({ int3: 0, fwait: 0, clac: emulatingHost ? 1 : 0, stac: emulatingHost ? 1 : 0 });
  });

  it('cmpxchg16b: where KVM emulates it (PVM), which it cannot, EmulationFailureError with its bytes; VMX/SVM run it', () => {
    const machine = boot([0x48, 0x0f, 0xc7, 0x0e, 0xf4]); // cmpxchg16b (%rsi); hlt
    const e = machine.vcpu.run();
    if (!emulatingHost) {
      // the CPU ran it (RSI is the zero page, 16-byte aligned) and the guest reached its hlt
      expect(e.kind).toBe('Hlt');
      expect(machine.vcpu.getRegs().rip).toBe(0x200005n);
      return;
    }
    expect(e).toMatchObject({ kind: 'InternalError', suberror: K.KVM_INTERNAL_ERROR_EMULATION });
    expect(Array.from(insnBytesFromExit(e as InternalErrorExit)!.subarray(0, 4))).toEqual([0x48, 0x0f, 0xc7, 0x0e]);
    expect(() => handleEmulationFailure(machine.vcpu, e as InternalErrorExit)).toThrow(
      /at rip 0x200000, instruction bytes 48 0f c7 0e f4/,
    );
  });
});
