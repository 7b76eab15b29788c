/**
 * An init that keeps a Linux guest up without making a single system call (guest user space
 * cannot make them on PVM hosts): a static x86-64 ELF that runs `pause; jmp .-2` forever at CPL 3.
 * The kernel's own work (interrupts, the network stack answering ARP and ping) goes on around it.
 *
 * @module
 */
import { cpioNewc } from '../vmm/cpio';

const BASE = 0x40_0000;
const EHDR = 64;
const PHDR = 56;

/**
 * The ELF: one PT_LOAD (R+X) of itself at 0x400000, entry right after the headers (124 bytes).
 *
 * @example
 * ```ts
 * import { writeFileSync } from 'node:fs';
 * writeFileSync('rootfs/sbin/loop', loopInitElf(), { mode: 0o755 }); // then init=/sbin/loop
 * ```
 */
export function loopInitElf(): Uint8Array {
  const code = [0xf3, 0x90, 0xeb, 0xfc]; // pause; jmp back to the pause
  const size = EHDR + PHDR + code.length;
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]); // ELF, 64-bit, little-endian, version 1, System V
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, 62, true); // EM_X86_64
  v.setUint32(20, 1, true); // EV_CURRENT
  v.setBigUint64(24, BigInt(BASE + EHDR + PHDR), true); // e_entry
  v.setBigUint64(32, BigInt(EHDR), true); // e_phoff
  v.setUint16(52, EHDR, true); // e_ehsize
  v.setUint16(54, PHDR, true); // e_phentsize
  v.setUint16(56, 1, true); // e_phnum
  const p = EHDR;
  v.setUint32(p, 1, true); // PT_LOAD
  v.setUint32(p + 4, 5, true); // PF_R | PF_X
  v.setBigUint64(p + 8, 0n, true); // p_offset
  v.setBigUint64(p + 16, BigInt(BASE), true); // p_vaddr
  v.setBigUint64(p + 24, BigInt(BASE), true); // p_paddr
  v.setBigUint64(p + 32, BigInt(size), true); // p_filesz
  v.setBigUint64(p + 40, BigInt(size), true); // p_memsz
  v.setBigUint64(p + 48, 0x1000n, true); // p_align
  b.set(code, EHDR + PHDR);
  return b;
}

/**
 * A newc initramfs with `/dev` and the looping `/init`.
 *
 * @example
 * ```ts
 * // @ts-setup: import { bootLinux } from 'kvm-rx'; declare const kernel: Uint8Array;
 * const vm = bootLinux({ kernel, initrd: loopInitramfs(), cmdline: 'console=ttyS0 ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off' });
 * ```
 */
export function loopInitramfs(): Uint8Array {
  return cpioNewc([
    { type: 'dir', path: 'dev' },
    { type: 'file', path: 'init', data: loopInitElf(), mode: 0o755 },
  ]);
}
