/**
 * `enterLongMode` (kvm-rx and kvm-rx/testing): 64-bit code on an identity map without a
 * bootloader. On real KVM: a guest that only works in 64-bit mode (a 64-bit immediate, a 64-bit
 * shift, the stack). On the mock: the argument checks, and that a refused call changes nothing.
 */
import { MockBackend } from '../../src/backend/mock/index';
import { enterLongMode, LONG_MODE_TABLES } from '../../src/vmm/long-mode';
import { enterLongMode as fromTesting } from '../../src/testing';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import { describeKvm, expectCode } from '../helpers/kvm';

const CODE_AT = 0x100000;
const STACK_TOP = 0x80000n;

/**
 * movabs rax, 0x1122334455667788 ; out 0x10, al ; shr rax, 32 ; out 0x10, al ;
 * push rax ; pop rdx ; hlt
 * (in 32-bit code 0x48 would be `dec eax` and the immediate would be cut to 32 bits)
 */
const GUEST64 = [
  0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xe6, 0x10, 0x48, 0xc1, 0xe8, 0x20, 0xe6, 0x10, 0x50,
  0x5a, 0xf4,
];

describeKvm('enterLongMode', () => {
  it('runs 64-bit code at rip: 64-bit immediates, shifts and the stack, with EFER.LMA and a 64-bit CS', () => {
    using kvm = new Kvm();
    using mem = GuestMemory.anonymous(0x200000);
    using vm = kvm.createVm();
    mem.bytes.set(GUEST64, CODE_AT);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory: mem });
    const created = vm.createVcpu(0);
    const vcpu = enterLongMode(created, { rip: BigInt(CODE_AT), rsp: STACK_TOP });
    expect(vcpu).toBe(created);
    const sregs = vcpu.getSregs();
    expect(sregs.efer & 0x500n).toBe(0x500n); // LME | LMA
    expect(sregs.cs).toMatchObject({ selector: 0x10, l: 1 });
    expect(vcpu.getRegs()).toMatchObject({ rip: BigInt(CODE_AT), rsp: STACK_TOP, rax: 0n, rflags: 2n });

    expect(vcpu.run()).toMatchObject({ kind: 'IoOut', port: 0x10, data: Uint8Array.of(0x88) });
    expect(vcpu.run()).toMatchObject({ kind: 'IoOut', port: 0x10, data: Uint8Array.of(0x44) });
    expect(vcpu.run().kind).toBe('Hlt');
    expect(vcpu.getRegs()).toMatchObject({ rax: 0x11223344n, rdx: 0x11223344n, rsp: STACK_TOP });
    // The pushed quadword is in guest memory, just below the stack top.
    expect(vm.guestMemory.read(STACK_TOP - 8n, 8)).toEqual(Uint8Array.of(0x44, 0x33, 0x22, 0x11, 0, 0, 0, 0));
  });

  it('is the same function in kvm-rx/testing', () => {
    expect(fromTesting).toBe(enterLongMode);
  });

  it('an exception without an IDT ends in a Shutdown exit (ud2)', () => {
    using kvm = new Kvm();
    using mem = GuestMemory.anonymous(0x200000);
    using vm = kvm.createVm();
    mem.bytes.set([0x0f, 0x0b], CODE_AT); // ud2
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory: mem });
    const vcpu = enterLongMode(vm.createVcpu(0), { rip: BigInt(CODE_AT) });
    expect(vcpu.run().kind).toBe('Shutdown');
  });
});

describe('enterLongMode arguments (mock)', () => {
  const setup = (memSize: number, at = 0n) => {
    const backend = new MockBackend();
    const kvm = new Kvm({ backend });
    const vm = kvm.createVm();
    const mem = GuestMemory.anonymous(memSize, { backend });
    mem.bytes.fill(0xcc);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: at, memory: mem });
    return { kvm, vm, mem, vcpu: vm.createVcpu(0) };
  };

  it('writes the GDT and page tables where LONG_MODE_TABLES says, and nothing else', () => {
    const { kvm, mem, vcpu } = setup(0x10000);
    try {
      enterLongMode(vcpu, { rip: 0x2000n });
      const touched = (a: number) => LONG_MODE_TABLES.some((t) => a >= t.addr && a < t.addr + t.size);
      const changedElsewhere = [...mem.bytes.keys()].filter((a) => !touched(a) && mem.bytes[a] !== 0xcc);
      expect(changedElsewhere).toEqual([]);
      // PML4[0] points at the PDPT, present and writable.
      expect(new DataView(mem.bytes.buffer).getBigUint64(0x9000, true)).toBe(0xa003n);
    } finally {
      kvm.close();
      mem.close();
    }
  });

  it('refuses a VM whose memory does not back the tables, naming the address, and changes nothing', () => {
    const { kvm, mem, vcpu } = setup(0x1000, 0x100000n); // 4 KiB at 1 MiB only
    try {
      const before = vcpu.getSregs();
      expectCode(() => enterLongMode(vcpu, { rip: 0x100000n }), 'TypeError', 'ERR_INVALID_ARG_VALUE');
      expect(() => enterLongMode(vcpu, { rip: 0x100000n })).toThrow(/no guest memory at 0x500 for the GDT/);
      expect(vcpu.getSregs()).toEqual(before);
      expect(mem.bytes.every((b) => b === 0xcc)).toBe(true);
    } finally {
      kvm.close();
      mem.close();
    }
  });

  it('names a gap inside the page tables too', () => {
    const { kvm, vm, mem, vcpu } = setup(0xc000); // 0–0xbfff: the page directories at 0xb000–0xefff are cut
    try {
      expect(() => enterLongMode(vcpu, { rip: 0x2000n })).toThrow(/no guest memory at 0xc000 for the page tables/);
      expect(vm.guestMemory.read(0x500n, 8)).toEqual(new Uint8Array(8).fill(0xcc));
    } finally {
      kvm.close();
      mem.close();
    }
  });

  it('checks its arguments', () => {
    const { kvm, mem, vcpu } = setup(0x10000);
    try {
      expectCode(() => enterLongMode({} as never, { rip: 0n }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
      expectCode(() => enterLongMode(vcpu, null as never), 'TypeError', 'ERR_INVALID_ARG_TYPE');
      expectCode(() => enterLongMode(vcpu, {} as never), 'TypeError', 'ERR_INVALID_ARG_TYPE');
      expectCode(() => enterLongMode(vcpu, { rip: 0x1000 } as never), 'TypeError', 'ERR_INVALID_ARG_TYPE');
      vcpu.close();
      expectCode(() => enterLongMode(vcpu, { rip: 0n }), 'KvmClosedError', 'ERR_KVM_CLOSED');
    } finally {
      kvm.close();
      mem.close();
    }
  });
});
