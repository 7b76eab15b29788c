/**
 * Decompressing a bzImage's payload on the host, so that a compressed kernel boots as fast as its
 * uncompressed vmlinux: where guest kernel code is emulated (a PVM host), the kernel's own
 * decompressor takes minutes; here it takes about half a second (Debian's 14 MB LZ4 payload).
 *
 * - LZ4, as the kernel's build writes it (`lz4 -l`: the legacy frame, then the 4-byte
 *   uncompressed size the build appends): Debian's cloud kernels. Decoded here.
 * - gzip: decoded with `node:zlib`.
 * - xz, zstd, bzip2, lzma, lzo: not decoded here (Node has no decoder for them).
 *
 * @module
 */
import { gunzipSync } from 'node:zlib';
import { badKernel, hex } from './errors';
import type { PayloadFormat } from './bzimage';

/** The LZ4 legacy frame's magic number, little endian: bytes 02 21 4c 18. */
export const LZ4_LEGACY_MAGIC = 0x184c2102;
/** Each block of a legacy frame decompresses to at most 8 MiB. */
export const LZ4_LEGACY_BLOCK_MAX = 8 << 20;
/** Largest kernel accepted from a payload (the loader's RAM limit is 3 GiB; a vmlinux is ~60 MB). */
export const MAX_KERNEL_SIZE = 1 << 30;

/** The payload formats {@link decompressPayload} decodes. */
export const HOST_DECOMPRESSIBLE: readonly PayloadFormat[] = ['lz4', 'gzip'];

/**
 * Decodes one LZ4 block (the raw block format: sequences of literals and back-references) into
 * `out` from `outAt`; returns the new output position.
 *
 * @throws {@link BootImageError} `ERR_KVM_BAD_KERNEL` for a block that reads past its end, refers
 *   back before the start of the output, or writes past `outEnd`
 */
function lz4Block(src: Uint8Array, start: number, end: number, out: Uint8Array, outAt: number, outEnd: number): number {
  const corrupt = (what: string): never => badKernel(`corrupt LZ4 payload: ${what} (block at ${hex(start)})`);
  let i = start;
  let o = outAt;
  const length = (n: number): number => {
    if (n !== 15) return n;
    for (;;) {
      if (i >= end) corrupt('a length runs past the end of the block');
      const b = src[i++];
      n += b;
      if (b !== 255) return n;
    }
  };
  while (i < end) {
    const token = src[i++];
    const lit = length(token >>> 4);
    if (i + lit > end) corrupt(`${lit} literals run past the end of the block`);
    if (o + lit > outEnd) corrupt('more output than the frame declares');
    out.set(src.subarray(i, i + lit), o);
    i += lit;
    o += lit;
    if (i === end) break; // the last sequence has literals only
    if (i + 2 > end) corrupt('a match offset runs past the end of the block');
    const offset = src[i] | (src[i + 1] << 8);
    i += 2;
    if (offset === 0 || offset > o) corrupt(`match offset ${offset} points before the start of the output`);
    const len = length(token & 15) + 4;
    if (o + len > outEnd) corrupt('more output than the frame declares');
    let from = o - offset;
    if (offset >= len) {
      out.copyWithin(o, from, from + len);
      o += len;
    } else {
      for (const stop = o + len; o < stop;) out[o++] = out[from++]!; // overlapping: byte by byte
    }
  }
  return o;
}

/**
 * Decodes an LZ4 legacy frame followed by the 4-byte little-endian uncompressed size the kernel's
 * build appends (what `lz4 -dc` prints "Error 1" about, after writing everything).
 *
 * @example
 * ```ts
 * // @ts-setup: declare const bz: BzImage; // a parsed bzImage (parseBzImage in src/vmm/bzimage.ts)
 * const payload = bz.protectedMode.subarray(bz.payloadOffset, bz.payloadOffset + bz.payloadLength);
 * const vmlinux = bz.payloadFormat === 'lz4' ? lz4Legacy(payload) : undefined; // an ELF vmlinux
 * ```
 * @throws {@link BootImageError} `ERR_KVM_BAD_KERNEL` for a bad magic, a truncated or corrupt
 *   block, or an output whose size differs from the trailer
 */
export function lz4Legacy(payload: Uint8Array): Uint8Array {
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  if (payload.length < 12 || v.getUint32(0, true) !== LZ4_LEGACY_MAGIC) {
    badKernel('the payload is not an LZ4 legacy frame (magic 02 21 4c 18)');
  }
  const declared = v.getUint32(payload.length - 4, true);
  if (declared === 0 || declared > MAX_KERNEL_SIZE) {
    badKernel(`the LZ4 payload's size trailer says ${declared} bytes: truncated, or not a kernel payload?`);
  }
  const out = new Uint8Array(declared);
  let i = 4;
  let o = 0;
  const end = payload.length - 4; // the size trailer
  while (i < end) {
    const size = v.getUint32(i, true);
    i += 4;
    if (size === LZ4_LEGACY_MAGIC) continue; // another legacy frame follows (concatenated streams)
    if (size === 0 || size > end - i) {
      badKernel(`corrupt LZ4 payload: a block of ${size} bytes at ${hex(i - 4)} runs past the end (truncated?)`);
    }
    const before = o;
    o = lz4Block(payload, i, i + size, out, o, Math.min(declared, o + LZ4_LEGACY_BLOCK_MAX));
    if (o === before) badKernel(`corrupt LZ4 payload: an empty block at ${hex(i - 4)}`);
    i += size;
  }
  if (o !== declared) {
    badKernel(`the LZ4 payload decompressed to ${o} bytes, but its size trailer says ${declared}: truncated?`);
  }
  return out;
}

/**
 * Decompresses a bzImage payload on the host.
 *
 * @returns the uncompressed kernel (an ELF vmlinux for a 64-bit x86 kernel), or `undefined` for a
 *   format not decoded here (see {@link HOST_DECOMPRESSIBLE})
 * @throws {@link BootImageError} `ERR_KVM_BAD_KERNEL` when the payload is corrupt or truncated
 */
export function decompressPayload(format: PayloadFormat, payload: Uint8Array): Uint8Array | undefined {
  switch (format) {
    case 'lz4':
      return lz4Legacy(payload);
    case 'gzip':
      try {
        return new Uint8Array(gunzipSync(payload, { maxOutputLength: MAX_KERNEL_SIZE }));
      } catch (e) {
        return badKernel(`corrupt gzip payload: ${(e as Error).message}`);
      }
    default:
      return undefined;
  }
}
