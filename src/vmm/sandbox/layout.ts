/**
 * The CPL-3 long-mode machine of a sandbox: GDT with ring-3 segments, a TSS, an IDT whose ring-0
 * handlers only report a fault to the host, page tables that keep those structures out of the
 * guest's reach, and the vCPU's registers (docs/sandbox.md).
 *
 * @module
 */
import type { KvmRegs, KvmSegment, KvmSregs } from '../../abi/layouts';
import { segmentFromGdt } from '../boot';
import { zeroFilledRegs } from '../regs';
import { SANDBOX_LAYOUT as L } from './abi';
import { RING0_CODE } from './ring0';

/** Selectors of the sandbox GDT (RPL included for the ring-3 ones). */
export const SANDBOX_SELECTORS = {
  kernelCode: 0x08,
  kernelData: 0x10,
  userData: 0x1b,
  userCode: 0x23,
  tss: 0x28,
} as const;

const GDT: readonly bigint[] = [
  0n,
  0x00af_9b00_0000_ffffn, // 0x08 ring-0 code, 64-bit
  0x00cf_9300_0000_ffffn, // 0x10 ring-0 data
  0x00cf_f300_0000_ffffn, // 0x18 ring-3 data
  0x00af_fb00_0000_ffffn, // 0x20 ring-3 code, 64-bit
  // 0x28 the 64-bit TSS (two entries): base L.tss, limit 0x67, type 9 (available), present
  0x0000_8900_0000_0067n | (BigInt(L.tss & 0xffffff) << 16n) | (BigInt((L.tss >>> 24) & 0xff) << 56n),
  0n,
];

/** Page-table entry bits. */
const P = 1n;
const RW = 2n;
const US = 4n;
const PS = 0x80n;

const CR0_PE = 0x1n;
const CR0_MP = 0x2n;
const CR0_ET = 0x10n;
const CR0_NE = 0x20n;
const CR0_WP = 0x1_0000n;
const CR0_PG = 0x8000_0000n;
const CR4_PAE = 0x20n;
const CR4_OSFXSR = 0x200n;
const CR4_OSXMMEXCPT = 0x400n;
const EFER_LME = 0x100n;
const EFER_LMA = 0x400n;

/** RFLAGS of a sandbox guest: IOPL 3 (port I/O from CPL 3 exits instead of faulting), bit 1. */
export const SANDBOX_RFLAGS = 0x3002n;

/** Exception vectors by number, for fault messages. */
export const EXCEPTION_NAMES: readonly string[] = [
  '#DE divide error',
  '#DB debug',
  'NMI',
  '#BP breakpoint',
  '#OF overflow',
  '#BR bound range',
  '#UD invalid opcode',
  '#NM device not available',
  '#DF double fault',
  'coprocessor segment overrun',
  '#TS invalid TSS',
  '#NP segment not present',
  '#SS stack fault',
  '#GP general protection',
  '#PF page fault',
  'vector 15',
  '#MF x87 floating point',
  '#AC alignment check',
  '#MC machine check',
  '#XM SIMD floating point',
  '#VE virtualization',
  '#CP control protection',
  ...Array.from({ length: 10 }, (_, i) => `vector ${22 + i}`),
];

/** What {@link writeSandboxSystem} writes, for checks: [address, bytes] pairs. */
export function sandboxSystemPages(memSize: number): Array<[number, Uint8Array]> {
  const gdt = new Uint8Array(8 * GDT.length);
  const g = new DataView(gdt.buffer);
  GDT.forEach((e, i) => g.setBigUint64(8 * i, e, true));

  const idt = new Uint8Array(16 * 32);
  const d = new DataView(idt.buffer);
  for (let v = 0; v < 32; v++) {
    const handler = BigInt(L.ring0Code + 16 * v);
    const ist = v === 8 ? 1n : 0n; // the double fault gets its own stack
    const low =
      (handler & 0xffffn) |
      (BigInt(SANDBOX_SELECTORS.kernelCode) << 16n) |
      (ist << 32n) |
      (0x8en << 40n) | // present, DPL 0, 64-bit interrupt gate: `int n` from CPL 3 is a #GP
      (((handler >> 16n) & 0xffffn) << 48n);
    d.setBigUint64(16 * v, low, true);
    d.setBigUint64(16 * v + 8, handler >> 32n, true);
  }

  const tss = new Uint8Array(0x68);
  const t = new DataView(tss.buffer);
  t.setBigUint64(4, BigInt(L.ring0StackTop), true); // RSP0
  t.setBigUint64(0x24, BigInt(L.istStackTop), true); // IST1
  t.setUint16(0x66, 0x68, true); // no I/O permission bitmap (IOPL 3 allows every port)

  const doorbellPd = new Uint8Array(0x1000);
  new DataView(doorbellPd.buffer).setBigUint64(0, BigInt(L.doorbell) | P | RW | US | PS, true);
  const pml4 = new Uint8Array(0x1000);
  const pdpt = new Uint8Array(0x1000);
  const pd = new Uint8Array(0x1000);
  const pt = new Uint8Array(0x1000);
  new DataView(pml4.buffer).setBigUint64(0, BigInt(L.pdpt) | P | RW | US, true);
  new DataView(pdpt.buffer).setBigUint64(0, BigInt(L.pd) | P | RW | US, true);
  new DataView(pdpt.buffer).setBigUint64(8, BigInt(L.doorbellPd) | P | RW | US, true); // 1–2 GiB
  const pdv = new DataView(pd.buffer);
  pdv.setBigUint64(0, BigInt(L.pt) | P | RW | US, true);
  for (let i = 1; i < memSize / 0x20_0000; i++) pdv.setBigUint64(8 * i, (BigInt(i) << 21n) | P | RW | US | PS, true);
  const ptv = new DataView(pt.buffer);
  // Page 0 and everything not listed stay unmapped. The ring-0 structures are supervisor pages.
  for (let a = L.gdt; a <= L.doorbellPd; a += 0x1000) ptv.setBigUint64(8 * (a >>> 12), BigInt(a) | P | RW, true);
  ptv.setBigUint64(8 * (L.tls >>> 12), BigInt(L.tls) | P | RW | US, true);

  const tls = new Uint8Array(0x1000);
  new DataView(tls.buffer).setBigUint64(0, BigInt(L.tls), true);

  return [
    [L.gdt, gdt],
    [L.idt, idt],
    [L.tss, tss],
    [L.faultRecord, new Uint8Array(0x1000)],
    [L.pml4, pml4],
    [L.pdpt, pdpt],
    [L.pd, pd],
    [L.pt, pt],
    [L.doorbellPd, doorbellPd],
    [L.ring0Code, RING0_CODE],
    [L.tls, tls],
  ];
}

/** Writes the ring-0 structures, the page tables and the thread block into guest RAM. */
export function writeSandboxSystem(bytes: Uint8Array, memSize: number): void {
  for (const [addr, data] of sandboxSystemPages(memSize)) bytes.set(data, addr);
}

function seg(index: number, selector: number, extra: Partial<KvmSegment> = {}): KvmSegment {
  return { ...segmentFromGdt(GDT[index], selector), ...extra };
}

/** `sregs` with the sandbox's long mode at CPL 3. */
export function sandboxSregs(sregs: KvmSregs): KvmSregs {
  const data = seg(3, SANDBOX_SELECTORS.userData);
  return {
    ...sregs,
    cs: seg(4, SANDBOX_SELECTORS.userCode),
    ss: { ...data },
    ds: { ...data },
    es: { ...data },
    fs: { ...data, base: BigInt(L.tls) },
    gs: { ...data },
    tr: seg(5, SANDBOX_SELECTORS.tss, { type: 11 }), // a loaded TSS is busy
    ldt: { ...sregs.ldt, selector: 0, present: 0, unusable: 1 },
    gdt: { ...sregs.gdt, base: BigInt(L.gdt), limit: 8 * GDT.length - 1 },
    idt: { ...sregs.idt, base: BigInt(L.idt), limit: 16 * 32 - 1 },
    cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
    cr3: BigInt(L.pml4),
    cr4: CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT,
    efer: EFER_LME | EFER_LMA,
  };
}

/** The registers at the guest's entry: RIP = `entry`, RSP = top of RAM, IOPL 3. */
export function sandboxRegs(entry: number, memSize: number): KvmRegs {
  return zeroFilledRegs({ rip: BigInt(entry), rsp: BigInt(memSize), rflags: SANDBOX_RFLAGS });
}
