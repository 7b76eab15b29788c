/**
 * The micro-VM guest kernel with virtio-mmio devices, on real KVM: the kernel finds the devices
 * on its command line, negotiates, sets up the queues (registers served in the vCPU's thread),
 * notifies through ioeventfds and takes interrupts through irqfds. With no root device it panics,
 * and `panic=-1 reboot=k` resets the machine: that is the end of each boot here.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { virtioBlk } from '../../src/devices/virtio/blk';
import { virtioConsole } from '../../src/devices/virtio/console';
import { virtioRng } from '../../src/devices/virtio/rng';
import { hostVirtualization, stockKernelCmdline } from '../../src/vmm/host';
import { bootLinux } from '../../src/vmm/linux';
import { describeGuestKernel } from '../helpers/guest-kernel';

const PANIC = 'Kernel panic - not syncing: VFS: Unable to mount root fs';

describeGuestKernel('virtio-mmio devices under the guest kernel', (kernelPath) => {
  const cmdline = `${stockKernelCmdline(hostVirtualization())} console=hvc0`;
  jest.setTimeout(600_000); // a bound, not a speed claim: boots take seconds to minutes by host

  it('virtio-rng feeds the kernel; virtio-console carries printk as hvc0; both end in DRIVER_OK', async () => {
    const serial: Buffer[] = [];
    const hvc: Buffer[] = [];
    const requests: number[] = [];
    const logged: string[] = [];
    const vm = bootLinux({
      kernel: readFileSync(kernelPath),
      cmdline,
      output: (b) => serial.push(Buffer.from(b)),
      virtio: [
        virtioRng({
          fill: (b) => {
            requests.push(b.length);
            b.fill(0xa5);
          },
        }),
        virtioConsole({ output: (b) => hvc.push(Buffer.from(b)) }),
      ],
      virtioLog: (m) => logged.push(m),
    });
    expect(vm.virtio.map((d) => d.cmdline)).toEqual([
      'virtio_mmio.device=4K@0xd0000000:5',
      'virtio_mmio.device=4K@0xd0001000:6',
    ]);
    const outcome = await vm.done;
    const console0 = Buffer.concat(serial).toString('latin1');
    const hvc0 = Buffer.concat(hvc).toString('latin1');
    expect({ reason: outcome.reason, resetBy: outcome.resetBy, error: outcome.error }).toEqual({
      reason: 'reset',
      resetBy: 'i8042',
      error: undefined,
    });
    expect(console0).toContain('virtio-mmio: Registering device virtio-mmio.0 at 0xd0000000-0xd0000fff, IRQ 5.');
    expect(console0).toContain('virtio-mmio: Registering device virtio-mmio.1 at 0xd0001000-0xd0001fff, IRQ 6.');
    expect(console0).toContain('printk: console [hvc0] enabled');
    // After hvc0 registers, printk goes to both consoles: the panic came through the TX queue.
    expect(hvc0).toContain(PANIC);
    expect(requests.length).toBeGreaterThan(0);
    expect(requests.every((n) => n > 0 && n <= 4096)).toBe(true);
    expect(vm.virtio.map((d) => [d.status, d.failures])).toEqual([
      [15, 0],
      [15, 0],
    ]);
    expect(vm.virtio.every((d) => d.closed)).toBe(true);
    expect(logged).toEqual([]);
  });

  it('a device whose backend fails goes to DEVICE_NEEDS_RESET alone: the other device and the boot go on', async () => {
    const hvc: Buffer[] = [];
    const logged: string[] = [];
    const vm = bootLinux({
      kernel: readFileSync(kernelPath),
      cmdline,
      virtio: [
        virtioRng({
          fill: () => {
            throw new Error('entropy source is gone');
          },
        }),
        virtioConsole({ output: (b) => hvc.push(Buffer.from(b)) }),
      ],
      virtioLog: (m) => logged.push(m),
    });
    const outcome = await vm.done;
    expect(outcome.reason).toBe('reset');
    expect(Buffer.concat(hvc).toString('latin1')).toContain(PANIC);
    const [rng, hvcDevice] = vm.virtio;
    expect(rng.failures).toBe(1);
    expect(rng.status & 64).toBe(64); // DEVICE_NEEDS_RESET
    expect(logged).toEqual(['virtio-rng at 0xd0000000: entropy source is gone; the device needs a reset']);
    expect([hvcDevice.status, hvcDevice.failures]).toEqual([15, 0]);
  });

  describe('virtio-blk with an ext4 root', () => {
    let dir: string;
    let image: string;
    beforeEach(() => {
      dir = mkdtempSync(join(tmpdir(), 'kvmrx-root-'));
      image = join(dir, 'root.ext4');
      // mkfs.ext4 is in e2fsprogs (Debian: priority required). No journal: one superblock to look at.
      const r = spawnSync('mkfs.ext4', ['-q', '-F', '-O', '^has_journal', image, '16M'], { encoding: 'utf8' });
      expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    });
    afterEach(() => rmSync(dir, { recursive: true, force: true }));

    /** ext4's mount count (s_mnt_count, at 0x34 in the superblock at byte 1024). */
    const mountCount = (): number => readFileSync(image).readUInt16LE(1024 + 0x34);

    const boot = async (root: string, readOnly: boolean) => {
      const serial: Buffer[] = [];
      const errors: string[] = [];
      const vm = bootLinux({
        kernel: readFileSync(kernelPath),
        cmdline: `${stockKernelCmdline(hostVirtualization())} root=/dev/vda ${root}`,
        output: (b) => serial.push(Buffer.from(b)),
        virtio: [virtioBlk({ path: image, readOnly, onError: (e) => errors.push(e) })],
        virtioLog: (m) => errors.push(m),
      });
      const outcome = await vm.done;
      return { outcome, console: Buffer.concat(serial).toString('latin1'), errors, device: vm.virtio[0] };
    };

    it('the kernel mounts it read-write, and the superblock it writes back reaches the file', async () => {
      expect(mountCount()).toBe(0);
      const { outcome, console, errors, device } = await boot('rw', false);
      expect(outcome.reason).toBe('reset');
      expect(console).toContain('virtio_blk virtio0: [vda] 32768 512-byte logical blocks');
      expect(console).toContain('VFS: Mounted root (ext4 filesystem) on device 254:0.');
      expect(console).toContain('Kernel panic - not syncing: No working init found.');
      expect(mountCount()).toBe(1);
      expect(errors).toEqual([]);
      expect([device.status, device.failures]).toEqual([15, 0]);
    });

    it('read-only: the kernel sees a read-only disk, mounts it read-only, and the file is unchanged', async () => {
      const before = readFileSync(image);
      const { outcome, console, errors } = await boot('ro', true);
      expect(outcome.reason).toBe('reset');
      expect(console).toContain('VFS: Mounted root (ext4 filesystem) readonly on device 254:0.');
      expect(readFileSync(image).equals(before)).toBe(true);
      expect(errors).toEqual([]);
    });
  });
});
