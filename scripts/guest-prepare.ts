/**
 * Helper of scripts/fetch-guest.sh (run with ts-node):
 *   vmlinux <bzImage> <out>          writes the vmlinux inside the bzImage (its LZ4 or gzip payload
 *                                    decompressed by kvm-rx's own decoder, size trailer checked)
 *   initramfs <busybox> <out.cpio>   builds an uncompressed newc initramfs whose /init prints
 *                                    "BOOT-OK <uptime>" and reboots
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { bzImagePayload, parseBzImage } from '../src/vmm/bzimage';
import { decompressPayload } from '../src/vmm/decompress';
import { cpioNewc } from '../src/vmm/cpio';

const INIT = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
read up idle < /proc/uptime
echo "BOOT-OK $up"
/bin/busybox reboot -f
`;

function main(argv: string[]): void {
  const [cmd, input, out] = argv;
  if (cmd === 'vmlinux' && input && out) {
    const bz = parseBzImage(readFileSync(input));
    const raw = bzImagePayload(bz);
    const vmlinux = bz.payloadFormat === 'elf' ? raw : decompressPayload(bz.payloadFormat, raw);
    if (vmlinux === undefined) {
      console.error(`the payload is ${bz.payloadFormat}-compressed: not decoded here (LZ4, gzip and plain ELF are)`);
      process.exit(1);
    }
    writeFileSync(out, vmlinux);
    console.log(
      `bzImage: protocol 0x${bz.protocol.toString(16)}, setup_sects ${bz.setupSects}, payload ${bz.payloadFormat} ${bz.payloadLength} B at +0x${bz.payloadOffset.toString(16)} → vmlinux ${vmlinux.length} B`,
    );
  } else if (cmd === 'initramfs' && input && out) {
    const cpio = cpioNewc([
      { type: 'dir', path: 'bin' },
      { type: 'dir', path: 'dev' },
      { type: 'dir', path: 'proc' },
      { type: 'dir', path: 'sys' },
      { type: 'chardev', path: 'dev/console', major: 5, minor: 1 },
      { type: 'file', path: 'bin/busybox', data: readFileSync(input), mode: 0o755 },
      { type: 'symlink', path: 'bin/sh', target: 'busybox' },
      { type: 'file', path: 'init', data: INIT, mode: 0o755 },
    ]);
    writeFileSync(out, cpio);
    console.log(`initramfs: ${cpio.length} B (uncompressed newc)`);
  } else {
    console.error('usage: guest-prepare.ts vmlinux <bzImage> <out> | initramfs <busybox> <out.cpio>');
    process.exit(2);
  }
}

main(process.argv.slice(2));
