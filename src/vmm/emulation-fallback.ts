/**
 * Userspace fallbacks for instructions KVM's emulator gives up on. Where guest kernel code runs
 * through the emulator (a PVM host without VMX/SVM), a stock kernel hits a few instructions it
 * cannot emulate and `KVM_RUN` returns `KVM_EXIT_INTERNAL_ERROR` / `KVM_INTERNAL_ERROR_EMULATION`;
 * re-running fails again at the same RIP, so the VMM must act on the instruction:
 *
 * - `int3` (`cc`): RIP += 1 and #BP (vector 3) is injected with `KVM_SET_VCPU_EVENTS`
 * - `fwait` (`9b`): skipped (no x87 exception is ever pending here)
 * - `clac` (`0f 01 ca`) / `stac` (`0f 01 cb`): RFLAGS.AC cleared/set, skipped
 * - anything else: an {@link EmulationFailureError} with RIP and the instruction bytes
 *
 * @module
 */
import { checkBytes, checkString, checkU32, checkU64 } from '../abi/validate';
import { kvm } from '../abi/kvm-constants';
import type { GuestMemoryMap } from '../wrappers/guest-memory';
import type { VcpuFd } from '../wrappers/vcpu-fd';
import type { InternalErrorExit } from '../wrappers/vcpu-exit';

/** The longest x86 instruction. */
export const MAX_INSN_LENGTH = 15;
/** RFLAGS.AC (alignment check / SMAP override). */
export const RFLAGS_AC = 1n << 18n;
/** #BP. */
export const BP_VECTOR = 3;

/** What to do with the instruction that failed to emulate. */
export type EmulationDecision =
  | { action: 'inject-bp'; mnemonic: 'int3'; length: 1 }
  | { action: 'skip'; mnemonic: 'fwait'; length: 1 }
  | { action: 'clear-ac'; mnemonic: 'clac'; length: 3 }
  | { action: 'set-ac'; mnemonic: 'stac'; length: 3 }
  | { action: 'fail' };

/** Counts of the fallbacks applied, by mnemonic. */
export interface EmulationFallbackStats {
  int3: number;
  fwait: number;
  clac: number;
  stac: number;
}

/** A fresh {@link EmulationFallbackStats}. */
export function emulationFallbackStats(): EmulationFallbackStats {
  return { int3: 0, fwait: 0, clac: 0, stac: 0 };
}

/**
 * An instruction the emulator failed on and no fallback handles (or an internal error that is not
 * an emulation failure). `code` is `ERR_KVM_EMULATION_FAILURE`.
 */
export class EmulationFailureError extends Error {
  override readonly name = 'EmulationFailureError';
  readonly code = 'ERR_KVM_EMULATION_FAILURE';
  readonly rip: bigint;
  /** The instruction bytes (empty when they could not be read). */
  readonly bytes: Uint8Array;
  readonly suberror: number;
  constructor(rip: bigint, bytes: Uint8Array, suberror: number, why: string) {
    checkU64('rip', rip);
    checkBytes('bytes', bytes);
    checkU32('suberror', suberror);
    checkString('why', why);
    const hexBytes = bytes.length ? Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ') : 'unreadable';
    super(
      `KVM internal error (suberror ${suberror}) at rip 0x${rip.toString(16)}, instruction bytes ${hexBytes}: ${why}`,
    );
    this.rip = rip;
    this.bytes = bytes;
    this.suberror = suberror;
  }
}

/**
 * Decides what to do with the instruction in `bytes` (its first bytes at RIP). Pure.
 *
 * @example `decideEmulationFallback(Uint8Array.of(0xcc)) // { action: 'inject-bp', … }`
 */
export function decideEmulationFallback(bytes: Uint8Array): EmulationDecision {
  if (bytes[0] === 0xcc) return { action: 'inject-bp', mnemonic: 'int3', length: 1 };
  if (bytes[0] === 0x9b) return { action: 'skip', mnemonic: 'fwait', length: 1 };
  if (bytes.length >= 3 && bytes[0] === 0x0f && bytes[1] === 0x01) {
    if (bytes[2] === 0xca) return { action: 'clear-ac', mnemonic: 'clac', length: 3 };
    if (bytes[2] === 0xcb) return { action: 'set-ac', mnemonic: 'stac', length: 3 };
  }
  return { action: 'fail' };
}

/**
 * The instruction bytes the kernel put in `kvm_run.emulation_failure` (`data[0]` = flags with
 * `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`, then `insn_size` and `insn_bytes[15]`),
 * or `undefined` when it did not.
 */
export function insnBytesFromExit(exit: InternalErrorExit): Uint8Array | undefined {
  if (exit.suberror !== kvm.KVM_INTERNAL_ERROR_EMULATION || exit.data.length < 3) return undefined;
  if ((exit.data[0] & BigInt(kvm.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) === 0n) return undefined;
  const raw = new Uint8Array(16);
  const v = new DataView(raw.buffer);
  v.setBigUint64(0, exit.data[1], true);
  v.setBigUint64(8, exit.data[2], true);
  const size = Math.min(raw[0], MAX_INSN_LENGTH);
  return raw.slice(1, 1 + size);
}

/**
 * Reads up to 15 bytes at the guest-virtual `rip` through the vCPU's page tables
 * (`KVM_TRANSLATE`), page by page. Returns the bytes up to the first unmapped page, or `undefined`
 * when the first byte is not mapped.
 */
export function readGuestVirtual(
  vcpu: VcpuFd,
  memory: GuestMemoryMap,
  gva: bigint,
  length = MAX_INSN_LENGTH,
): Uint8Array | undefined {
  const out: number[] = [];
  let at = gva;
  while (out.length < length) {
    const t = vcpu.translateGva(at);
    if (!t.valid) break;
    const inPage = Number(0x1000n - (at & 0xfffn));
    const n = Math.min(inPage, length - out.length);
    let chunk: Uint8Array;
    try {
      chunk = memory.read(t.physicalAddress, n);
    } catch {
      break;
    }
    out.push(...chunk);
    at += BigInt(n);
  }
  return out.length ? Uint8Array.from(out) : undefined;
}

/**
 * Handles an `InternalError` exit: for an emulation failure at an int3/fwait/clac/stac it fixes the
 * vCPU state (RIP, RFLAGS, an injected #BP) so that the next `run()` continues; otherwise throws.
 * The instruction is read at RIP through `KVM_TRANSLATE` and guest memory; the exit's own
 * `insn_bytes` are the fallback when RIP does not translate.
 *
 * @param memory - guest memory (default `vcpu.vm.guestMemory`)
 * @example
 * ```ts
 * const stats = emulationFallbackStats(); // counts the fallbacks applied, by instruction
 * const exit = vcpu.run();
 * if (exit.kind === 'InternalError') handleEmulationFailure(vcpu, exit, stats);
 * ```
 * @throws {@link EmulationFailureError} for another suberror or an instruction without fallback;
 *   {@link KvmError} from the register ioctls
 */
export function handleEmulationFailure(
  vcpu: VcpuFd,
  exit: InternalErrorExit,
  stats?: EmulationFallbackStats,
  memory: GuestMemoryMap = vcpu.vm.guestMemory,
): EmulationDecision {
  const regs = vcpu.getRegs();
  if (exit.suberror !== kvm.KVM_INTERNAL_ERROR_EMULATION) {
    const data = exit.data.map((d) => `0x${d.toString(16)}`).join(', ');
    throw new EmulationFailureError(
      regs.rip,
      insnBytesFromExit(exit) ?? new Uint8Array(0),
      exit.suberror,
      `not an emulation failure (data [${data}])`,
    );
  }
  const bytes = readGuestVirtual(vcpu, memory, regs.rip) ?? insnBytesFromExit(exit) ?? new Uint8Array(0);
  const decision = decideEmulationFallback(bytes);
  switch (decision.action) {
    case 'fail':
      throw new EmulationFailureError(regs.rip, bytes, exit.suberror, 'no userspace fallback for this instruction');
    case 'inject-bp': {
      vcpu.setRegs({ ...regs, rip: regs.rip + 1n });
      const events = vcpu.getVcpuEvents();
      events.exception = { injected: 1, nr: BP_VECTOR, hasErrorCode: 0, pending: 0, errorCode: 0 };
      events.flags = 0;
      vcpu.setVcpuEvents(events);
      break;
    }
    case 'skip':
      vcpu.setRegs({ ...regs, rip: regs.rip + BigInt(decision.length) });
      break;
    case 'clear-ac':
    case 'set-ac': {
      const rflags = decision.action === 'set-ac' ? regs.rflags | RFLAGS_AC : regs.rflags & ~RFLAGS_AC;
      vcpu.setRegs({ ...regs, rip: regs.rip + 3n, rflags });
      break;
    }
  }
  if (stats) stats[decision.mnemonic]++;
  return decision;
}
