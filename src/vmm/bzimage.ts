/**
 * bzImage kernels (the x86 Linux boot protocol): the setup header, the protected-mode part
 * loaded at 1 MiB with its 64-bit entry at +0x200, and the payload, which is either compressed
 * (the in-guest decompressor runs first) or an uncompressed ELF vmlinux that can be loaded directly.
 *
 * @module
 */
import { badKernel, hex, unsupportedKernel } from './errors';
import { isElf } from './elf';

/** Offsets of setup-header fields, in the file and in `boot_params` (the same offsets). */
export const HDR = {
  setupSects: 0x1f1,
  syssize: 0x1f4,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  typeOfLoader: 0x210,
  loadflags: 0x211,
  code32Start: 0x214,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  heapEndPtr: 0x224,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  relocatableKernel: 0x234,
  minAlignment: 0x235,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  payloadOffset: 0x248,
  payloadLength: 0x24c,
  prefAddress: 0x258,
  initSize: 0x260,
} as const;

/** `boot_flag`. */
export const BOOT_FLAG = 0xaa55;
/** `"HdrS"` as a little-endian u32. */
export const HDRS_MAGIC = 0x53726448;
/** Oldest boot protocol accepted (2.06: `cmdline_size`, `initrd_addr_max` semantics). */
export const MIN_PROTOCOL = 0x206;
/** `loadflags` bits. */
export const LOADED_HIGH = 0x01;
export const CAN_USE_HEAP = 0x80;
/** `xloadflags` bit: the kernel has the 64-bit entry point at +0x200. */
export const XLF_KERNEL_64 = 0x01;
/** Where the protected-mode kernel is loaded. */
export const BZIMAGE_LOAD_ADDRESS = 0x100000;
/** Offset of the 64-bit entry point in the protected-mode kernel. */
export const ENTRY64_OFFSET = 0x200;

/** What a bzImage payload is, by its magic bytes. */
export type PayloadFormat = 'elf' | 'gzip' | 'bzip2' | 'lzma' | 'xz' | 'lzo' | 'lz4' | 'zstd' | 'unknown';

/** A parsed bzImage. */
export interface BzImage {
  /** Boot protocol version, e.g. `0x20f` (2.15). */
  protocol: number;
  /** Setup sectors (0 in the file means 4). */
  setupSects: number;
  /** File offset of the protected-mode kernel: `(setupSects + 1) * 512`. */
  protectedModeOffset: number;
  /** The protected-mode kernel (the bytes loaded at 1 MiB). */
  protectedMode: Uint8Array;
  /** The setup header bytes as in the file, from 0x1f1 to the end the header's jump declares. */
  setupHeader: Uint8Array;
  loadflags: number;
  /** `xloadflags` (0 before protocol 2.12). */
  xloadflags: number;
  /** Whether the kernel has a 64-bit entry point (`XLF_KERNEL_64`). */
  has64BitEntry: boolean;
  /** The 64-bit entry when the protected-mode kernel is loaded at 1 MiB (`BZIMAGE_LOAD_ADDRESS`): 0x100200. */
  entry64: number;
  kernelAlignment: number;
  relocatable: boolean;
  /** Highest address the initrd may occupy (inclusive). */
  initrdAddrMax: number;
  /** Largest command line, without the NUL. */
  cmdlineSize: number;
  /** Payload offset from the start of the protected-mode kernel (protocol >= 2.08). */
  payloadOffset: number;
  payloadLength: number;
  payloadFormat: PayloadFormat;
  /** Memory the kernel needs from its load address while it decompresses (protocol >= 2.10). */
  initSize: number;
}

/** Identifies a compressed (or ELF) payload by its first bytes. */
export function payloadFormat(b: Uint8Array): PayloadFormat {
  const at = (...m: number[]) => m.every((v, i) => b[i] === v);
  if (isElf(b)) return 'elf';
  if (at(0x1f, 0x8b)) return 'gzip';
  if (at(0x42, 0x5a, 0x68)) return 'bzip2';
  if (at(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)) return 'xz';
  if (at(0x02, 0x21, 0x4c, 0x18)) return 'lz4';
  if (at(0x89, 0x4c, 0x5a, 0x4f)) return 'lzo';
  if (at(0x28, 0xb5, 0x2f, 0xfd)) return 'zstd';
  if (at(0x5d, 0x00, 0x00)) return 'lzma';
  return 'unknown';
}

/** Whether `image` looks like a bzImage (boot flag and "HdrS"). */
export function isBzImage(image: Uint8Array): boolean {
  if (image.length < HDR.header + 4) return false;
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  return v.getUint16(HDR.bootFlag, true) === BOOT_FLAG && v.getUint32(HDR.header, true) === HDRS_MAGIC;
}

/**
 * Parses a bzImage's setup header and locates its protected-mode kernel and payload.
 *
 * Checks the boot flag (0xAA55), the "HdrS" magic, protocol >= 2.06, that the setup sectors and
 * the payload lie inside the file, and reads `cmdline_size`, `initrd_addr_max`, `xloadflags`.
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * const bz = parseBzImage(readFileSync('vmlinuz'));
 * bz.payloadFormat; // 'lz4' for Debian's cloud kernel
 * ```
 * @throws {@link BootImageError} `ERR_KVM_BAD_KERNEL` (truncated, bad magic, payload outside the
 *   file) or `ERR_KVM_UNSUPPORTED_KERNEL` (protocol older than 2.06)
 */
export function parseBzImage(image: Uint8Array): BzImage {
  if (image.length < HDR.header + 4)
    badKernel(`file too short for a bzImage setup header (${image.length} bytes, needs at least ${HDR.header + 4})`);
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const bootFlag = v.getUint16(HDR.bootFlag, true);
  if (bootFlag !== BOOT_FLAG) badKernel(`boot_flag at 0x1fe is ${hex(bootFlag)}, expected 0xaa55 (not a bzImage)`);
  const magic = v.getUint32(HDR.header, true);
  if (magic !== HDRS_MAGIC)
    badKernel(
      `header magic at 0x202 is ${hex(magic)}, expected "HdrS" (0x53726448): not a bzImage, or a pre-2.00 zImage`,
    );
  if (image.length < HDR.version + 2) badKernel('setup header truncated before the protocol version');
  const protocol = v.getUint16(HDR.version, true);
  const pv = `${protocol >> 8}.${(protocol & 0xff).toString().padStart(2, '0')}`;
  if (protocol < MIN_PROTOCOL) unsupportedKernel(`boot protocol ${pv} is older than 2.06`);
  const headerEnd = 0x202 + image[HDR.jump + 1]; // the jump at 0x200 skips the header
  const need = Math.max(
    headerEnd,
    HDR.cmdlineSize + 4,
    protocol >= 0x208 ? HDR.payloadLength + 4 : 0,
    protocol >= 0x20a ? HDR.initSize + 4 : 0,
  );
  if (image.length < need)
    badKernel(`setup header truncated: the file has ${image.length} bytes, protocol ${pv} needs ${need}`);
  const raw = image[HDR.setupSects];
  const setupSects = raw === 0 ? 4 : raw;
  const protectedModeOffset = (setupSects + 1) * 512;
  if (protectedModeOffset >= image.length) {
    badKernel(
      `setup_sects ${setupSects} puts the protected-mode kernel at ${hex(protectedModeOffset)}, past the end of the file (${image.length} bytes): truncated?`,
    );
  }
  const protectedMode = image.subarray(protectedModeOffset);
  const syssize = v.getUint32(HDR.syssize, true) * 16;
  if (syssize > protectedMode.length) {
    badKernel(
      `syssize says ${syssize} bytes of protected-mode code but the file has ${protectedMode.length}: truncated?`,
    );
  }
  let payloadOffset = 0;
  let payloadLength = 0;
  let fmt: PayloadFormat = 'unknown';
  if (protocol >= 0x208) {
    payloadOffset = v.getUint32(HDR.payloadOffset, true);
    payloadLength = v.getUint32(HDR.payloadLength, true);
    if (payloadLength === 0 || payloadOffset + payloadLength > protectedMode.length) {
      badKernel(
        `payload (offset ${hex(payloadOffset)}, length ${payloadLength}) is outside the protected-mode kernel (${protectedMode.length} bytes): truncated?`,
      );
    }
    fmt = payloadFormat(protectedMode.subarray(payloadOffset, payloadOffset + 8));
  }
  const xloadflags = protocol >= 0x20c ? v.getUint16(HDR.xloadflags, true) : 0;
  return {
    protocol,
    setupSects,
    protectedModeOffset,
    protectedMode,
    setupHeader: image.subarray(HDR.setupSects, headerEnd),
    loadflags: image[HDR.loadflags],
    xloadflags,
    has64BitEntry: (xloadflags & XLF_KERNEL_64) !== 0,
    entry64: BZIMAGE_LOAD_ADDRESS + ENTRY64_OFFSET,
    kernelAlignment: v.getUint32(HDR.kernelAlignment, true),
    relocatable: image[HDR.relocatableKernel] !== 0,
    initrdAddrMax: v.getUint32(HDR.initrdAddrMax, true),
    cmdlineSize: v.getUint32(HDR.cmdlineSize, true),
    payloadOffset,
    payloadLength,
    payloadFormat: fmt,
    initSize: protocol >= 0x20a ? v.getUint32(HDR.initSize, true) : 0,
  };
}

/** The payload bytes (compressed kernel, or an uncompressed ELF). */
export function bzImagePayload(bz: BzImage): Uint8Array {
  return bz.protectedMode.subarray(bz.payloadOffset, bz.payloadOffset + bz.payloadLength);
}

/**
 * Why a compressed payload is refused by default, and what to do instead.
 * @internal
 */
export function compressedPayloadAdvice(bz: BzImage): string {
  return (
    `the payload is ${bz.payloadFormat}-compressed (${bz.payloadLength} bytes), which kvm-rx does not decompress on the ` +
    "host (it does LZ4 and gzip). Booting it runs the kernel's own decompressor inside the guest, which is extremely " +
    'slow where guest kernel code is emulated (a PVM host: many minutes for XZ). Boot the uncompressed vmlinux ' +
    'instead: the payload is at file offset ' +
    hex(bz.protectedModeOffset + bz.payloadOffset) +
    ` (${bz.payloadLength} bytes; e.g. \`xz -dc\`, \`zstd -dc\`), ` +
    'or pass `allowDecompressor: true` to boot the bzImage through its 64-bit entry anyway'
  );
}
