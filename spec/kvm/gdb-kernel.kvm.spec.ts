/**
 * Debian's gdb against the micro-VM guest kernel, with the symbols of its vmlinux (issue 13's
 * end-to-end check): the VM waits for gdb before its first instruction; gdb breaks at
 * `start_kernel`, sees `$pc` there, a backtrace, the registers and the code, steps, sets a
 * hardware watchpoint, detaches, and the kernel boots on to `Run /init`.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { loopInitramfs } from '../../src/testing/loop-init';
import { hostVirtualization, stockKernelCmdline } from '../../src/vmm/host';
import { bootLinux, type LinuxVm } from '../../src/vmm/linux';
import { attachGdb, type GdbServer } from '../../src/vmm/gdb/server';
import { gdbAvailable, runGdb } from '../helpers/gdb';
import { describeGuestKernel } from '../helpers/guest-kernel';
import { kvmVendor } from '../helpers/kvm';

const describeIfGdb: typeof describeGuestKernel =
  'reason' in gdbAvailable
    ? (
        (why: string) => (name, fn) =>
          describe.skip(`${name} [skipped: ${why}]`, () => fn(''))
      )(gdbAvailable.reason)
    : describeGuestKernel;

/** System.map's address of `symbol`. */
function symbolAddress(kernelPath: string, symbol: string): bigint {
  const map = readFileSync(join(dirname(kernelPath), 'System.map'), 'utf8');
  const m = new RegExp(`^([0-9a-f]+) \\w ${symbol}$`, 'm').exec(map);
  if (!m) throw new Error(`${symbol} is not in System.map`);
  return BigInt(`0x${m[1]}`);
}

/** Whether a data watchpoint can fire in guest kernel code here (not on PVM: measured, docs/debugging.md). */
const watchFires = kvmVendor !== 'pvm';

describeIfGdb('gdb against the guest kernel (vmlinux with symbols)', (kernelPath) => {
  // Bounds, not speed claims: the boot to Run /init takes seconds to minutes by host.
  jest.setTimeout(900_000);
  let vm: LinuxVm | undefined;
  let server: GdbServer | undefined;
  afterAll(async () => {
    await server?.close();
    await vm?.stop();
  });

  it('breaks at start_kernel, steps, watches, detaches, and the kernel boots on to Run /init', async () => {
    const vmlinux = join(dirname(kernelPath), 'vmlinux');
    if (!existsSync(vmlinux))
      throw new Error(`${vmlinux} is missing: scripts/guest-kernel.sh keeps it next to the bzImage`);
    const startKernel = symbolAddress(kernelPath, 'start_kernel');
    let console0 = '';
    vm = bootLinux({
      kernel: readFileSync(kernelPath),
      initrd: loopInitramfs(),
      cmdline: stockKernelCmdline(hostVirtualization()),
      paused: true,
      output: (b) => (console0 += Buffer.from(b).toString('latin1')),
    });
    server = await attachGdb(vm, { listen: 0, wait: true });
    const { port } = server.address as { port: number };
    const r = await runGdb(
      [
        `target remote 127.0.0.1:${port}`,
        'break start_kernel',
        'continue',
        'p $pc',
        'bt',
        'info registers',
        'x/4i $pc',
        'stepi',
        'p $pc',
        'delete',
        'set breakpoint always-inserted on', // (so that monitor breakpoints sees it in place)
        'watch *(long *)&jiffies',
        'monitor breakpoints',
        'info watchpoints',
        // Data watchpoints never fire on PVM, where kernel code is emulated (docs/debugging.md);
        // where the CPU runs it, the timer's first tick writes jiffies.
        ...(watchFires ? ['continue', 'p $pc'] : []),
        'delete',
        'detach',
      ],
      { file: vmlinux, timeoutMs: 600_000 },
    );
    const out = r.stdout;
    expect({ status: r.status, signal: r.signal }).toEqual({ status: 0, signal: null });
    const hex = startKernel.toString(16);
    expect(out).toContain(`Breakpoint 1 at 0x${hex}`);
    expect(out).toMatch(new RegExp(`Breakpoint 1, 0x0*${hex} in start_kernel \\(\\)`));
    expect(out).toMatch(new RegExp(`\\$1 = \\(void \\(\\*\\)\\(\\)\\) 0x0*${hex} <start_kernel>`));
    expect(out).toMatch(/#0 +0x[0-9a-f]+ in start_kernel \(\)/);
    expect(out).toMatch(/#1 +0x[0-9a-f]+ in \w+ \(\)/); // its caller (secondary_startup_64)
    expect(out).toMatch(new RegExp(`^rip +0x${hex} +0x${hex} <start_kernel>`, 'm'));
    expect(out).toMatch(/^rsp +0xffffffff[0-9a-f]+/m); // on the kernel's stack
    expect(out).toMatch(/^cr0 +0x8\w+/m); // paging on
    expect(out).toMatch(/^cs +0x10 /m);
    expect(out).toMatch(new RegExp(`=> 0x${hex} <start_kernel>:\\s+\\w+`));
    expect(out).toMatch(/<start_kernel\+\d+>:/); // three more instructions
    expect(out).toMatch(/\$2 = \(void \(\*\)\(\)\) 0x[0-9a-f]+ <start_kernel\+\d+>/); // stepi moved on
    expect(out).toContain('Hardware watchpoint 2: *(long *)&jiffies');
    expect(out).toMatch(/2 +hw watchpoint +keep +y +\*\(long \*\)&jiffies/);
    const jiffies = symbolAddress(kernelPath, 'jiffies').toString(16);
    expect(r.stderr).toMatch(new RegExp(`dr\\d: write 0x${jiffies} len 8 \\(Z2\\)`)); // in a debug register
    if (watchFires)
      expect(out).toMatch(/Hardware watchpoint 2: \*\(long \*\)&jiffies\s+Old value = -?\d+\s+New value = -?\d+/);
    expect(out).toContain('[Inferior 1 (Remote target) detached]');
    expect(server.sessions).toEqual(['detach']);
    // The kernel goes on booting, to its init.
    const t0 = Date.now();
    while (!console0.includes('Run /init as init process')) {
      if (Date.now() - t0 > 600_000) throw new Error(`no Run /init after detach; console: ${console0.slice(-2000)}`);
      const ended = await Promise.race([
        vm.done.then(() => true),
        new Promise((res) => setTimeout(() => res(false), 200)),
      ]);
      if (ended) throw new Error(`the VM ended: ${JSON.stringify(await vm.done)}; console: ${console0.slice(-2000)}`);
    }
  });
});
