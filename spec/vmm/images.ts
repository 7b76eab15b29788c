/**
 * Synthetic kernel images for the loader specs: ELF64 files and bzImages built byte by byte.
 */

export interface SegmentSpec {
  type?: number; // default PT_LOAD (1)
  paddr: number;
  vaddr?: bigint;
  data: Uint8Array;
  memsz?: number;
  flags?: number;
}

export interface ElfSpec {
  segments: SegmentSpec[];
  entry: bigint;
  cls?: number;
  data?: number;
  version?: number;
  type?: number;
  machine?: number;
  phentsize?: number;
}

/** An ELF64 file: header, program headers right after it, then each segment's bytes in order. */
export function buildElf(spec: ElfSpec): Uint8Array {
  const phentsize = spec.phentsize ?? 56;
  const phoff = 64;
  let dataAt = phoff + phentsize * spec.segments.length;
  const offsets = spec.segments.map((s) => {
    const at = dataAt;
    dataAt += s.data.length;
    return at;
  });
  const out = new Uint8Array(dataAt + (phentsize < 56 ? 64 : 0));
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, spec.cls ?? 2, spec.data ?? 1, spec.version ?? 1]);
  v.setUint16(0x10, spec.type ?? 2, true);
  v.setUint16(0x12, spec.machine ?? 62, true);
  v.setUint32(0x14, 1, true);
  v.setBigUint64(0x18, spec.entry, true);
  v.setBigUint64(0x20, BigInt(phoff), true);
  v.setUint16(0x34, 64, true);
  v.setUint16(0x36, phentsize, true);
  v.setUint16(0x38, spec.segments.length, true);
  spec.segments.forEach((s, i) => {
    const at = phoff + i * phentsize;
    v.setUint32(at, s.type ?? 1, true);
    v.setUint32(at + 4, s.flags ?? 7, true);
    v.setBigUint64(at + 8, BigInt(offsets[i]), true);
    v.setBigUint64(at + 0x10, s.vaddr ?? BigInt(s.paddr), true);
    v.setBigUint64(at + 0x18, BigInt(s.paddr), true);
    v.setBigUint64(at + 0x20, BigInt(s.data.length), true);
    v.setBigUint64(at + 0x28, BigInt(s.memsz ?? s.data.length), true);
    out.set(s.data, offsets[i]);
  });
  return out;
}

/** A Xen ELF note `XEN_ELFNOTE_PHYS32_ENTRY` = `entry`. */
export function pvhNote(entry: number): Uint8Array {
  const b = new Uint8Array(12 + 4 + 4);
  const v = new DataView(b.buffer);
  v.setUint32(0, 4, true);
  v.setUint32(4, 4, true);
  v.setUint32(8, 18, true);
  b.set([0x58, 0x65, 0x6e, 0], 12); // "Xen\0"
  v.setUint32(16, entry, true);
  return b;
}

export interface BzSpec {
  setupSects?: number; // as written in the file (0 means 4)
  protocol?: number;
  payload: Uint8Array;
  payloadOffset?: number; // within the protected-mode part (default 0x100)
  xloadflags?: number;
  cmdlineSize?: number;
  initrdAddrMax?: number;
  initSize?: number;
  bootFlag?: number;
  magic?: number;
}

/** A bzImage: setup sectors with a setup header, then the protected-mode part holding the payload. */
export function buildBzImage(spec: BzSpec): Uint8Array {
  const raw = spec.setupSects ?? 4;
  const sects = raw === 0 ? 4 : raw;
  const pmOff = (sects + 1) * 512;
  const payloadOffset = spec.payloadOffset ?? 0x100;
  const pmLen = payloadOffset + spec.payload.length + 16;
  const out = new Uint8Array(pmOff + pmLen);
  const v = new DataView(out.buffer);
  out[0x1f1] = raw;
  v.setUint32(0x1f4, Math.floor(pmLen / 16), true);
  v.setUint16(0x1fe, spec.bootFlag ?? 0xaa55, true);
  out[0x200] = 0xeb; // jmp
  out[0x201] = 0x6a; // to 0x26c: the header ends there
  v.setUint32(0x202, spec.magic ?? 0x53726448, true);
  v.setUint16(0x206, spec.protocol ?? 0x20f, true);
  out[0x211] = 0x01; // LOADED_HIGH
  v.setUint32(0x22c, spec.initrdAddrMax ?? 0x7fffffff, true);
  v.setUint32(0x230, 0x200000, true);
  out[0x234] = 1;
  v.setUint16(0x236, spec.xloadflags ?? 0x7f, true);
  v.setUint32(0x238, spec.cmdlineSize ?? 2047, true);
  v.setUint32(0x248, payloadOffset, true);
  v.setUint32(0x24c, spec.payload.length, true);
  v.setUint32(0x260, spec.initSize ?? 0x400000, true);
  out.set(spec.payload, pmOff + payloadOffset);
  return out;
}

export const LZ4_PAYLOAD = Uint8Array.of(0x02, 0x21, 0x4c, 0x18, 1, 2, 3, 4);

/** An xz magic and a few bytes: a payload format the loader does not decompress on the host. */
export const XZ_PAYLOAD = Uint8Array.of(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1, 2);

/** One LZ4 block (greedy, 4-byte hash matches), obeying the format's end-of-block rules. */
function lz4BlockCompress(src: Uint8Array): number[] {
  const out: number[] = [];
  const n = src.length;
  const lengthBytes = (len: number) => {
    for (len -= 15; len >= 255; len -= 255) out.push(255);
    out.push(len);
  };
  const sequence = (litFrom: number, litTo: number, matchLen?: number, offset?: number) => {
    const lit = litTo - litFrom;
    const ml = matchLen === undefined ? 0 : matchLen - 4;
    out.push((Math.min(lit, 15) << 4) | Math.min(ml, 15));
    if (lit >= 15) lengthBytes(lit);
    for (let k = litFrom; k < litTo; k++) out.push(src[k]);
    if (matchLen === undefined || offset === undefined) return;
    out.push(offset & 0xff, offset >>> 8);
    if (ml >= 15) lengthBytes(ml);
  };
  const seen = new Map<number, number>();
  let anchor = 0;
  let i = 0;
  while (i + 12 < n) {
    // a match may start no later than 12 bytes before the end, and ends 5 bytes before it
    const key = src[i] | (src[i + 1] << 8) | (src[i + 2] << 16) | (src[i + 3] << 24);
    const cand = seen.get(key);
    seen.set(key, i);
    if (cand !== undefined && i - cand <= 0xffff) {
      let len = 4;
      while (i + len < n - 5 && src[cand + len] === src[i + len]) len++;
      sequence(anchor, i, len, i - cand);
      i += len;
      anchor = i;
    } else i++;
  }
  sequence(anchor, n);
  return out;
}

/**
 * `data` as the kernel's build compresses it (`lz4 -l` + the 4-byte size trailer): the LZ4
 * legacy frame, blocks of at most 8 MiB, then the uncompressed size.
 */
export function lz4LegacyCompress(data: Uint8Array, blockSize = 8 << 20): Uint8Array {
  const parts: number[] = [0x02, 0x21, 0x4c, 0x18];
  const u32 = (v: number) => parts.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24);
  for (let s = 0; s < data.length; s += blockSize) {
    const block = lz4BlockCompress(data.subarray(s, Math.min(s + blockSize, data.length)));
    u32(block.length);
    for (const b of block) parts.push(b);
  }
  u32(data.length);
  return Uint8Array.from(parts);
}

/**
 * The tiny 64-bit kernel, loaded at physical 0x200000 (IDT page at 0x201000):
 *
 *   0x000  66 ba f8 03          mov  $0x3f8, %dx
 *          b0 4b                mov  $'K', %al
 *          ee                   out  %al, (%dx)
 *          8b 86 02 02 00 00    mov  0x202(%rsi), %eax     # "HdrS" from the zero page
 *          ef                   out  %eax, (%dx)
 *          0f 01 1d 06 00 00 00 lidt idtr(%rip)
 *          9b                   fwait
 *          cc                   int3                       # #BP → handler
 *          b0 21                mov  $'!', %al
 *          ee                   out  %al, (%dx)
 *          f4                   hlt
 *   0x01b  idtr: .word 0xff; .quad 0x201000
 *   0x100  handler: b0 42 mov $'B', %al; ee out %al, (%dx); 48 cf iretq
 *   0x1000 IDT: gate 3 → 0x200100 (selector 0x10, interrupt gate, present)
 */
export function tinyKernel(): Uint8Array {
  const img = new Uint8Array(0x1100);
  img.set([
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x4b, 0xee, 0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, 0xef, 0x0f, 0x01, 0x1d, 0x06, 0x00,
    0x00, 0x00, 0x9b, 0xcc, 0xb0, 0x21, 0xee, 0xf4, 0xff, 0x00, 0x00, 0x10, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00,
  ]);
  img.set([0xb0, 0x42, 0xee, 0x48, 0xcf], 0x100);
  const gate = 0x1000 + 3 * 16;
  const v = new DataView(img.buffer);
  const handler = 0x200100;
  v.setUint16(gate, handler & 0xffff, true);
  v.setUint16(gate + 2, 0x10, true);
  img[gate + 5] = 0x8e;
  v.setUint16(gate + 6, (handler >>> 16) & 0xffff, true);
  v.setUint32(gate + 8, 0, true);
  return buildElf({ entry: 0x200000n, segments: [{ paddr: 0x200000, data: img, memsz: 0x2000 }] });
}
