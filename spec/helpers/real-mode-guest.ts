/**
 * The set-up of the specs' small hand-assembled guests: a Kvm, a VM, a GuestMemory slot holding
 * `code`, and vCPU 0 in flat real mode (`enterRealMode`) at the code. One `using` closes it all.
 * More code or data (an ISR, an IVT entry) goes in with `guest.mem.write(offset, bytes)`.
 */
import type { KvmRegs } from '../../src/abi/layouts';
import type { IoctlBackend } from '../../src/backend/types';
import { enterRealMode } from '../../src/testing/real-mode';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import type { VcpuFd } from '../../src/wrappers/vcpu-fd';
import type { VmFd } from '../../src/wrappers/vm-fd';

export interface RealModeGuestOptions {
  /** The backend (default: the native one). */
  backend?: IoctlBackend;
  /** Guest-physical address of the slot (default 0x1000). */
  guestPhysAddr?: bigint;
  /** Guest-physical address of the code, inside the slot (default `guestPhysAddr`). */
  codeAt?: bigint;
  /** Bytes of guest memory (default 0x4000). */
  memSize?: number;
  /** Where the vCPU starts (default `codeAt`). */
  rip?: bigint;
  /** Other registers for `enterRealMode` (default: all 0, RFLAGS 2). */
  regs?: Partial<KvmRegs>;
  /** Runs after the slot is set and before the vCPU is created (e.g. `vm.createIrqChip()`). */
  beforeVcpu?: (vm: VmFd) => void;
}

export interface RealModeGuest extends Disposable {
  kvm: Kvm;
  vm: VmFd;
  mem: GuestMemory;
  vcpu: VcpuFd;
  /** Closes the VM (and its vCPUs), /dev/kvm, then the memory. Idempotent. */
  close(): void;
}

/** A VM whose vCPU 0 runs `code` in flat real mode. */
export function realModeGuest(code: ArrayLike<number>, opts: RealModeGuestOptions = {}): RealModeGuest {
  const gpa = opts.guestPhysAddr ?? 0x1000n;
  const codeAt = opts.codeAt ?? gpa;
  const kvm = new Kvm(opts.backend === undefined ? undefined : { backend: opts.backend });
  const mem = GuestMemory.anonymous(opts.memSize ?? 0x4000, { backend: kvm.backend });
  const close = () => {
    kvm.close();
    mem.close();
  };
  try {
    mem.write(Number(codeAt - gpa), code);
    const vm = kvm.createVm();
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: gpa, memory: mem });
    opts.beforeVcpu?.(vm);
    const vcpu = enterRealMode(vm.createVcpu(0), { ...opts.regs, rip: opts.rip ?? codeAt });
    return { kvm, vm, mem, vcpu, close, [Symbol.dispose]: close };
  } catch (e) {
    close();
    throw e;
  }
}
