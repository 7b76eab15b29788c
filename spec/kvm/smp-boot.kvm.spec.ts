/**
 * SMP on real KVM: the guest kernel with two vCPUs (an MP table, KVM's PV IPI features hidden,
 * the AP started by the guest's INIT/SIPI through the in-kernel LAPIC), the legacy devices served
 * once for both vCPUs on the main thread, a virtio device's interrupt through the IOAPIC.
 */
import { readFileSync } from 'node:fs';
import { virtioRng } from '../../src/devices/virtio/rng';
import { hostVirtualization, stockKernelCmdline } from '../../src/vmm/host';
import { bootLinux, type LinuxVm } from '../../src/vmm/linux';
import { describeGuestKernel } from '../helpers/guest-kernel';

describeGuestKernel('SMP: the guest kernel on two vCPUs', (kernelPath) => {
  jest.setTimeout(600_000); // a bound on a boot that takes seconds to minutes by host, not a speed claim

  it('brings up both CPUs from the MP table and boots on with virtio and the console working', async () => {
    const serial: Buffer[] = [];
    let requests = 0;
    const vm = bootLinux({
      kernel: readFileSync(kernelPath),
      cmdline: stockKernelCmdline(hostVirtualization()),
      cpus: 2,
      output: (b) => serial.push(Buffer.from(b)),
      virtio: [virtioRng({ fill: (b) => (requests++, b.fill(0x3c)) })],
    });
    expect(vm.cpus).toBe(2);
    const outcome = await vm.done;
    const console0 = Buffer.concat(serial).toString('latin1');
    expect({ reason: outcome.reason, resetBy: outcome.resetBy, error: outcome.error }).toEqual({
      reason: 'reset',
      resetBy: 'i8042',
      error: undefined,
    });
    expect(console0).toContain('found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]');
    expect(console0).toContain('IOAPIC[0]: apic_id 2, version 17, address 0xfec00000');
    expect(console0).toContain('smpboot: Allowing 2 CPUs, 0 hotplug CPUs');
    expect(console0).toContain('smp: Brought up 1 node, 2 CPUs');
    expect(console0).toContain('Kernel panic - not syncing: VFS: Unable to mount root fs');
    expect(requests).toBeGreaterThan(0); // the virtio interrupt reached the guest through the IOAPIC
    expect(vm.virtio[0].failures).toBe(0);
  });

  it('pauses both vCPUs mid-boot, saves their KVM state and the VM’s, and resumes to the end', async () => {
    let text = '';
    let saved: ReturnType<LinuxVm['saveState']> | undefined;
    let pausing: Promise<void> | undefined;
    const vm: LinuxVm = bootLinux({
      kernel: readFileSync(kernelPath),
      cmdline: stockKernelCmdline(hostVirtualization()),
      cpus: 2,
      output: (b) => {
        text += Buffer.from(b).toString('latin1');
        if (pausing === undefined && text.includes('smp: Brought up 1 node, 2 CPUs')) {
          pausing = (async () => {
            await vm.pause();
            saved = vm.saveState();
            vm.resume();
          })();
        }
      },
    });
    expect(() => vm.saveState()).toThrow(/not paused/);
    const outcome = await vm.done;
    await pausing;
    expect(outcome.reason).toBe('reset'); // it went on to its end after the pause
    expect(saved?.vcpus.map((v) => v.id)).toEqual([0, 1]);
    // Both CPUs were up: in the kernel (its text is mapped at 0xffffffff8…), the AP started.
    for (const v of saved!.vcpus) expect(v.regs.rip >= 0xffff_ffff_8000_0000n).toBe(true);
    expect([0, 3]).toContain(saved!.vcpus[1].mpState.mpState); // RUNNABLE or HALTED, not waiting for SIPI
    expect(saved!.vm.irqchips).toHaveLength(3);
    expect(saved!.vm.pit2).toBeDefined();
    expect(structuredClone(saved)).toEqual(saved);
  });

  it('refuses more than one CPU without the in-kernel irqchip, before making a VM', () => {
    expect(() => bootLinux({ kernel: readFileSync(kernelPath), cpus: 2, irqchip: false })).toThrow(
      /config\.irqchip.*must not be false with more than one CPU/,
    );
    expect(() => bootLinux({ kernel: readFileSync(kernelPath), cpus: 65 })).toThrow(RangeError);
  });
});
