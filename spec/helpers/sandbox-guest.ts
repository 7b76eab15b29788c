/**
 * Sandbox guests for the specs: the SDK's example guest and the Duktape guest, built (or taken
 * from the cache) by scripts/sandbox-guest.sh, which installs gcc, duktape-dev and musl-dev when
 * it may (root with apt-get). A spec that needs one is skipped, with the reason in its title,
 * only when the guest cannot be built here; and a raw ELF writer for hostile guests.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeKvm, kvmAvailable } from './kvm';

const SCRIPT = join(__dirname, '../../scripts/sandbox-guest.sh');

function build(guest: 'hello' | 'duktape'): { image: Uint8Array } | { reason: string } {
  const r = spawnSync('bash', [SCRIPT, guest], { encoding: 'utf8', timeout: 600_000 });
  const path = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status === 0 && existsSync(path)) return { image: readFileSync(path) };
  const why = r.stderr.trim().split('\n').slice(-3).join(' / ') || `exit status ${r.status}`;
  return { reason: `the ${guest} sandbox guest could not be built: ${why}` };
}

const builds = new Map<string, { image: Uint8Array } | { reason: string }>();

/** The guest's ELF, built on first use, or why it cannot be. */
export function sandboxGuest(guest: 'hello' | 'duktape'): { image: Uint8Array } | { reason: string } {
  let b = builds.get(guest);
  if (b === undefined) {
    b = kvmAvailable.ok ? build(guest) : { reason: 'no KVM' };
    builds.set(guest, b);
  }
  return b;
}

/** `describeKvm` for specs that run a sandbox guest: skipped with the reason where it cannot be built. */
export function describeSandbox(name: string, guest: 'hello' | 'duktape', fn: (image: Uint8Array) => void): void {
  if (!kvmAvailable.ok) {
    describeKvm(name, () => fn(new Uint8Array()));
    return;
  }
  const b = sandboxGuest(guest);
  if ('image' in b) {
    const image = b.image;
    describeKvm(name, () => fn(image));
  } else {
    console.warn(`${name}: skipped: ${b.reason}`);
    describe.skip(`${name} [skipped: ${b.reason}]`, () => fn(new Uint8Array()));
  }
}

/**
 * A minimal static ELF: one PT_LOAD (RWX) at 0x400000 holding the headers and `code`, entered at
 * the code (0x400078), with `bss` zero bytes after it.
 */
export function rawElf(code: Uint8Array, bss = 0): Uint8Array {
  const base = 0x400000n;
  const size = 0x78 + code.length;
  const elf = new Uint8Array(size);
  const v = new DataView(elf.buffer);
  elf.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  v.setUint16(0x10, 2, true); // ET_EXEC
  v.setUint16(0x12, 62, true); // x86-64
  v.setUint32(0x14, 1, true);
  v.setBigUint64(0x18, base + 0x78n, true); // e_entry
  v.setBigUint64(0x20, 0x40n, true); // e_phoff
  v.setUint16(0x34, 0x40, true);
  v.setUint16(0x36, 56, true);
  v.setUint16(0x38, 1, true);
  v.setUint32(0x40, 1, true); // PT_LOAD
  v.setUint32(0x44, 7, true); // RWX
  v.setBigUint64(0x48, 0n, true);
  v.setBigUint64(0x50, base, true);
  v.setBigUint64(0x58, base, true);
  v.setBigUint64(0x60, BigInt(size), true);
  v.setBigUint64(0x68, BigInt(size + bss), true);
  v.setBigUint64(0x70, 0x1000n, true);
  elf.set(code, 0x78);
  return elf;
}

/** x86-64 machine code pieces for hostile guests. */
export const asm = {
  /** mov $imm32, %eax */
  movEax: (imm: number) => [0xb8, ...le32(imm)],
  /** mov $imm32, %ecx */
  movEcx: (imm: number) => [0xb9, ...le32(imm)],
  /** mov $imm32, %edi */
  movEdi: (imm: number) => [0xbf, ...le32(imm)],
  /** mov $imm32, %esi */
  movEsi: (imm: number) => [0xbe, ...le32(imm)],
  /** rep movsb */
  repMovsb: () => [0xf3, 0xa4],
  /** mov %eax, abs32 */
  storeEax: (addr: number) => [0x89, 0x04, 0x25, ...le32(addr)],
  /** mov abs32, %eax */
  loadEax: (addr: number) => [0x8b, 0x04, 0x25, ...le32(addr)],
  /** mov %al, abs32 */
  storeAl: (addr: number) => [0x88, 0x04, 0x25, ...le32(addr)],
  /** mov $imm16, %dx; out %eax, %dx */
  outDx: (port: number) => [0x66, 0xba, port & 0xff, port >>> 8, 0xef],
  /** mov $imm16, %dx; in %dx, %eax */
  inDx: (port: number) => [0x66, 0xba, port & 0xff, port >>> 8, 0xed],
  /** jmp $ */
  spin: () => [0xeb, 0xfe],
  /** hlt (a #GP at CPL 3) */
  hlt: () => [0xf4],
};

function le32(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
}
