/**
 * The x86 parts of the GDB stub without KVM: the page walk (every paging mode, large pages,
 * faults, tables outside guest memory), the register block and the watchpoint splitting.
 */
import type { KvmFpu, KvmRegs } from '../../src/abi/layouts';
import { alignedPieces } from '../../src/vmm/gdb/kvm-target';
import { translate, type PagingRegisters } from '../../src/vmm/gdb/paging';
import { GdbTargetError } from '../../src/vmm/gdb/target';
import {
  X86_64_G_BYTES,
  X86_64_REGISTERS,
  X86_64_TARGET_XML,
  fullTagWord,
  readX86Register,
  readX86Registers,
  writeX86Register,
  writeX86Registers,
  type X86State,
} from '../../src/vmm/gdb/x86-64';

/** Sparse guest memory of 16 MiB: reads outside it throw, as GuestMemoryMap does. */
class Phys {
  readonly bytes = new Uint8Array(16 << 20);
  readonly view = new DataView(this.bytes.buffer);
  set(gpa: number, value: bigint, size: 4 | 8 = 8): void {
    if (size === 8) this.view.setBigUint64(gpa, value, true);
    else this.view.setUint32(gpa, Number(value), true);
  }
  read = (gpa: bigint, size: 4 | 8): bigint => {
    if (gpa < 0n || gpa + BigInt(size) > BigInt(this.bytes.length)) throw new RangeError('outside');
    return size === 8 ? this.view.getBigUint64(Number(gpa), true) : BigInt(this.view.getUint32(Number(gpa), true));
  };
}

const LONG: PagingRegisters = { cr0: 0x8000_0011n, cr3: 0x1000n, cr4: 0x20n, efer: 0x500n };
const P = 1n;
const RW = 2n;
const PS = 0x80n;

function expectFault(fn: () => unknown, text: RegExp): void {
  let e: unknown;
  try {
    fn();
  } catch (x) {
    e = x;
  }
  expect(e).toBeInstanceOf(GdbTargetError);
  expect((e as GdbTargetError).errno).toBe(14);
  expect((e as Error).message).toMatch(text);
}

describe('translate (guest-virtual to guest-physical)', () => {
  it('paging off: the address itself, below 4 GiB', () => {
    const m = new Phys();
    expect(translate(0x1234n, { ...LONG, cr0: 0x11n }, m.read)).toEqual({ phys: 0x1234n, rest: 0x1000 - 0x234 });
    expectFault(() => translate(1n << 32n, { ...LONG, cr0: 0x11n }, m.read), /above 4 GiB/);
  });

  it('4-level: 4 KiB, 2 MiB and 1 GiB pages, higher-half addresses', () => {
    const m = new Phys();
    const va = 0xffff_ffff_8123_4567n; // PML4 511, PDPT 510, PD 9, PT 0x34
    m.set(0x1000 + 511 * 8, 0x2000n | P | RW);
    m.set(0x2000 + 510 * 8, 0x3000n | P | RW);
    m.set(0x3000 + 9 * 8, 0x4000n | P | RW);
    m.set(0x4000 + 0x34 * 8, 0x0055_5000n | P);
    expect(translate(va, LONG, m.read)).toEqual({ phys: 0x0055_5567n, rest: 0x1000 - 0x567 });
    m.set(0x3000 + 9 * 8, 0x0060_0000n | P | PS); // a 2 MiB page
    expect(translate(va, LONG, m.read)).toEqual({ phys: 0x0060_0000n + 0x3_4567n, rest: 0x20_0000 - 0x3_4567 });
    m.set(0x2000 + 510 * 8, 0x4000_0000n | P | PS); // a 1 GiB page
    expect(translate(va, LONG, m.read).phys).toBe(0x4000_0000n + 0x0123_4567n);
  });

  it('5-level with CR4.LA57', () => {
    const m = new Phys();
    const r = { ...LONG, cr4: 0x20n | (1n << 12n) };
    const va = (1n << 48n) | (2n << 39n) | (1n << 12n); // PML5 1, PML4 2, PDPT 0, PD 0, PT 1
    m.set(0x1000 + 1 * 8, 0x2000n | P);
    m.set(0x2000 + 2 * 8, 0x3000n | P);
    m.set(0x3000, 0x4000n | P);
    m.set(0x4000, 0x5000n | P);
    m.set(0x5000 + 8, 0x7000n | P);
    expect(translate(va, r, m.read).phys).toBe(0x7000n);
    expectFault(() => translate(va, LONG, m.read), /not canonical/); // not canonical with 4 levels
  });

  it('PAE without long mode, and 32-bit paging with 4 MiB pages', () => {
    const m = new Phys();
    const pae = { cr0: 0x8000_0011n, cr3: 0x1000n, cr4: 0x20n, efer: 0n };
    m.set(0x1000 + 3 * 8, 0x2000n | P); // PDPTE 3
    m.set(0x2000 + 0x1ff * 8, 0x0080_0000n | P | PS);
    expect(translate(0xffff_f123n, pae, m.read).phys).toBe(0x0080_0000n + 0x1f_f123n);
    const legacy = { cr0: 0x8000_0011n, cr3: 0x3000n, cr4: 0x10n, efer: 0n };
    m.set(0x3000 + 0x300 * 4, 0x0040_0000n | P | PS, 4);
    expect(translate(0xc012_3456n, legacy, m.read).phys).toBe(0x0052_3456n);
    m.set(0x3000 + 0x301 * 4, 0x5000n | P, 4); // a page table
    m.set(0x5000 + 2 * 4, 0x0099_9000n | P, 4);
    expect(translate(0xc040_2abcn, legacy, m.read).phys).toBe(0x0099_9abcn);
  });

  it('faults name the level; tables outside guest memory are never read', () => {
    const m = new Phys();
    expectFault(() => translate(0x1000n, LONG, m.read), /PML4 entry not present/);
    m.set(0x1000, 0x7fff_ffff_f000n | P); // a PDPT far outside guest memory
    expectFault(() => translate(0x1000n, LONG, m.read), /PDPT entry at guest-physical 0x7ffffffff000 is outside/);
    expectFault(() => translate(0x1000n, { ...LONG, cr3: 0xffff_ffff_f000n }, m.read), /PML4 entry .* outside/);
    expectFault(() => translate(0x8000_0000_0000n, LONG, m.read), /not canonical/);
  });
});

describe('x86-64 registers for gdb', () => {
  const regs = (): KvmRegs => ({
    rax: 1n,
    rbx: 2n,
    rcx: 3n,
    rdx: 4n,
    rsi: 5n,
    rdi: 6n,
    rsp: 0x7000n,
    rbp: 0x7100n,
    r8: 8n,
    r9: 9n,
    r10: 10n,
    r11: 11n,
    r12: 12n,
    r13: 13n,
    r14: 14n,
    r15: 0xffff_ffff_ffff_ffffn,
    rip: 0xffff_ffff_8100_0000n,
    rflags: 0x246n,
  });
  const seg = (selector: number, base = 0n) => ({
    base,
    limit: 0xffff_ffff,
    selector,
    type: 11,
    present: 1,
    dpl: 0,
    db: 0,
    s: 1,
    l: 1,
    g: 1,
    avl: 0,
    unusable: 0,
  });
  const state = (): X86State => ({
    regs: regs(),
    sregs: {
      cs: seg(0x10),
      ds: seg(0x18),
      es: seg(0x18),
      fs: seg(0, 0xabc0n),
      gs: seg(0, 0xdef0n),
      ss: seg(0x18),
      tr: seg(0x20),
      ldt: seg(0),
      gdt: { base: 0x500n, limit: 39 },
      idt: { base: 0n, limit: 0 },
      cr0: 0x8005_0033n,
      cr2: 0x1234n,
      cr3: 0x1b0_3000n,
      cr4: 0x20n,
      cr8: 0n,
      efer: 0xd01n,
      apicBase: 0xfee0_0900n,
      interruptBitmap: [0n, 0n, 0n, 0n],
    },
    fpu: {
      fpr: new Uint8Array(128),
      fcw: 0x37f,
      fsw: 0,
      ftwx: 0,
      lastOpcode: 0,
      lastIp: 0n,
      lastDp: 0n,
      xmm: new Uint8Array(256).map((_, i) => i),
      mxcsr: 0x1f80,
    } satisfies KvmFpu,
  });
  const num = (name: string) => X86_64_REGISTERS.findIndex((r) => r.name === name);
  const le = (b: Uint8Array) => Buffer.from(b).readBigUInt64LE(0);

  it('lays out the g block as the description numbers it', () => {
    const s = state();
    const g = readX86Registers(s);
    expect(g.length).toBe(X86_64_G_BYTES);
    expect(X86_64_G_BYTES).toBe(16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4 + 2 * 8 + 6 * 8);
    expect(num('rip')).toBe(16);
    expect(le(readX86Register(s, num('rip'))!)).toBe(0xffff_ffff_8100_0000n);
    expect(le(readX86Register(s, num('rsp'))!)).toBe(0x7000n);
    expect(Array.from(readX86Register(s, num('eflags'))!)).toEqual([0x46, 0x02, 0, 0]);
    expect(Array.from(readX86Register(s, num('cs'))!)).toEqual([0x10, 0, 0, 0]);
    expect(le(readX86Register(s, num('fs_base'))!)).toBe(0xabc0n);
    expect(le(readX86Register(s, num('cr3'))!)).toBe(0x1b0_3000n);
    expect(le(readX86Register(s, num('efer'))!)).toBe(0xd01n);
    expect(readX86Register(s, num('xmm1'))![0]).toBe(16);
    expect(readX86Register(s, 999)).toBeUndefined();
    for (const r of X86_64_REGISTERS) expect(X86_64_TARGET_XML).toContain(`<reg name="${r.name}" bitsize="${r.bits}"`);
    expect(X86_64_TARGET_XML).toContain('<architecture>i386:x86-64</architecture>');
  });

  it('writes registers back into the KVM structs, part by part', () => {
    const s = state();
    expect(writeX86Register(s, num('rip'), Buffer.from(BigUint64Array.of(0x1000n).buffer))).toBe('regs');
    expect(s.regs.rip).toBe(0x1000n);
    expect(writeX86Register(s, num('cr0'), Buffer.from(BigUint64Array.of(0x11n).buffer))).toBe('sregs');
    expect(s.sregs.cr0).toBe(0x11n);
    expect(writeX86Register(s, num('ss'), Uint8Array.of(0x2b, 0, 0, 0))).toBe('sregs');
    expect(s.sregs.ss.selector).toBe(0x2b);
    expect(writeX86Register(s, num('mxcsr'), Uint8Array.of(0x80, 0x1f, 0, 0))).toBe('fpu');
    expect(writeX86Register(s, num('rip'), Uint8Array.of(1))).toBeUndefined(); // wrong size
    expect(writeX86Register(s, 999, Uint8Array.of(1))).toBeUndefined();
    const g = readX86Registers(s);
    g[0] = 0x99; // rax
    const parts = writeX86Registers(s, g)!;
    expect([...parts]).toEqual(['regs']);
    expect(s.regs.rax).toBe(0x99n);
    expect(writeX86Registers(s, g.subarray(1))).toBeUndefined();
    expect(writeX86Register({ ...s, fpu: undefined }, num('xmm0'), new Uint8Array(16))).toBeUndefined();
  });

  it('turns the abridged x87 tag into the full one', () => {
    const fpu = state().fpu!;
    expect(fullTagWord(fpu)).toBe(0xffff); // all empty
    fpu.ftwx = 0x01; // physical register 0 in use, TOP = 0: ST0
    fpu.fpr.set([0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f], 0); // 1.0
    expect(fullTagWord(fpu)).toBe(0xfffc); // valid
    fpu.fpr.fill(0, 0, 10);
    expect(fullTagWord(fpu)).toBe(0xfffd); // zero
  });

  it('splits a watched range into aligned pieces of 1, 2, 4 and 8 bytes', () => {
    expect(alignedPieces(0x1000n, 8)).toEqual([{ addr: 0x1000n, len: 8 }]);
    expect(alignedPieces(0x1001n, 4)).toEqual([
      { addr: 0x1001n, len: 1 },
      { addr: 0x1002n, len: 2 },
      { addr: 0x1004n, len: 1 },
    ]);
    expect(alignedPieces(0x1000n, 12)).toEqual([
      { addr: 0x1000n, len: 8 },
      { addr: 0x1008n, len: 4 },
    ]);
  });
});
