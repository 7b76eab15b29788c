/**
 * Setting a vCPU up to run 64-bit code on an identity map: for sandboxes and test guests of your
 * own that want long mode without a bootloader (Linux guests get it from `createLinuxMachine`).
 *
 * @module
 */
import type { KvmRegs } from '../abi/layouts';
import { checkObject, invalidType, invalidValue } from '../abi/validate';
import { VcpuFd } from '../wrappers/vcpu-fd';
import { BOOT_LAYOUT, GDT_ENTRIES, longModeSregs, writeLongModeTables } from './boot';
import { zeroFilledRegs } from './regs';

/** The guest-physical bytes {@link enterLongMode} writes: the GDT and the page tables. */
export const LONG_MODE_TABLES: ReadonlyArray<{ readonly what: string; readonly addr: number; readonly size: number }> =
  [
    { what: 'GDT', addr: BOOT_LAYOUT.gdt, size: 8 * GDT_ENTRIES.length },
    {
      what: 'page tables (PML4, PDPT, 4 page directories)',
      addr: BOOT_LAYOUT.pml4,
      size: BOOT_LAYOUT.pd + 0x4000 - BOOT_LAYOUT.pml4,
    },
  ];

/**
 * Puts `vcpu` in 64-bit long mode on an identity map of the first 4 GiB (2 MiB pages), and sets
 * its registers: RFLAGS = 2, `regs` on top, every other general register 0.
 *
 * It writes the GDT at guest-physical 0x500 (null, null, 64-bit code 0x10, data 0x18, TSS 0x20)
 * and the page tables at 0x9000–0xefff into the VM's guest memory ({@link LONG_MODE_TABLES}), so
 * keep your code and data elsewhere (e.g. from 1 MiB). The IDT is empty (limit 0): an exception
 * ends in a Shutdown exit (a triple fault) where the kernel reports one. Call it before the vCPU
 * first runs. Kernels that check EFER against the guest's CPUID want a CPUID with long mode set
 * first: `vcpu.setCpuid2(kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES))`.
 *
 * @example
 * ```ts
 * const mem = GuestMemory.anonymous(2 << 20);
 * // movabs rax, 0x1122334455667788; out 0x10, al; hlt
 * mem.bytes.set([0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xe6, 0x10, 0xf4], 0x100000);
 * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory: mem }); // 2 MiB at 0
 * const vcpu = enterLongMode(vm.createVcpu(0), { rip: 0x100000n, rsp: 0x80000n });
 * vcpu.run(); // { kind: 'IoOut', port: 0x10, data: [0x88] }
 * ```
 * @throws `TypeError` `ERR_INVALID_ARG_TYPE` for a non-VcpuFd or `regs` without a bigint `rip`;
 *   `TypeError` `ERR_INVALID_ARG_VALUE` when the VM's guest memory does not back the tables (nothing
 *   is written then); {@link KvmError} from KVM_GET_SREGS/KVM_SET_SREGS/KVM_SET_REGS;
 *   `KvmClosedError` for a closed vCPU; `TypeError`/`RangeError` for bad register values
 */
export function enterLongMode(vcpu: VcpuFd, regs: Partial<KvmRegs> & { rip: bigint }): VcpuFd {
  if (!(vcpu instanceof VcpuFd)) invalidType('vcpu', 'a VcpuFd', vcpu);
  checkObject('regs', regs);
  if (typeof regs.rip !== 'bigint') invalidType('regs.rip', 'a bigint', regs.rip);
  const memory = vcpu.vm.guestMemory;
  for (const t of LONG_MODE_TABLES) {
    for (let a = t.addr; a < t.addr + t.size; a += 0x1000 - (a % 0x1000)) {
      if (memory.find(BigInt(a)) === undefined) {
        invalidValue(
          'vcpu',
          `has no guest memory at 0x${a.toString(16)} for the ${t.what} of long mode (0x${t.addr.toString(16)}–0x${(t.addr + t.size - 1).toString(16)}): map memory there first`,
        );
      }
    }
  }
  const sregs = longModeSregs(vcpu.getSregs()); // ERR_KVM_CLOSED / ERR_KVM_VCPU_RUNNING before any write
  writeLongModeTables(memory);
  vcpu.setSregs(sregs);
  vcpu.setRegs(zeroFilledRegs({ rflags: 2n, ...regs }));
  return vcpu;
}
