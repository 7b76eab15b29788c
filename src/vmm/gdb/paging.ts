/**
 * Guest-virtual to guest-physical translation through an x86 vCPU's page tables, as the CPU
 * would walk them: no paging (CR0.PG = 0), 32-bit paging (4 MiB pages with CR4.PSE), PAE
 * (2 MiB pages), 4-level and 5-level long mode (2 MiB and 1 GiB pages). Every table entry is read
 * through `readPhys`, which must refuse addresses outside guest memory: a hostile guest's CR3 or
 * entries never make the walk read anything else.
 *
 * @module
 */
import { EFAULT, GdbTargetError } from './target';

/** The control registers a walk depends on. */
export interface PagingRegisters {
  cr0: bigint;
  cr3: bigint;
  cr4: bigint;
  efer: bigint;
}

/** Where a virtual address lands. */
export interface Translation {
  phys: bigint;
  /** Bytes from `phys` to the end of its page (a read crossing it needs another walk). */
  rest: number;
}

const CR0_PG = 1n << 31n;
const CR4_PSE = 1n << 4n;
const CR4_PAE = 1n << 5n;
const CR4_LA57 = 1n << 12n;
const EFER_LMA = 1n << 10n;
const PRESENT = 1n;
const PAGE_SIZE_BIT = 1n << 7n;
/** Bits 12–51 of an entry: the next table or the page frame. */
const ADDR_MASK = 0x000f_ffff_ffff_f000n;

function fault(va: bigint, why: string): never {
  throw new GdbTargetError(EFAULT, `virtual address 0x${va.toString(16)}: ${why}`);
}

/**
 * Translates `va`. `readPhys(gpa, 4 | 8)` returns the little-endian entry at `gpa` or throws for an
 * address outside guest memory (reported as an EFAULT naming the table).
 *
 * @example
 * ```ts
 * // @ts-setup: declare const mem: GuestMemoryMap; declare const sregs: KvmSregs;
 * const read = (gpa: bigint, n: 4 | 8) => { const b = mem.read(gpa, n); return n === 8 ? new DataView(b.buffer).getBigUint64(0, true) : BigInt(new DataView(b.buffer).getUint32(0, true)); };
 * const { phys } = translate(0xffffffff81000000n, sregs, read);
 * ```
 * @throws {@link GdbTargetError} EFAULT: not mapped (an entry not present), not canonical, or a
 *   table outside guest memory
 */
export function translate(va: bigint, r: PagingRegisters, readPhys: (gpa: bigint, size: 4 | 8) => bigint): Translation {
  const entry = (gpa: bigint, size: 4 | 8, level: string): bigint => {
    try {
      return readPhys(gpa, size);
    } catch {
      return fault(va, `its ${level} entry at guest-physical 0x${gpa.toString(16)} is outside guest memory`);
    }
  };
  const page = (base: bigint, bits: bigint): Translation => {
    const offset = va & ((1n << bits) - 1n);
    return { phys: base + offset, rest: Number((1n << bits) - offset) };
  };
  if ((r.cr0 & CR0_PG) === 0n) {
    if (va >= 1n << 32n) fault(va, 'above 4 GiB with paging off');
    return page(va & ~0xfffn, 12n);
  }
  if ((r.cr4 & CR4_PAE) === 0n) {
    // 32-bit paging: a page directory of 1024 4-byte entries, 4 KiB or (PSE) 4 MiB pages.
    if (va >= 1n << 32n) fault(va, 'above 4 GiB with 32-bit paging');
    const pde = entry((r.cr3 & 0xffff_f000n) + ((va >> 22n) & 0x3ffn) * 4n, 4, 'page directory');
    if ((pde & PRESENT) === 0n) fault(va, 'not mapped (page directory entry not present)');
    if ((pde & PAGE_SIZE_BIT) !== 0n && (r.cr4 & CR4_PSE) !== 0n) {
      const base = (pde & 0xffc0_0000n) | (((pde >> 13n) & 0xffn) << 32n);
      return page(base, 22n);
    }
    const pte = entry((pde & 0xffff_f000n) + ((va >> 12n) & 0x3ffn) * 4n, 4, 'page table');
    if ((pte & PRESENT) === 0n) fault(va, 'not mapped (page table entry not present)');
    return page(pte & 0xffff_f000n, 12n);
  }
  let table: bigint;
  let level: number;
  if ((r.efer & EFER_LMA) !== 0n) {
    const la57 = (r.cr4 & CR4_LA57) !== 0n;
    const bits = la57 ? 57n : 48n;
    const top = va >> (bits - 1n);
    if (top !== 0n && top !== (1n << (65n - bits)) - 1n) fault(va, 'not canonical');
    table = r.cr3 & ADDR_MASK;
    level = la57 ? 5 : 4;
  } else {
    // PAE without long mode: four PDPTEs at CR3 (32-byte aligned).
    if (va >= 1n << 32n) fault(va, 'above 4 GiB with PAE paging');
    const pdpte = entry((r.cr3 & 0xffff_ffe0n) + ((va >> 30n) & 3n) * 8n, 8, 'PDPT');
    if ((pdpte & PRESENT) === 0n) fault(va, 'not mapped (PDPT entry not present)');
    table = pdpte & ADDR_MASK;
    level = 2;
  }
  const names = ['', 'page table', 'page directory', 'PDPT', 'PML4', 'PML5'];
  for (; level >= 1; level--) {
    const shift = BigInt(12 + 9 * (level - 1));
    const e = entry(table + ((va >> shift) & 0x1ffn) * 8n, 8, names[level]);
    if ((e & PRESENT) === 0n) fault(va, `not mapped (${names[level]} entry not present)`);
    if (level === 1) return page(e & ADDR_MASK, 12n);
    if ((e & PAGE_SIZE_BIT) !== 0n && (level === 2 || level === 3)) {
      return page(e & ADDR_MASK & ~((1n << shift) - 1n), shift);
    }
    table = e & ADDR_MASK;
  }
  return fault(va, 'unreachable');
}
