/**
 * Helper of scripts/fetch-guest.sh (run with ts-node):
 *   payload <bzImage> <out>          writes the bzImage's compressed payload (for `lz4 -dc`)
 *   initramfs <busybox> <out.cpio>   builds an uncompressed newc initramfs whose /init prints
 *                                    "BOOT-OK <uptime>" and reboots
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { bzImagePayload, parseBzImage } from '../src/vmm/bzimage';
import { cpioNewc } from '../src/vmm/cpio';

const INIT = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
read up idle < /proc/uptime
echo "BOOT-OK $up"
/bin/busybox reboot -f
`;

function main(argv: string[]): void {
  const [cmd, input, out] = argv;
  if (cmd === 'payload' && input && out) {
    const bz = parseBzImage(readFileSync(input));
    writeFileSync(out, bzImagePayload(bz));
    console.log(
      `bzImage: protocol 0x${bz.protocol.toString(16)}, setup_sects ${bz.setupSects}, payload ${bz.payloadFormat} ${bz.payloadLength} B at +0x${bz.payloadOffset.toString(16)}`,
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
    console.error('usage: guest-prepare.ts payload <bzImage> <out> | initramfs <busybox> <out.cpio>');
    process.exit(2);
  }
}

main(process.argv.slice(2));
