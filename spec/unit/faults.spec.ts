/**
 * Guest faults the kernel of this project's host cannot produce, on the mock: a FailEntry exit
 * (VM entry refused by the hardware; on this PVM host the kernel refuses every invalid state we
 * tried at KVM_SET_SREGS instead, see spec/kvm/reliability.kvm.spec.ts) is decoded with its
 * reason and CPU, and ends an in-thread run with an error that names it.
 */
import { MockBackend, failEntry, internalError, shutdown } from '../../src/backend/mock/index';
import { runInThread } from '../../src/runtime/in-thread';
import { untilHalt } from '../../src/runtime/operators/untilHalt';
import { Kvm } from '../../src/wrappers/kvm';

describe('guest faults on the mock', () => {
  it('FailEntry is decoded with its hardware reason and CPU', () => {
    const backend = new MockBackend();
    backend.vcpu(0).script([failEntry(0x80000021n, 1)]);
    const kvm = new Kvm({ backend });
    try {
      const vcpu = kvm.createVm().createVcpu(0);
      expect(vcpu.run()).toEqual({ kind: 'FailEntry', hardwareEntryFailureReason: 0x80000021n, cpu: 1 });
    } finally {
      kvm.close();
    }
  });

  it.each([
    ['FailEntry', failEntry(0x21n)],
    ['Shutdown', shutdown()],
    ['InternalError', internalError(1, [1n, 2n])],
  ])(
    'a %s exit nobody handles ends the run with ERR_KVM_UNHANDLED_EXIT naming it, and the vCPU is free again',
    async (kind, exit) => {
      const backend = new MockBackend();
      backend.vcpu(0).script([exit]);
      const kvm = new Kvm({ backend });
      try {
        const vcpu = kvm.createVm().createVcpu(0);
        await expect(runInThread(vcpu, (exits$) => exits$.pipe(untilHalt()))).rejects.toMatchObject({
          code: 'ERR_KVM_UNHANDLED_EXIT',
          message: expect.stringContaining(kind),
        });
        expect(vcpu.running).toBe(false);
        expect(vcpu.getRegs().rip).toBe(0xfff0n);
      } finally {
        kvm.close();
      }
    },
  );
});
