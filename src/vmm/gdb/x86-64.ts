/**
 * The x86-64 registers as the stub shows them to gdb: the target description (the features gdb's
 * amd64 architecture expects: `org.gnu.gdb.i386.core`, `.sse`, `.segments`, plus the control
 * registers in a feature of kvm-rx's own) and their values read from and written to KVM's
 * `kvm_regs`, `kvm_sregs` and `kvm_fpu`.
 *
 * @module
 */
import type { KvmFpu, KvmRegs, KvmSregs } from '../../abi/layouts';

/** One register of the description, in gdb's numbering (its place in the list). */
export interface X86Register {
  name: string;
  bits: 32 | 64 | 80 | 128;
  type: string;
  group?: 'general' | 'float' | 'vector' | 'system';
  feature: 'core' | 'sse' | 'segments' | 'system';
}

const GPRS = [
  'rax',
  'rbx',
  'rcx',
  'rdx',
  'rsi',
  'rdi',
  'rbp',
  'rsp',
  ...Array.from({ length: 8 }, (_, i) => `r${i + 8}`),
];
const SEGS = ['cs', 'ss', 'ds', 'es', 'fs', 'gs'] as const;
const X87_CTRL = ['fctrl', 'fstat', 'ftag', 'fiseg', 'fioff', 'foseg', 'fooff', 'fop'];
const CONTROL = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer'] as const;

/** The registers in gdb's order: what `g` carries and what `p`/`P` number. */
export const X86_64_REGISTERS: readonly X86Register[] = [
  ...GPRS.map((name): X86Register => ({
    name,
    bits: 64,
    type: name === 'rbp' || name === 'rsp' ? 'data_ptr' : 'int64',
    feature: 'core',
  })),
  { name: 'rip', bits: 64, type: 'code_ptr', feature: 'core' },
  { name: 'eflags', bits: 32, type: 'i386_eflags', feature: 'core' },
  ...SEGS.map((name): X86Register => ({ name, bits: 32, type: 'int32', feature: 'core' })),
  ...Array.from({ length: 8 }, (_, i): X86Register => ({
    name: `st${i}`,
    bits: 80,
    type: 'i387_ext',
    feature: 'core',
  })),
  ...X87_CTRL.map((name): X86Register => ({ name, bits: 32, type: 'int', group: 'float', feature: 'core' })),
  ...Array.from({ length: 16 }, (_, i): X86Register => ({
    name: `xmm${i}`,
    bits: 128,
    type: 'vec128',
    feature: 'sse',
  })),
  { name: 'mxcsr', bits: 32, type: 'i386_mxcsr', group: 'vector', feature: 'sse' },
  { name: 'fs_base', bits: 64, type: 'int', feature: 'segments' },
  { name: 'gs_base', bits: 64, type: 'int', feature: 'segments' },
  ...CONTROL.map((name): X86Register => ({ name, bits: 64, type: 'int', group: 'system', feature: 'system' })),
];

/** gdb's number of `rip`. */
export const RIP_REGNUM = 16;

const FEATURE_NAMES = {
  core: 'org.gnu.gdb.i386.core',
  sse: 'org.gnu.gdb.i386.sse',
  segments: 'org.gnu.gdb.i386.segments',
  system: 'org.kvm-rx.x86.control',
} as const;

const CORE_TYPES = `    <flags id="i386_eflags" size="4">
      <field name="CF" start="0" end="0"/><field name="" start="1" end="1"/><field name="PF" start="2" end="2"/>
      <field name="AF" start="4" end="4"/><field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
      <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/><field name="DF" start="10" end="10"/>
      <field name="OF" start="11" end="11"/><field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
      <field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/><field name="VIF" start="19" end="19"/>
      <field name="VIP" start="20" end="20"/><field name="ID" start="21" end="21"/>
    </flags>
`;

const SSE_TYPES = `    <vector id="v4f" type="ieee_single" count="4"/>
    <vector id="v2d" type="ieee_double" count="2"/>
    <vector id="v16i8" type="int8" count="16"/>
    <vector id="v8i16" type="int16" count="8"/>
    <vector id="v4i32" type="int32" count="4"/>
    <vector id="v2i64" type="int64" count="2"/>
    <union id="vec128">
      <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
      <field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/>
      <field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/>
    </union>
    <flags id="i386_mxcsr" size="4">
      <field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/><field name="ZE" start="2" end="2"/>
      <field name="OE" start="3" end="3"/><field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
      <field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/><field name="DM" start="8" end="8"/>
      <field name="ZM" start="9" end="9"/><field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
      <field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
    </flags>
`;

function describe(): string {
  const lines = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', '<target version="1.0">'];
  lines.push('  <architecture>i386:x86-64</architecture>');
  for (const feature of ['core', 'sse', 'segments', 'system'] as const) {
    lines.push(`  <feature name="${FEATURE_NAMES[feature]}">`);
    if (feature === 'core') lines.push(CORE_TYPES.trimEnd());
    if (feature === 'sse') lines.push(SSE_TYPES.trimEnd());
    X86_64_REGISTERS.forEach((r, n) => {
      if (r.feature !== feature) return;
      const group = r.group ? ` group="${r.group}"` : '';
      lines.push(`    <reg name="${r.name}" bitsize="${r.bits}" type="${r.type}" regnum="${n}"${group}/>`);
    });
    lines.push('  </feature>');
  }
  lines.push('</target>', '');
  return lines.join('\n');
}

/** The target description gdb reads with `qXfer:features:read:target.xml`. */
export const X86_64_TARGET_XML = describe();

/** Byte offsets of each register in the `g` packet, and its total length. */
const OFFSETS: number[] = [];
let total = 0;
for (const r of X86_64_REGISTERS) {
  OFFSETS.push(total);
  total += r.bits / 8;
}
/** Bytes of the `g` packet's register block. */
export const X86_64_G_BYTES = total;

/** A vCPU's state as read while it is paused. */
export interface X86State {
  regs: KvmRegs;
  sregs: KvmSregs;
  /** `undefined` where the host gives no FPU state: those registers read as zeros and refuse writes. */
  fpu: KvmFpu | undefined;
}

const u64 = (v: bigint, bytes = 8): Uint8Array => {
  const out = new Uint8Array(bytes);
  let x = BigInt.asUintN(bytes * 8, v);
  for (let i = 0; i < bytes; i++) {
    out[i] = Number(x & 0xffn);
    x >>= 8n;
  }
  return out;
};
const readLe = (b: Uint8Array): bigint => {
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
  return v;
};

/** The x87 tag word gdb shows (2 bits per physical register) from FXSAVE's abridged one. */
export function fullTagWord(fpu: KvmFpu): number {
  const top = (fpu.fsw >> 11) & 7;
  let tag = 0;
  for (let phys = 0; phys < 8; phys++) {
    let t = 3; // empty
    if ((fpu.ftwx >> phys) & 1) {
      const st = (phys - top) & 7;
      const r = fpu.fpr.subarray(st * 16, st * 16 + 10);
      const exp = (r[8] | (r[9] << 8)) & 0x7fff;
      const mant = readLe(r.subarray(0, 8));
      if (exp === 0x7fff) t = 2;
      else if (exp === 0) t = mant === 0n ? 1 : 2;
      else t = mant >> 63n === 1n ? 0 : 2;
    }
    tag |= t << (2 * phys);
  }
  return tag;
}

/** The bytes of register `n`, or `undefined` when there is no such register. */
export function readX86Register(s: X86State, n: number): Uint8Array | undefined {
  const r = X86_64_REGISTERS[n];
  if (r === undefined) return undefined;
  const { regs, sregs, fpu } = s;
  if (n < 16) return u64(regs[r.name as keyof KvmRegs]);
  if (r.name === 'rip') return u64(regs.rip);
  if (r.name === 'eflags') return u64(regs.rflags, 4);
  if ((SEGS as readonly string[]).includes(r.name))
    return u64(BigInt(sregs[r.name as (typeof SEGS)[number]].selector), 4);
  if (r.name === 'fs_base') return u64(sregs.fs.base);
  if (r.name === 'gs_base') return u64(sregs.gs.base);
  if ((CONTROL as readonly string[]).includes(r.name)) return u64(sregs[r.name as (typeof CONTROL)[number]]);
  if (fpu === undefined) return new Uint8Array(r.bits / 8);
  if (r.name.startsWith('st')) {
    const i = Number(r.name.slice(2));
    return fpu.fpr.slice(i * 16, i * 16 + 10);
  }
  if (r.name.startsWith('xmm')) {
    const i = Number(r.name.slice(3));
    return fpu.xmm.slice(i * 16, i * 16 + 16);
  }
  switch (r.name) {
    case 'fctrl':
      return u64(BigInt(fpu.fcw), 4);
    case 'fstat':
      return u64(BigInt(fpu.fsw), 4);
    case 'ftag':
      return u64(BigInt(fullTagWord(fpu)), 4);
    case 'fiseg':
      return u64((fpu.lastIp >> 32n) & 0xffffn, 4);
    case 'fioff':
      return u64(fpu.lastIp & 0xffff_ffffn, 4);
    case 'foseg':
      return u64((fpu.lastDp >> 32n) & 0xffffn, 4);
    case 'fooff':
      return u64(fpu.lastDp & 0xffff_ffffn, 4);
    case 'fop':
      return u64(BigInt(fpu.lastOpcode & 0x7ff), 4);
    case 'mxcsr':
      return u64(BigInt(fpu.mxcsr), 4);
  }
  return undefined;
}

/** Every register, as the `g` packet carries them. */
export function readX86Registers(s: X86State): Uint8Array {
  const out = new Uint8Array(X86_64_G_BYTES);
  X86_64_REGISTERS.forEach((_, n) => out.set(readX86Register(s, n)!, OFFSETS[n]));
  return out;
}

/** Which part of the state a write changed (what must go back to KVM). */
export type X86Part = 'regs' | 'sregs' | 'fpu';

/**
 * Writes register `n` into `s` (the objects are changed in place); returns the part changed, or
 * `undefined` for a register that does not exist or a value of the wrong size. A segment register
 * write changes the selector only (not the hidden base, limit and attributes).
 */
export function writeX86Register(s: X86State, n: number, bytes: Uint8Array): X86Part | undefined {
  const r = X86_64_REGISTERS[n];
  if (r === undefined || bytes.length !== r.bits / 8) return undefined;
  const v = readLe(bytes);
  const { regs, sregs, fpu } = s;
  if (n < 16 || r.name === 'rip') {
    regs[r.name as keyof KvmRegs] = v;
    return 'regs';
  }
  if (r.name === 'eflags') {
    regs.rflags = (regs.rflags & ~0xffff_ffffn) | v;
    return 'regs';
  }
  if ((SEGS as readonly string[]).includes(r.name)) {
    sregs[r.name as (typeof SEGS)[number]].selector = Number(v & 0xffffn);
    return 'sregs';
  }
  if (r.name === 'fs_base' || r.name === 'gs_base') {
    sregs[r.name === 'fs_base' ? 'fs' : 'gs'].base = v;
    return 'sregs';
  }
  if ((CONTROL as readonly string[]).includes(r.name)) {
    sregs[r.name as (typeof CONTROL)[number]] = v;
    return 'sregs';
  }
  if (fpu === undefined) return undefined;
  if (r.name.startsWith('st')) {
    fpu.fpr.set(bytes, Number(r.name.slice(2)) * 16);
    return 'fpu';
  }
  if (r.name.startsWith('xmm')) {
    fpu.xmm.set(bytes, Number(r.name.slice(3)) * 16);
    return 'fpu';
  }
  const n32 = Number(v & 0xffff_ffffn);
  switch (r.name) {
    case 'fctrl':
      fpu.fcw = n32 & 0xffff;
      break;
    case 'fstat':
      fpu.fsw = n32 & 0xffff;
      break;
    case 'ftag': {
      let abridged = 0;
      for (let phys = 0; phys < 8; phys++) if (((n32 >> (2 * phys)) & 3) !== 3) abridged |= 1 << phys;
      fpu.ftwx = abridged;
      break;
    }
    case 'fiseg':
      fpu.lastIp = (fpu.lastIp & 0xffff_ffffn) | (BigInt(n32 & 0xffff) << 32n);
      break;
    case 'fioff':
      fpu.lastIp = (fpu.lastIp & ~0xffff_ffffn) | BigInt(n32);
      break;
    case 'foseg':
      fpu.lastDp = (fpu.lastDp & 0xffff_ffffn) | (BigInt(n32 & 0xffff) << 32n);
      break;
    case 'fooff':
      fpu.lastDp = (fpu.lastDp & ~0xffff_ffffn) | BigInt(n32);
      break;
    case 'fop':
      fpu.lastOpcode = n32 & 0x7ff;
      break;
    case 'mxcsr':
      fpu.mxcsr = n32;
      break;
  }
  return 'fpu';
}

/** Writes a whole `g` block into `s`; returns the parts changed, or `undefined` for a block of the wrong size. */
export function writeX86Registers(s: X86State, bytes: Uint8Array): Set<X86Part> | undefined {
  if (bytes.length !== X86_64_G_BYTES) return undefined;
  const parts = new Set<X86Part>();
  X86_64_REGISTERS.forEach((r, n) => {
    const slice = bytes.subarray(OFFSETS[n], OFFSETS[n] + r.bits / 8);
    const before = readX86Register(s, n)!;
    if (Buffer.compare(before, slice) === 0) return; // unchanged: leave what gdb could not have meant to set
    const part = writeX86Register(s, n, slice);
    if (part) parts.add(part);
  });
  return parts;
}
