/**
 * ELF64 kernel images (an uncompressed `vmlinux`): the PT_LOAD segments at their physical
 * addresses and the 64-bit entry point, as Firecracker-style direct boot uses them.
 *
 * @module
 */
import { badKernel, hex, unsupportedKernel } from './errors';

/** `EM_X86_64`. */
export const EM_X86_64 = 62;
const PT_LOAD = 1;
const PT_NOTE = 4;
const EHDR_SIZE = 64;
const PHDR_SIZE = 56;
/** `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH 32-bit entry point. */
const XEN_ELFNOTE_PHYS32_ENTRY = 18;
/** Physical addresses above this are refused (52-bit physical address space). */
const MAX_PADDR = 2 ** 52;

/** One PT_LOAD program header. */
export interface ElfSegment {
  /** Where it is loaded (guest physical address). */
  paddr: number;
  /** Its virtual address (informational: the kernel maps itself). */
  vaddr: bigint;
  /** File offset of its bytes. */
  offset: number;
  /** Bytes taken from the file. */
  filesz: number;
  /** Bytes in memory (`memsz - filesz` are zeroed). */
  memsz: number;
  /** `PF_X` (1) | `PF_W` (2) | `PF_R` (4). */
  flags: number;
}

/** A parsed ELF64 kernel. */
export interface ElfKernel {
  /** The 64-bit entry point as a guest physical address (`e_entry`, translated when virtual). */
  entry: number;
  /** `e_entry` as written in the file. */
  rawEntry: bigint;
  /** PT_LOAD segments in file order. */
  segments: ElfSegment[];
  /** The lowest guest physical address loaded. */
  lowAddress: number;
  /** One past the highest guest physical address loaded (end of BSS). */
  highAddress: number;
  /** The Xen PVH 32-bit entry (`XEN_ELFNOTE_PHYS32_ENTRY`), when the image has one. */
  pvhEntry?: number;
}

/** Whether `image` starts with the ELF magic (`\x7fELF`). */
export function isElf(image: Uint8Array): boolean {
  return image.length >= 4 && image[0] === 0x7f && image[1] === 0x45 && image[2] === 0x4c && image[3] === 0x46;
}

function u64(view: DataView, at: number, what: string): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) badKernel(`${what} ${hex(v)} is too large`);
  return Number(v);
}

/**
 * Parses an ELF64 x86-64 kernel (`vmlinux`) without loading it.
 *
 * Checks the magic, class (64-bit), data encoding (little endian), version, type
 * (ET_EXEC/ET_DYN), machine (x86-64), the program header table bounds, that every PT_LOAD lies
 * inside the file with `filesz <= memsz`, that PT_LOADs do not overlap in physical memory, and that
 * the entry point falls inside a loaded segment.
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * const k = parseElf(readFileSync('vmlinux'));
 * k.entry; // 0x1000000 for a Debian vmlinux
 * ```
 * @throws {@link BootImageError} `ERR_KVM_BAD_KERNEL` naming what is wrong;
 *   `ERR_KVM_UNSUPPORTED_KERNEL` for a valid ELF that is not a 64-bit x86 kernel
 */
export function parseElf(image: Uint8Array): ElfKernel {
  if (image.length < 4 || !isElf(image)) {
    const got = Array.from(image.subarray(0, 4), (b) => b.toString(16).padStart(2, '0')).join(' ');
    badKernel(`not an ELF file (magic ${got || 'missing'}, expected 7f 45 4c 46)`);
  }
  if (image.length < EHDR_SIZE)
    badKernel(`ELF header truncated: the file has ${image.length} bytes, the header needs ${EHDR_SIZE}`);
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const cls = image[4];
  if (cls !== 2)
    unsupportedKernel(
      `ELF class ${cls} (${cls === 1 ? '32-bit' : 'invalid'}); a 64-bit vmlinux (ELFCLASS64) is needed`,
    );
  if (image[5] !== 1) badKernel(`ELF data encoding ${image[5]}; x86-64 kernels are little endian (ELFDATA2LSB = 1)`);
  if (image[6] !== 1) badKernel(`ELF version ${image[6]} (expected 1)`);
  const type = view.getUint16(0x10, true);
  if (type !== 2 && type !== 3) badKernel(`ELF type ${type} is not an executable (ET_EXEC = 2 or ET_DYN = 3)`);
  const machine = view.getUint16(0x12, true);
  if (machine !== EM_X86_64)
    unsupportedKernel(`ELF machine ${machine}; only x86-64 (EM_X86_64 = ${EM_X86_64}) kernels boot here`);
  const rawEntry = view.getBigUint64(0x18, true);
  const phoff = u64(view, 0x20, 'e_phoff');
  const phentsize = view.getUint16(0x36, true);
  const phnum = view.getUint16(0x38, true);
  if (phnum === 0) badKernel('no program headers (e_phnum = 0)');
  if (phentsize < PHDR_SIZE) badKernel(`e_phentsize ${phentsize} is smaller than an Elf64_Phdr (${PHDR_SIZE})`);
  if (phoff + phnum * phentsize > image.length) {
    badKernel(
      `program header table (offset ${hex(phoff)}, ${phnum} × ${phentsize} bytes) extends past the end of the file (${image.length} bytes): truncated?`,
    );
  }
  const segments: ElfSegment[] = [];
  let pvhEntry: number | undefined;
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    const ptype = view.getUint32(at, true);
    if (ptype !== PT_LOAD && ptype !== PT_NOTE) continue;
    const flags = view.getUint32(at + 4, true);
    const offset = u64(view, at + 8, `segment ${i} p_offset`);
    const vaddr = view.getBigUint64(at + 0x10, true);
    const paddr = u64(view, at + 0x18, `segment ${i} p_paddr`);
    const filesz = u64(view, at + 0x20, `segment ${i} p_filesz`);
    const memsz = u64(view, at + 0x28, `segment ${i} p_memsz`);
    if (offset + filesz > image.length) {
      badKernel(
        `segment ${i} (file bytes ${hex(offset)}–${hex(offset + filesz)}) extends past the end of the file (${image.length} bytes): truncated?`,
      );
    }
    if (ptype === PT_NOTE) {
      pvhEntry = findPvhEntry(view, offset, filesz) ?? pvhEntry;
      continue;
    }
    if (filesz > memsz) badKernel(`segment ${i} has p_filesz ${hex(filesz)} > p_memsz ${hex(memsz)}`);
    if (paddr + memsz > MAX_PADDR)
      badKernel(`segment ${i} at physical ${hex(paddr)} (+${hex(memsz)}) is beyond the 52-bit physical address space`);
    if (memsz === 0) continue;
    segments.push({ paddr, vaddr, offset, filesz, memsz, flags });
  }
  if (segments.length === 0) badKernel('no PT_LOAD segment with a non-zero size');
  const sorted = [...segments].sort((a, b) => a.paddr - b.paddr);
  for (let i = 1; i < sorted.length; i++) {
    const p = sorted[i - 1];
    const s = sorted[i];
    if (s.paddr < p.paddr + p.memsz)
      badKernel(
        `PT_LOAD segments overlap at physical ${hex(s.paddr)} (previous one ends at ${hex(p.paddr + p.memsz)})`,
      );
  }
  const entry = entryToPhys(rawEntry, segments);
  const lowAddress = sorted[0].paddr;
  const highAddress = Math.max(...segments.map((s) => s.paddr + s.memsz));
  return { entry, rawEntry, segments, lowAddress, highAddress, ...(pvhEntry !== undefined ? { pvhEntry } : {}) };
}

function entryToPhys(rawEntry: bigint, segments: ElfSegment[]): number {
  for (const s of segments) {
    if (rawEntry >= BigInt(s.paddr) && rawEntry < BigInt(s.paddr + s.memsz)) return Number(rawEntry);
  }
  for (const s of segments) {
    if (rawEntry >= s.vaddr && rawEntry < s.vaddr + BigInt(s.memsz)) return s.paddr + Number(rawEntry - s.vaddr);
  }
  return badKernel(`entry point ${hex(rawEntry)} is not inside any PT_LOAD segment`);
}

/** Scans a PT_NOTE segment for the Xen PVH entry note. */
function findPvhEntry(view: DataView, offset: number, size: number): number | undefined {
  let at = offset;
  const end = offset + size;
  while (at + 12 <= end) {
    const namesz = view.getUint32(at, true);
    const descsz = view.getUint32(at + 4, true);
    const type = view.getUint32(at + 8, true);
    const name = at + 12;
    const desc = name + ((namesz + 3) & ~3);
    const next = desc + ((descsz + 3) & ~3);
    if (next > end || next <= at) return undefined;
    const isXen = namesz === 4 && view.getUint32(name, true) === 0x006e6558; // "Xen\0"
    if (isXen && type === XEN_ELFNOTE_PHYS32_ENTRY && descsz >= 4) {
      return descsz >= 8 ? Number(view.getBigUint64(desc, true) & 0xffff_ffffn) : view.getUint32(desc, true);
    }
    at = next;
  }
  return undefined;
}

/** Where a loader writes guest-physical bytes (a `GuestMemoryMap` fits). */
export interface PhysWriter {
  write(gpa: bigint, data: Uint8Array): void;
}

/**
 * Copies the PT_LOAD segments of `image` to their physical addresses and zeroes their BSS.
 *
 * @param ramEnd - one past the highest guest RAM address; segments must end below it
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * const bytes = readFileSync('vmlinux');
 * loadElf(bytes, parseElf(bytes), vm.guestMemory, 256 << 20); // guest RAM: 256 MiB from 0
 * ```
 * @throws {@link BootImageError} `ERR_KVM_BAD_KERNEL` when a segment does not fit in guest RAM
 */
export function loadElf(image: Uint8Array, kernel: ElfKernel, memory: PhysWriter, ramEnd: number): void {
  for (const s of kernel.segments) {
    if (s.paddr + s.memsz > ramEnd) {
      badKernel(
        `segment at physical ${hex(s.paddr)}–${hex(s.paddr + s.memsz)} does not fit in ${ramEnd >>> 20} MiB of guest RAM`,
      );
    }
  }
  let zero: Uint8Array | undefined;
  for (const s of kernel.segments) {
    memory.write(BigInt(s.paddr), image.subarray(s.offset, s.offset + s.filesz));
    const bss = s.memsz - s.filesz;
    for (let done = 0; done < bss;) {
      const n = Math.min(bss - done, 1 << 20);
      zero ??= new Uint8Array(1 << 20);
      memory.write(BigInt(s.paddr + s.filesz + done), zero.subarray(0, n));
      done += n;
    }
  }
}
