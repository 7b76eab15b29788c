/**
 * Saving a running guest's vCPU and VM state and restoring it into a fresh VM on real KVM: the
 * guest goes on from exactly where it was (the building blocks of snapshots, issue 11).
 */
import { restoreVcpuState, restoreVmState, saveVcpuState, saveVmState } from '../../src/vmm/vcpu-state';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import { describeKvm } from '../helpers/kvm';
import { realModeGuest } from '../helpers/real-mode-guest';

// A counter in AX: inc ax; out 0x10, al; mov [0x2000], ax; jmp back to the inc.
const COUNTER = [0x40, 0xe6, 0x10, 0xa3, 0x00, 0x20, 0xeb, 0xf8];

describeKvm('vCPU and VM state, saved and restored into a new VM', () => {
  it('the guest continues from where it was: registers, memory, in-kernel irqchip and PIT state', () => {
    using guest = realModeGuest(COUNTER, { beforeVcpu: (vm) => (vm.createIrqChip(), vm.createPit2({ flags: 0 })) });
    const seen: number[] = [];
    for (let i = 0; i < 5; i++) {
      const e = guest.vcpu.run();
      if (e.kind !== 'IoOut') throw new Error(e.kind);
      seen.push(e.data[0]);
    }
    expect(seen).toEqual([1, 2, 3, 4, 5]);
    const vcpuState = saveVcpuState(guest.kvm, guest.vcpu);
    const vmState = saveVmState(guest.vm);
    const ram = guest.mem.bytes.slice();
    expect(structuredClone(vcpuState)).toEqual(vcpuState); // plain data: it can go to a file or a thread
    expect(vmState.irqchips).toHaveLength(3);
    expect(vmState.pit2).toBeDefined();

    const kvm = new Kvm();
    const vm = kvm.createVm();
    const mem = GuestMemory.anonymous(ram.length);
    try {
      vm.createIrqChip();
      vm.createPit2({ flags: 0 });
      mem.write(0, ram);
      vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x1000n, memory: mem }); // where the guest had it
      const vcpu = vm.createVcpu(0);
      restoreVcpuState(vcpu, vcpuState);
      restoreVmState(vm, vmState);
      expect(vcpu.getRegs()).toEqual(vcpuState.regs);
      expect(vcpu.getSregs().cs).toEqual(vcpuState.sregs.cs);
      const next: number[] = [];
      for (let i = 0; i < 3; i++) {
        const e = vcpu.run();
        if (e.kind !== 'IoOut') throw new Error(e.kind);
        next.push(e.data[0]);
      }
      expect(next).toEqual([6, 7, 8]);
      expect(mem.read(0x2000 - 0x1000, 2)).toEqual(Uint8Array.of(7, 0)); // the store after the 7th OUT
    } finally {
      kvm.close(); // the VM and its vCPU first, then the memory they used
      mem.close();
    }
  });

  it('refuses a state for another vCPU id, and arguments of the wrong kind', () => {
    using guest = realModeGuest(COUNTER);
    const state = saveVcpuState(guest.kvm, guest.vcpu);
    const other = guest.vm.createVcpu(1);
    expect(() => restoreVcpuState(other, state)).toThrow(/the state is vCPU 0's; this is vCPU 1/);
    expect(() => saveVcpuState({} as never, guest.vcpu)).toThrow(TypeError);
    expect(() => restoreVmState({} as never, saveVmState(guest.vm))).toThrow(TypeError);
  });
});
