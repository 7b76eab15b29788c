/**
 * Whole register sets for `VcpuFd#setRegs` (which takes every register) from the few registers
 * a set-up routine cares about.
 *
 * @module
 */
import type { KvmRegs } from '../abi/layouts';

/**
 * @internal A whole {@link KvmRegs}: every register 0, then the fields of `regs` that are not
 * `undefined` (the zero fill `enterRealMode`/`enterLongMode` document for their `regs`).
 */
export function zeroFilledRegs(regs: Partial<KvmRegs>): KvmRegs {
  const out: KvmRegs = {
    rax: 0n,
    rbx: 0n,
    rcx: 0n,
    rdx: 0n,
    rsi: 0n,
    rdi: 0n,
    rsp: 0n,
    rbp: 0n,
    r8: 0n,
    r9: 0n,
    r10: 0n,
    r11: 0n,
    r12: 0n,
    r13: 0n,
    r14: 0n,
    r15: 0n,
    rip: 0n,
    rflags: 0n,
  };
  for (const [key, value] of Object.entries(regs)) {
    if (value !== undefined) (out as unknown as Record<string, unknown>)[key] = value;
  }
  return out;
}
