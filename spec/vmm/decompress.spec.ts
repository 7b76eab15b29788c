/**
 * Host-side payload decompression: the LZ4 legacy frame (+ the kernel build's size trailer) and
 * gzip. Round trips through the spec's own compressor and, where installed, the `lz4` tool.
 */
import { spawnSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { BootImageError } from '../../src/vmm/errors';
import { decompressPayload, lz4Legacy } from '../../src/vmm/decompress';
import { lz4LegacyCompress } from './images';
import { bootError } from '../helpers/boot-image';

/** Compressible but varied bytes: text-like runs, repeats at many distances, and noise. */
function sample(size: number, seed = 1): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    const r = x >>> 24;
    if (r < 96 && i >= 64)
      out[i] = out[i - 1 - (r % 64)]!; // a repeat
    else if (r < 200)
      out[i] = 0x61 + (r % 26); // a letter
    else out[i] = r; // noise
  }
  return out;
}

const u32le = (v: number) => Uint8Array.of(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24);

describe('lz4Legacy', () => {
  it.each([
    ['a few literals only', Uint8Array.of(1, 2, 3)],
    ['a long run (overlapping matches, lengths past 15 + 255)', new Uint8Array(70_000).fill(0x90)],
    ['varied data', sample(200_000)],
    ['incompressible data', Uint8Array.from({ length: 5000 }, (_, i) => (i * 2654435761) >>> 24)],
  ])('round-trips %s', (_what, data) => {
    const packed = lz4LegacyCompress(data);
    expect(Buffer.compare(Buffer.from(lz4Legacy(packed)), Buffer.from(data))).toBe(0);
  });

  it('joins concatenated frames, as the kernel does (a block size equal to the magic starts a new frame)', () => {
    const a = sample(3000, 21);
    const b = sample(2000, 22);
    const fa = lz4LegacyCompress(a);
    const fb = lz4LegacyCompress(b);
    const joined = Uint8Array.from([
      ...fa.subarray(0, fa.length - 4),
      ...fb.subarray(0, fb.length - 4),
      ...u32le(5000),
    ]);
    expect(Buffer.from(lz4Legacy(joined)).equals(Buffer.concat([a, b]))).toBe(true);
  });

  it('joins the blocks of a multi-block frame', () => {
    const data = sample(100_000, 7);
    const packed = lz4LegacyCompress(data, 16 << 10); // 7 blocks
    expect(Buffer.from(lz4Legacy(packed)).equals(Buffer.from(data))).toBe(true);
  });

  const lz4Tool = spawnSync('lz4', ['--version'], { encoding: 'utf8' });
  (lz4Tool.status === 0 ? it : it.skip)(
    `decodes what the lz4 tool writes with -l, as the kernel build does${lz4Tool.status === 0 ? '' : ' [skipped: no lz4 tool]'}`,
    () => {
      const data = sample(3 << 20, 3);
      const r = spawnSync('lz4', ['-l', '-c9', '-'], { input: data, maxBuffer: 64 << 20 });
      expect(r.status).toBe(0);
      const payload = new Uint8Array(Buffer.concat([r.stdout, Buffer.from(u32le(data.length))]));
      expect(Buffer.from(lz4Legacy(payload)).equals(Buffer.from(data))).toBe(true);
    },
  );

  it('refuses what is not an LZ4 legacy frame, and a size trailer that cannot be a kernel', () => {
    expect(bootError(() => lz4Legacy(Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12))).detail).toMatch(
      /not an LZ4 legacy frame/,
    );
    const zero = lz4LegacyCompress(Uint8Array.of(1));
    zero.set(u32le(0), zero.length - 4);
    expect(bootError(() => lz4Legacy(zero)).detail).toMatch(/size trailer says 0 bytes/);
  });

  it('says what is wrong with a truncated or corrupt frame, never reading or writing out of bounds', () => {
    const data = sample(50_000, 5);
    const packed = lz4LegacyCompress(data);
    // cut: the block runs past the end
    const cut = Uint8Array.from([...packed.subarray(0, 2000), ...u32le(data.length)]);
    expect(bootError(() => lz4Legacy(cut)).detail).toMatch(/runs past the end \(truncated\?\)/);
    // a trailer larger than what the frame holds
    const short = Uint8Array.from(packed);
    short.set(u32le(data.length + 1), short.length - 4);
    expect(bootError(() => lz4Legacy(short)).detail).toMatch(
      /decompressed to 50000 bytes, but its size trailer says 50001/,
    );
    // a trailer smaller: the output would overflow it
    const small = Uint8Array.from(packed);
    small.set(u32le(100), small.length - 4);
    expect(bootError(() => lz4Legacy(small)).detail).toMatch(/more output than the frame declares/);
    // a match reaching back before the start of the output: token 0x00 (no literals), offset 9
    const back = Uint8Array.from([0x02, 0x21, 0x4c, 0x18, ...u32le(4), 0x10, 0x41, 9, 0, ...u32le(5)]);
    expect(bootError(() => lz4Legacy(back)).detail).toMatch(/match offset 9 points before the start/);
  });

  it('every single-byte corruption of a frame decodes or gives BootImageError', () => {
    const data = sample(4000, 9);
    const packed = lz4LegacyCompress(data);
    let refused = 0;
    for (let i = 4; i < packed.length; i++) {
      const bad = Uint8Array.from(packed);
      bad[i] ^= 0x5a;
      try {
        lz4Legacy(bad);
      } catch (e) {
        expect(e).toBeInstanceOf(BootImageError);
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(0);
  });
});

describe('decompressPayload', () => {
  it('gunzips gzip, decodes LZ4, and leaves the formats it does not decode to the caller', () => {
    const data = sample(10_000);
    expect(Buffer.from(decompressPayload('gzip', new Uint8Array(gzipSync(data)))!).equals(Buffer.from(data))).toBe(
      true,
    );
    expect(Buffer.from(decompressPayload('lz4', lz4LegacyCompress(data))!).equals(Buffer.from(data))).toBe(true);
    for (const f of ['xz', 'zstd', 'bzip2', 'lzma', 'lzo', 'unknown'] as const) {
      expect(decompressPayload(f, data)).toBeUndefined();
    }
  });

  it('a corrupt gzip payload is a bad kernel', () => {
    const gz = new Uint8Array(gzipSync(sample(1000)));
    gz[gz.length - 12] ^= 0xff;
    expect(bootError(() => decompressPayload('gzip', gz)).code).toBe('ERR_KVM_BAD_KERNEL');
  });
});
