/**
 * Setting a vCPU up to run a tiny real-mode test guest.
 *
 * @module
 */
import type { KvmRegs } from '../abi/layouts';
import { checkObject, invalidType } from '../abi/validate';
import { VcpuFd } from '../wrappers/vcpu-fd';
import { zeroFilledRegs } from './regs';

/**
 * Puts `vcpu` in flat real mode (CS base 0, selector 0: linear address = IP) and sets its
 * registers: RFLAGS = 2 (the reserved bit), `regs` on top, every other general register 0.
 * Enough for the small hand-assembled guests (`out`, `in`, `hlt`, …) that device tests run on
 * real KVM. Returns `vcpu`.
 *
 * @example
 * ```ts
 * mem.bytes.set([0xe6, 0x80, 0xf4]); // out 0x80, al; hlt
 * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x1000n, memory: mem });
 * const vcpu = enterRealMode(vm.createVcpu(0), { rip: 0x1000n, rax: 0x2an });
 * vcpu.run(); // { kind: 'IoOut', port: 0x80, data: [0x2a] }
 * ```
 * @throws `TypeError` (`ERR_INVALID_ARG_TYPE`) for a `vcpu` that is not a VcpuFd, `regs` that is
 *   not an object or a `regs.rip` that is not a bigint; {@link KvmError} from
 *   KVM_GET_SREGS/KVM_SET_SREGS/KVM_SET_REGS; `KvmClosedError` for a closed vCPU;
 *   `TypeError`/`RangeError` for bad register values
 */
export function enterRealMode(vcpu: VcpuFd, regs: Partial<KvmRegs> & { rip: bigint }): VcpuFd {
  if (!(vcpu instanceof VcpuFd)) invalidType('vcpu', 'a VcpuFd', vcpu);
  checkObject('regs', regs);
  if (typeof regs.rip !== 'bigint') invalidType('regs.rip', 'a bigint', regs.rip);
  const sregs = vcpu.getSregs();
  sregs.cs.base = 0n;
  sregs.cs.selector = 0;
  vcpu.setSregs(sregs);
  vcpu.setRegs(zeroFilledRegs({ rflags: 2n, ...regs }));
  return vcpu;
}
