/**
 * Mutation fuzzing of the Linux loader's inputs: kernel images (ELF vmlinux, bzImage with an ELF,
 * LZ4, gzip or xz payload), initrds and command lines, mutated from valid ones with a seeded PRNG
 * (so a failure reproduces). Whatever the bytes, preparing and laying out a guest either works,
 * with everything written inside guest RAM, or throws one of the documented errors:
 * `BootImageError` (`ERR_KVM_BAD_KERNEL`, `ERR_KVM_UNSUPPORTED_KERNEL`, `ERR_KVM_BAD_INITRD`) or a
 * `RangeError`/`TypeError` with an `ERR_` code. Never a bare exception from a DataView read past
 * the end, a write outside RAM, or a hang.
 */
import { BootImageError } from '../../src/vmm/errors';
import { layoutGuest, prepareKernel } from '../../src/vmm/boot';
import { gzipSync } from 'node:zlib';
import { buildBzImage, buildElf, lz4LegacyCompress, pvhNote, tinyKernel, XZ_PAYLOAD } from './images';

const MEM = 64 << 20;
const ITERATIONS = 1500;

/** xorshift32: small, seeded, and the same on every run. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

function mutate(base: Uint8Array, next: () => number): Uint8Array {
  let out = Uint8Array.from(base);
  const edits = 1 + (next() % 8);
  for (let i = 0; i < edits; i++) {
    const at = out.length === 0 ? 0 : next() % out.length;
    switch (next() % 6) {
      case 0: // flip a bit
        if (out.length) out[at] ^= 1 << (next() % 8);
        break;
      case 1: // a random byte
        if (out.length) out[at] = next() & 0xff;
        break;
      case 2: // an extreme 32-bit value, aligned (sizes, offsets, addresses)
        if (out.length >= 4) {
          const v = [0, 0xffffffff, 0x7fffffff, 0x80000000, 0x1000, MEM, MEM - 1][next() % 7];
          new DataView(out.buffer, out.byteOffset).setUint32(Math.min(at & ~3, out.length - 4), v >>> 0, true);
        }
        break;
      case 3: // truncate
        out = out.subarray(0, at);
        break;
      case 4: // append junk
        out = Uint8Array.from([...out, ...Array.from({ length: 1 + (next() % 64) }, () => next() & 0xff)]);
        break;
      case 5: // zero a run
        out.fill(0, at, at + 1 + (next() % 32));
        break;
    }
  }
  return out;
}

/** A PhysWriter that records where the loader writes and checks it stays in RAM. */
function ram() {
  const writes: Array<[number, number]> = [];
  return {
    writes,
    write(gpa: bigint, data: Uint8Array) {
      expect(typeof gpa).toBe('bigint');
      writes.push([Number(gpa), data.length]);
    },
  };
}

const EXPECTED_CODES = new Set([
  'ERR_KVM_BAD_KERNEL',
  'ERR_KVM_UNSUPPORTED_KERNEL',
  'ERR_KVM_BAD_INITRD',
  'ERR_OUT_OF_RANGE',
  'ERR_INVALID_ARG_VALUE',
  'ERR_INVALID_ARG_TYPE',
]);

/** Runs the loader on one input; returns the error code, or 'ok'. Fails the test on anything else. */
function load(kernel: Uint8Array, initrd: Uint8Array | undefined, cmdline: string): string {
  const mem = ram();
  try {
    const k = prepareKernel(kernel, { allowDecompressor: true });
    const info = layoutGuest(mem, MEM, k, cmdline, initrd);
    for (const [addr, len] of mem.writes) {
      expect(addr).toBeGreaterThanOrEqual(0);
      expect(addr + len).toBeLessThanOrEqual(MEM);
    }
    expect(info.entry).toBeGreaterThanOrEqual(0);
    return 'ok';
  } catch (e) {
    const err = e as Error & { code?: string };
    const known =
      (err instanceof BootImageError || err instanceof RangeError || err instanceof TypeError) &&
      err.code !== undefined &&
      EXPECTED_CODES.has(err.code);
    if (!known) {
      throw new Error(`unexpected ${err.name} (${err.code ?? 'no code'}): ${err.message}\n${err.stack}`);
    }
    expect(err.message.length).toBeGreaterThan(10); // says what is wrong
    return err.code;
  }
}

describe('loader fuzz (seeded mutations of valid inputs)', () => {
  const elf = tinyKernel();
  const elfWithPvh = buildElf({
    entry: 0xffffffff81000000n,
    segments: [
      { paddr: 0x1000000, vaddr: 0xffffffff81000000n, data: new Uint8Array(0x200), memsz: 0x3000 },
      { type: 4, paddr: 0, data: pvhNote(0x1000000) },
    ],
  });
  const bzElf = buildBzImage({ payload: elf });
  const bzLz4 = buildBzImage({ payload: lz4LegacyCompress(elf) });
  const bzGzip = buildBzImage({ payload: new Uint8Array(gzipSync(elf)) });
  const bzXz = buildBzImage({ payload: XZ_PAYLOAD });
  const initrd = Uint8Array.from({ length: 4096 }, (_, i) => i & 0xff);

  it.each([
    ['an ELF vmlinux', elf, 0x5eed01],
    ['an ELF with a PVH note', elfWithPvh, 0x5eed02],
    ['a bzImage with an ELF payload', bzElf, 0x5eed03],
    ['a bzImage with an LZ4 payload (decompressed on the host)', bzLz4, 0x5eed04],
    ['a bzImage with a gzip payload (decompressed on the host)', bzGzip, 0x5eed06],
    ['a bzImage with an xz payload (the guest decompresses)', bzXz, 0x5eed07],
  ])('%s: every mutation loads or gives a documented error', (_name, base, seed) => {
    expect(load(base, initrd, 'console=ttyS0')).toBe('ok'); // the unmutated input loads
    const next = prng(seed);
    const seen = new Map<string, number>();
    for (let i = 0; i < ITERATIONS; i++) {
      const code = load(mutate(base, next), initrd, 'console=ttyS0');
      seen.set(code, (seen.get(code) ?? 0) + 1);
    }
    // the mutations reach both sides: some still load, most are refused with a reason
    expect(seen.get('ok') ?? 0).toBeGreaterThan(0);
    expect([...seen.keys()].filter((c) => c !== 'ok').length).toBeGreaterThan(0);
  });

  it('initrds of any size and content, and long or odd command lines', () => {
    const next = prng(0x5eed05);
    const seen = new Set<string>();
    for (let i = 0; i < 300; i++) {
      const size = [0, 1, 4095, 4096, MEM, MEM - 0x3e00000, 8 << 20][next() % 7];
      const rd = new Uint8Array(size);
      const cmd = 'x'.repeat(next() % 3000) + (next() % 2 ? '\u00e9' : '');
      seen.add(load(elf, rd, cmd));
    }
    expect(seen.has('ok')).toBe(true);
    expect(seen.has('ERR_OUT_OF_RANGE')).toBe(true); // a cmdline longer than cmdline_size
    expect(load(elf, undefined, 'console=ttyS0 \u2603')).toBe('ERR_INVALID_ARG_VALUE');
    expect(load(elf, undefined, 'console=ttyS0\0')).toBe('ERR_INVALID_ARG_VALUE');
  });
});
