/**
 * `enterRealMode` (kvm-rx/testing): the set-up every small real-mode test guest needs.
 */
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import { enterRealMode } from '../../src/testing';
import { describeKvm, expectCode } from '../helpers/kvm';

describeKvm('enterRealMode', () => {
  it('runs a guest at rip with the given registers, flat CS, RFLAGS 2 and the other registers 0', () => {
    using kvm = new Kvm();
    using mem = GuestMemory.anonymous(0x1000);
    using vm = kvm.createVm();
    mem.bytes.set([0xe6, 0x80, 0x89, 0xd8, 0xe6, 0x81, 0xf4]); // out 0x80,al; mov ax,bx; out 0x81,al; hlt
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x1000n, memory: mem });
    const created = vm.createVcpu(0);
    expect(created.getRegs().rdx).not.toBe(0n); // KVM puts the CPU signature in RDX at reset
    const vcpu = enterRealMode(created, { rip: 0x1000n, rax: 0x2an });
    expect(vcpu).toBe(created);
    expect(vcpu.getSregs().cs).toMatchObject({ base: 0n, selector: 0 });
    expect(vcpu.getRegs()).toMatchObject({ rip: 0x1000n, rax: 0x2an, rbx: 0n, rdx: 0n, rflags: 2n });
    expect(vcpu.run()).toMatchObject({ kind: 'IoOut', port: 0x80, data: Uint8Array.of(0x2a) });
    expect(vcpu.run()).toMatchObject({ kind: 'IoOut', port: 0x81, data: Uint8Array.of(0) });
    expect(vcpu.run().kind).toBe('Hlt');
  });

  it('throws for a closed vCPU and for a register that is not a number', () => {
    using kvm = new Kvm();
    using vm = kvm.createVm();
    const vcpu = vm.createVcpu(0);
    expectCode(() => enterRealMode(vcpu, { rip: '1' as unknown as bigint }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    vcpu.close();
    expectCode(() => enterRealMode(vcpu, { rip: 0n }), 'KvmClosedError', 'ERR_KVM_CLOSED');
  });
});
