/**
 * ELF64 vmlinux parsing and loading, on synthetic images (and the fetched vmlinux when present).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isElf, loadElf, parseElf } from '../../src/vmm/elf';
import { buildElf, pvhNote } from './images';
import { bootError } from '../helpers/boot-image';

const code = Uint8Array.of(0xf4, 0x90, 0x90, 0x90);

describe('parseElf', () => {
  it('reads PT_LOAD segments at their physical addresses and the entry point', () => {
    const img = buildElf({
      entry: 0x1000000n,
      segments: [
        { paddr: 0x1000000, vaddr: 0xffffffff81000000n, data: code, flags: 5 },
        { paddr: 0x1200000, vaddr: 0xffffffff81200000n, data: Uint8Array.of(1, 2), memsz: 0x3000, flags: 6 },
      ],
    });
    const k = parseElf(img);
    expect(k.entry).toBe(0x1000000);
    expect(k.rawEntry).toBe(0x1000000n);
    expect(k.segments).toEqual([
      { paddr: 0x1000000, vaddr: 0xffffffff81000000n, offset: 64 + 2 * 56, filesz: 4, memsz: 4, flags: 5 },
      { paddr: 0x1200000, vaddr: 0xffffffff81200000n, offset: 64 + 2 * 56 + 4, filesz: 2, memsz: 0x3000, flags: 6 },
    ]);
    expect([k.lowAddress, k.highAddress]).toEqual([0x1000000, 0x1203000]);
    expect(k.pvhEntry).toBeUndefined();
  });

  it('translates a virtual entry point to its physical address', () => {
    const img = buildElf({
      entry: 0xffffffff81000010n,
      segments: [{ paddr: 0x1000000, vaddr: 0xffffffff81000000n, data: new Uint8Array(0x20) }],
    });
    expect(parseElf(img).entry).toBe(0x1000010);
  });

  it('reads the Xen PVH entry note and skips PT_NOTE in the load list', () => {
    const img = buildElf({
      entry: 0x1000000n,
      segments: [
        { paddr: 0x1000000, data: code },
        { type: 4, paddr: 0, data: pvhNote(0x1000123) },
      ],
    });
    const k = parseElf(img);
    expect(k.pvhEntry).toBe(0x1000123);
    expect(k.segments).toHaveLength(1);
  });

  it.each([
    ['empty file', 'ERR_KVM_BAD_KERNEL', new Uint8Array(0), /not an ELF file \(magic missing/],
    [
      'bad magic',
      'ERR_KVM_BAD_KERNEL',
      Uint8Array.of(0x4d, 0x5a, 0x90, 0, 1, 2, 3),
      /not an ELF file \(magic 4d 5a 90 00/,
    ],
    [
      'truncated header',
      'ERR_KVM_BAD_KERNEL',
      buildElf({ entry: 0x1000000n, segments: [{ paddr: 0x1000000, data: code }] }).subarray(0, 40),
      /ELF header truncated: the file has 40 bytes/,
    ],
    [
      '32-bit class',
      'ERR_KVM_UNSUPPORTED_KERNEL',
      buildElf({ cls: 1, entry: 0x1000000n, segments: [{ paddr: 0x1000000, data: code }] }),
      /ELF class 1 \(32-bit\)/,
    ],
    [
      'big endian',
      'ERR_KVM_BAD_KERNEL',
      buildElf({ data: 2, entry: 0x1000000n, segments: [{ paddr: 0x1000000, data: code }] }),
      /data encoding 2/,
    ],
    [
      'relocatable object',
      'ERR_KVM_BAD_KERNEL',
      buildElf({ type: 1, entry: 0x1000000n, segments: [{ paddr: 0x1000000, data: code }] }),
      /ELF type 1 is not an executable/,
    ],
    [
      'aarch64 machine',
      'ERR_KVM_UNSUPPORTED_KERNEL',
      buildElf({ machine: 183, entry: 0x1000000n, segments: [{ paddr: 0x1000000, data: code }] }),
      /ELF machine 183; only x86-64/,
    ],
    ['no program headers', 'ERR_KVM_BAD_KERNEL', buildElf({ entry: 0x1000000n, segments: [] }), /no program headers/],
    [
      'short phentsize',
      'ERR_KVM_BAD_KERNEL',
      buildElf({ phentsize: 32, entry: 0x1000000n, segments: [{ paddr: 0x1000000, data: code }] }),
      /e_phentsize 32/,
    ],
  ])('%s → %s', (_name, codeName, img, message) => {
    const e = bootError(() => parseElf(img));
    expect(e.code).toBe(codeName);
    expect(e.detail).toMatch(message);
    expect(e.message).toContain(e.detail);
  });

  it('refuses a truncated file: program headers or segment bytes past the end', () => {
    const img = buildElf({ entry: 0x1000000n, segments: [{ paddr: 0x1000000, data: new Uint8Array(0x100) }] });
    expect(bootError(() => parseElf(img.subarray(0, 100))).detail).toMatch(
      /program header table .* extends past the end of the file \(100 bytes\): truncated\?/,
    );
    expect(bootError(() => parseElf(img.subarray(0, img.length - 1))).detail).toMatch(
      /segment 0 .* extends past the end of the file/,
    );
  });

  it('refuses filesz > memsz, overlapping segments, an entry outside every segment, and no PT_LOAD', () => {
    const fz = buildElf({ entry: 0x1000000n, segments: [{ paddr: 0x1000000, data: new Uint8Array(16), memsz: 8 }] });
    expect(bootError(() => parseElf(fz)).detail).toBe('segment 0 has p_filesz 0x10 > p_memsz 0x8');
    const ov = buildElf({
      entry: 0x1000000n,
      segments: [
        { paddr: 0x1000000, data: code, memsz: 0x2000 },
        { paddr: 0x1001000, data: code },
      ],
    });
    expect(bootError(() => parseElf(ov)).detail).toMatch(
      /PT_LOAD segments overlap at physical 0x1001000 \(previous one ends at 0x1002000\)/,
    );
    const ent = buildElf({ entry: 0x5000000n, segments: [{ paddr: 0x1000000, data: code }] });
    expect(bootError(() => parseElf(ent)).detail).toBe('entry point 0x5000000 is not inside any PT_LOAD segment');
    const note = buildElf({ entry: 0x1000000n, segments: [{ type: 4, paddr: 0, data: pvhNote(1) }] });
    expect(bootError(() => parseElf(note)).detail).toMatch(/no PT_LOAD segment/);
  });

  it('isElf looks at the magic only', () => {
    expect(isElf(Uint8Array.of(0x7f, 0x45, 0x4c, 0x46))).toBe(true);
    expect(isElf(Uint8Array.of(0x7f, 0x45, 0x4c))).toBe(false);
  });
});

describe('loadElf', () => {
  function sink(size: number) {
    const ram = new Uint8Array(size).fill(0xaa);
    return { ram, write: (gpa: bigint, data: Uint8Array) => ram.set(data, Number(gpa)) };
  }

  it('copies file bytes to p_paddr and zeroes the BSS', () => {
    const img = buildElf({
      entry: 0x1000n,
      segments: [
        { paddr: 0x1000, data: Uint8Array.of(1, 2, 3), memsz: 0x10 },
        { paddr: 0x3000, data: code },
      ],
    });
    const mem = sink(0x4000);
    loadElf(img, parseElf(img), mem, 0x4000);
    expect(Array.from(mem.ram.subarray(0x1000, 0x1012))).toEqual([1, 2, 3, ...new Array(13).fill(0), 0xaa, 0xaa]);
    expect(Array.from(mem.ram.subarray(0x3000, 0x3004))).toEqual(Array.from(code));
    expect(mem.ram[0xfff]).toBe(0xaa);
  });

  it('refuses segments beyond guest RAM before writing anything', () => {
    const img = buildElf({
      entry: 0x1000n,
      segments: [
        { paddr: 0x1000, data: code },
        { paddr: 0x300000, data: code, memsz: 0x200000 },
      ],
    });
    const mem = sink(0x2000);
    const e = bootError(() => loadElf(img, parseElf(img), mem, 0x400000));
    expect(e.detail).toBe('segment at physical 0x300000–0x500000 does not fit in 4 MiB of guest RAM');
    expect(mem.ram[0x1000]).toBe(0xaa);
  });
});

const vmlinux = join(__dirname, '../../.guest/vmlinux');
(existsSync(vmlinux) ? describe : describe.skip)(
  `the fetched Debian vmlinux${existsSync(vmlinux) ? '' : ' [skipped: run npm run guest:fetch]'}`,
  () => {
    it('is an ELF64 x86-64 kernel entered at 0x1000000 with 4 PT_LOADs and a PVH note', () => {
      const k = parseElf(readFileSync(vmlinux));
      expect(k.entry).toBe(0x1000000);
      expect(k.segments).toHaveLength(4);
      expect(k.lowAddress).toBe(0x1000000);
      expect(k.pvhEntry).toBeGreaterThan(0x1000000);
    });
  },
);
