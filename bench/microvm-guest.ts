/**
 * The VM side of `bench/microvm.ts`, run inside a network namespace: boots the guest kernel with
 * virtio-net on a TAP (`ip=`), virtio-rng and an init that loops without system calls, prints
 * `ready <guest seconds to Run /init>` once the kernel has started it, and stops the VM when its
 * standard input ends (or after 600 s).
 *
 *   ip netns exec <ns> node -r ts-node/register/transpile-only bench/microvm-guest.ts \
 *     <bzImage> <tap> <guest-ip> <host-ip> <cpus>
 */
import { readFileSync } from 'node:fs';
import { virtioNet } from '../src/devices/virtio/net';
import { virtioRng } from '../src/devices/virtio/rng';
import { loopInitramfs } from '../src/testing/loop-init';
import { hostVirtualization, stockKernelCmdline } from '../src/vmm/host';
import { bootLinux } from '../src/vmm/linux';
import { Tap } from '../src/wrappers/tap';

const [kernelPath, tapName, guestIp, hostIp, cpus] = process.argv.slice(2);

const tap = Tap.open(tapName);
const ac = new AbortController();
let text = '';
let ready = false;
const vm = bootLinux({
  kernel: readFileSync(kernelPath),
  initrd: loopInitramfs(),
  cpus: Number(cpus ?? 1),
  cmdline: `${stockKernelCmdline(hostVirtualization())} ip=${guestIp}::${hostIp}:255.255.255.0::eth0:off`,
  output: (b) => {
    text += Buffer.from(b).toString('latin1');
    const m = /\[\s*([\d.]+)\] Run \/init as init process/.exec(text);
    if (!ready && m && text.includes('IP-Config: Complete')) {
      ready = true;
      process.stdout.write(`ready ${m[1]}\n`);
    }
  },
  virtio: [virtioNet({ backend: tap }), virtioRng()],
  signal: ac.signal,
});
process.stdin.on('end', () => ac.abort());
process.stdin.resume();
const bound = setTimeout(() => ac.abort(), 600_000);
void vm.done.then((o) => {
  clearTimeout(bound);
  tap.close();
  process.stdout.write(`done ${o.reason}${o.error ? ` ${o.error.message}` : ''}\n`);
});
