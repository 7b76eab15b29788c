/**
 * bzImage setup-header parsing and the payload paths, on synthetic images (and the fetched
 * Debian bzImage when present).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { prepareKernel } from '../../src/vmm/boot';
import { bzImagePayload, isBzImage, parseBzImage, payloadFormat } from '../../src/vmm/bzimage';
import { LZ4_PAYLOAD, XZ_PAYLOAD, buildBzImage, buildElf, lz4LegacyCompress } from './images';
import { decompressPayload } from '../../src/vmm/decompress';
import { gzipSync } from 'node:zlib';
import { bootError } from '../helpers/boot-image';

describe('parseBzImage', () => {
  it('reads the setup header: protocol, setup_sects, payload, cmdline size, initrd max, 64-bit entry', () => {
    const img = buildBzImage({
      setupSects: 27,
      payload: LZ4_PAYLOAD,
      payloadOffset: 0x2cc,
      cmdlineSize: 2047,
      initrdAddrMax: 0x7fffffff,
      initSize: 0x2000000,
    });
    const bz = parseBzImage(img);
    expect(bz).toMatchObject({
      protocol: 0x20f,
      setupSects: 27,
      protectedModeOffset: 28 * 512,
      loadflags: 1,
      xloadflags: 0x7f,
      has64BitEntry: true,
      entry64: 0x100200,
      kernelAlignment: 0x200000,
      relocatable: true,
      initrdAddrMax: 0x7fffffff,
      cmdlineSize: 2047,
      payloadOffset: 0x2cc,
      payloadLength: LZ4_PAYLOAD.length,
      payloadFormat: 'lz4',
      initSize: 0x2000000,
    });
    expect(bz.protectedMode.length).toBe(img.length - 28 * 512);
    expect(bz.setupHeader.length).toBe(0x26c - 0x1f1);
    expect(bz.setupHeader[0]).toBe(27);
    expect(Array.from(bzImagePayload(bz))).toEqual(Array.from(LZ4_PAYLOAD));
  });

  it('treats setup_sects 0 as 4', () => {
    const bz = parseBzImage(buildBzImage({ setupSects: 0, payload: LZ4_PAYLOAD }));
    expect([bz.setupSects, bz.protectedModeOffset]).toEqual([4, 5 * 512]);
  });

  it.each([
    [
      'too short for a header',
      'ERR_KVM_BAD_KERNEL',
      new Uint8Array(0x100),
      /file too short for a bzImage setup header \(256 bytes/,
    ],
    [
      'bad boot flag',
      'ERR_KVM_BAD_KERNEL',
      buildBzImage({ payload: LZ4_PAYLOAD, bootFlag: 0x1234 }),
      /boot_flag at 0x1fe is 0x1234, expected 0xaa55/,
    ],
    [
      'bad HdrS magic',
      'ERR_KVM_BAD_KERNEL',
      buildBzImage({ payload: LZ4_PAYLOAD, magic: 0x41414141 }),
      /header magic at 0x202 is 0x41414141, expected "HdrS"/,
    ],
    [
      'protocol 2.05',
      'ERR_KVM_UNSUPPORTED_KERNEL',
      buildBzImage({ payload: LZ4_PAYLOAD, protocol: 0x205 }),
      /boot protocol 2.05 is older than 2.06/,
    ],
    [
      'truncated inside the header',
      'ERR_KVM_BAD_KERNEL',
      buildBzImage({ payload: LZ4_PAYLOAD }).subarray(0, 0x240),
      /setup header truncated: the file has 576 bytes, protocol 2.15 needs/,
    ],
    [
      'setup_sects past the end',
      'ERR_KVM_BAD_KERNEL',
      buildBzImage({ payload: LZ4_PAYLOAD }).subarray(0, 0x400),
      /setup_sects 4 puts the protected-mode kernel at 0xa00, past the end of the file \(1024 bytes\)/,
    ],
    [
      'truncated protected-mode part',
      'ERR_KVM_BAD_KERNEL',
      buildBzImage({ payload: new Uint8Array(0x1000).fill(1) }).subarray(0, 0xb00),
      /syssize says \d+ bytes of protected-mode code but the file has 256: truncated\?/,
    ],
  ])('%s → %s', (_name, code, img, message) => {
    const e = bootError(() => parseBzImage(img));
    expect(e.code).toBe(code);
    expect(e.detail).toMatch(message);
  });

  it('refuses a payload outside the protected-mode part', () => {
    const img = buildBzImage({ payload: LZ4_PAYLOAD });
    new DataView(img.buffer).setUint32(0x24c, 0x10000, true); // payload_length
    expect(bootError(() => parseBzImage(img)).detail).toMatch(
      /payload \(offset 0x100, length 65536\) is outside the protected-mode kernel/,
    );
  });

  it('identifies payload formats by magic', () => {
    expect(payloadFormat(Uint8Array.of(0x1f, 0x8b, 8))).toBe('gzip');
    expect(payloadFormat(Uint8Array.of(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0))).toBe('xz');
    expect(payloadFormat(LZ4_PAYLOAD)).toBe('lz4');
    expect(payloadFormat(Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd))).toBe('zstd');
    expect(payloadFormat(Uint8Array.of(0x42, 0x5a, 0x68))).toBe('bzip2');
    expect(payloadFormat(Uint8Array.of(0x5d, 0, 0))).toBe('lzma');
    expect(payloadFormat(Uint8Array.of(0x89, 0x4c, 0x5a, 0x4f))).toBe('lzo');
    expect(payloadFormat(Uint8Array.of(0x7f, 0x45, 0x4c, 0x46))).toBe('elf');
    expect(payloadFormat(Uint8Array.of(1, 2, 3, 4))).toBe('unknown');
    expect(isBzImage(buildBzImage({ payload: LZ4_PAYLOAD }))).toBe(true);
    expect(isBzImage(new Uint8Array(0x300))).toBe(false);
  });
});

describe('prepareKernel with a bzImage', () => {
  it('loads an uncompressed ELF payload as that ELF, keeping the setup header', () => {
    const elf = buildElf({
      entry: 0x1000000n,
      segments: [{ paddr: 0x1000000, data: Uint8Array.of(0xf4), memsz: 0x1000 }],
    });
    const k = prepareKernel(buildBzImage({ payload: elf, cmdlineSize: 255 }));
    expect(k).toMatchObject({
      kind: 'bzimage',
      entry: 0x1000000,
      low: 0x1000000,
      high: 0x1001000,
      cmdlineSize: 255,
      initrdAddrMax: 0x7fffffff,
    });
    expect(k.elf?.segments).toHaveLength(1);
    expect(k.setupHeader?.[0x202 - 0x1f1]).toBe(0x48); // 'H' of HdrS
  });

  it('decompresses an LZ4 or gzip payload on the host and loads the vmlinux inside, with the setup header', () => {
    const elf = buildElf({ entry: 0x1000000n, segments: [{ paddr: 0x1000000, data: Uint8Array.of(0xf4, 1, 2, 3) }] });
    for (const [format, payload] of [
      ['lz4', lz4LegacyCompress(elf)],
      ['gzip', new Uint8Array(gzipSync(elf))],
    ] as const) {
      const k = prepareKernel(buildBzImage({ payload, cmdlineSize: 511 }));
      expect(k).toMatchObject({ kind: 'bzimage', payload: format, entry: 0x1000000, low: 0x1000000, cmdlineSize: 511 });
      expect(k.guestDecompresses).toBeUndefined();
      const writes: Array<[bigint, number[]]> = [];
      k.load({ write: (gpa, data) => void writes.push([gpa, Array.from(data)]) }, 0x2000000);
      expect(writes[0]).toEqual([0x1000000n, [0xf4, 1, 2, 3]]);
    }
  });

  it('a payload that decompresses to something else, or is corrupt, is a bad kernel', () => {
    const notElf = bootError(() => prepareKernel(buildBzImage({ payload: lz4LegacyCompress(new Uint8Array(64)) })));
    expect(notElf.code).toBe('ERR_KVM_BAD_KERNEL');
    expect(notElf.detail).toMatch(
      /lz4 payload decompressed to something that is not an ELF vmlinux \(starts with 00 00 00 00\)/,
    );
    const corrupt = bootError(() => prepareKernel(buildBzImage({ payload: LZ4_PAYLOAD })));
    expect(corrupt.code).toBe('ERR_KVM_BAD_KERNEL');
    expect(corrupt.detail).toMatch(/LZ4/);
    const badGzip = bootError(() => prepareKernel(buildBzImage({ payload: Uint8Array.of(0x1f, 0x8b, 8, 0, 1, 2, 3) })));
    expect(badGzip.detail).toMatch(/^corrupt gzip payload: /);
  });

  it('refuses a payload it does not decompress (xz, or any with decompressOnHost: false), saying why and what to do', () => {
    const e = bootError(() => prepareKernel(buildBzImage({ payload: XZ_PAYLOAD })));
    expect(e.code).toBe('ERR_KVM_UNSUPPORTED_KERNEL');
    expect(e.detail).toMatch(/payload is xz-compressed/);
    expect(e.detail).toMatch(/does LZ4 and gzip/);
    expect(e.detail).toMatch(/slow/);
    expect(e.detail).toMatch(/uncompressed vmlinux/);
    expect(e.detail).toMatch(/allowDecompressor: true/);
    const lz4 = buildBzImage({
      payload: lz4LegacyCompress(
        buildElf({ entry: 0x1000000n, segments: [{ paddr: 0x1000000, data: Uint8Array.of(0xf4) }] }),
      ),
    });
    expect(bootError(() => prepareKernel(lz4, { decompressOnHost: false })).detail).toMatch(
      /payload is lz4-compressed/,
    );
  });

  it('with allowDecompressor, enters the 64-bit entry at 0x100200 and loads the protected-mode part at 1 MiB', () => {
    const img = buildBzImage({ payload: XZ_PAYLOAD, initSize: 0x800000 });
    const k = prepareKernel(img, { allowDecompressor: true });
    expect(k).toMatchObject({
      kind: 'bzimage',
      payload: 'xz',
      guestDecompresses: true,
      entry: 0x100200,
      low: 0x100000,
      high: 0x900000,
    });
    const writes: Array<[bigint, number]> = [];
    k.load({ write: (gpa, data) => void writes.push([gpa, data.length]) }, 0x1000000);
    expect(writes).toEqual([[0x100000n, img.length - 5 * 512]]);
    expect(bootError(() => k.load({ write: () => undefined }, 0x400000)).detail).toMatch(
      /needs 0x800000 bytes \(init_size\) from 1 MiB, more than 4 MiB/,
    );
  });

  it('refuses a compressed kernel without the 64-bit entry (XLF_KERNEL_64)', () => {
    const e = bootError(() =>
      prepareKernel(buildBzImage({ payload: XZ_PAYLOAD, xloadflags: 0 }), { allowDecompressor: true }),
    );
    expect(e.detail).toMatch(/no 64-bit entry point/);
  });

  it('refuses files that are neither ELF nor bzImage, and empty files', () => {
    expect(bootError(() => prepareKernel(Uint8Array.of(0x4d, 0x5a, 0, 0))).detail).toMatch(
      /neither an ELF vmlinux .* nor a bzImage .*; starts with 4d 5a 00 00/,
    );
    expect(bootError(() => prepareKernel(new Uint8Array(0))).detail).toBe('the file is empty');
  });
});

const bzPath = join(__dirname, '../../.guest/bzImage');
(existsSync(bzPath) ? describe : describe.skip)(
  `the fetched Debian bzImage${existsSync(bzPath) ? '' : ' [skipped: run npm run guest:fetch]'}`,
  () => {
    it('is protocol 2.15 with an LZ4 payload and a 64-bit entry (as measured in the shared notes)', () => {
      const bz = parseBzImage(readFileSync(bzPath));
      expect(bz).toMatchObject({ protocol: 0x20f, setupSects: 39, payloadFormat: 'lz4', has64BitEntry: true });
    });

    it('decompresses on the host to exactly the vmlinux that lz4 -dc extracted (guest:fetch)', () => {
      const k = prepareKernel(readFileSync(bzPath));
      expect(k).toMatchObject({ kind: 'bzimage', payload: 'lz4', entry: 0x1000000 });
      const vmlinux = readFileSync(join(__dirname, '../../.guest/vmlinux'));
      const mine = decompressPayload('lz4', bzImagePayload(parseBzImage(readFileSync(bzPath))))!;
      expect(mine.length).toBe(vmlinux.length);
      expect(Buffer.compare(Buffer.from(mine), vmlinux)).toBe(0);
    });
  },
);
