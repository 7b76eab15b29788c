/**
 * Host detection and the stock-kernel command line it picks.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BASE_CMDLINE,
  HW_CMDLINE,
  PVM_CMDLINE,
  hostVirtualization,
  stockKernelCmdline,
  type HostVirtualization,
} from '../../src/vmm/host';

describe('hostVirtualization', () => {
  let root: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'kvm-rx-host-'));
    mkdirSync(join(root, 'proc'));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  const cpuinfo = (flags: string) =>
    writeFileSync(join(root, 'proc/cpuinfo'), `processor\t: 0\nmodel name\t: x\nflags\t\t: fpu ${flags} sse2\n\n`);

  it('says pvm when the kvm_pvm module is loaded, whatever the CPU flags say', () => {
    mkdirSync(join(root, 'sys/module/kvm_pvm'), { recursive: true });
    cpuinfo('vmx');
    expect(hostVirtualization(root)).toBe('pvm');
  });

  it.each([
    ['vmx', 'vme vmx ept'],
    ['svm', 'lm svm npt'],
    ['unknown', 'lm nx'],
  ] as const)('says %s from the CPU flags %j', (kind, flags) => {
    cpuinfo(flags);
    expect(hostVirtualization(root)).toBe(kind);
  });

  it('does not take a flag name inside another word (vmxe, svm_lock) for the flag', () => {
    cpuinfo('vmxe svm_lock');
    expect(hostVirtualization(root)).toBe('unknown');
  });

  it('says unknown when /proc/cpuinfo cannot be read', () => {
    expect(hostVirtualization(root)).toBe('unknown');
  });

  it('agrees with this machine: pvm exactly when /sys/module/kvm_pvm exists', () => {
    expect(hostVirtualization() === 'pvm').toBe(existsSync('/sys/module/kvm_pvm'));
  });

  it('rejects a root that is not a string', () => {
    expect(() => hostVirtualization(1 as unknown as string)).toThrow(
      expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }),
    );
  });
});

describe('stockKernelCmdline', () => {
  it('gives the PVM workarounds where kernel code is emulated (and when unsure)', () => {
    expect(stockKernelCmdline('pvm')).toBe(PVM_CMDLINE);
    expect(stockKernelCmdline('unknown')).toBe(PVM_CMDLINE);
    expect(PVM_CMDLINE).toMatch(/\bnoxsave\b/);
    expect(PVM_CMDLINE).toMatch(/\bclearcpuid=[^ ]*\bcx16\b/);
  });

  it('gives only the probe skips on VMX/SVM', () => {
    expect(stockKernelCmdline('vmx')).toBe(HW_CMDLINE);
    expect(stockKernelCmdline('svm')).toBe(HW_CMDLINE);
    expect(HW_CMDLINE).not.toMatch(/clearcpuid|noxsave/);
  });

  it('always keeps the console on COM1, panic=-1 and reboot=k, so that the VM ends on reset', () => {
    for (const cmd of [PVM_CMDLINE, HW_CMDLINE]) expect(cmd.startsWith(BASE_CMDLINE)).toBe(true);
    expect(BASE_CMDLINE.split(' ')).toEqual(['console=ttyS0', 'panic=-1', 'reboot=k']);
  });

  it('fits the kernel cmdline_size of 2047 bytes', () => {
    expect(PVM_CMDLINE.length).toBeLessThan(2048);
  });

  it('rejects a kind it does not know', () => {
    expect(() => stockKernelCmdline('tdx' as HostVirtualization)).toThrow(
      expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' }),
    );
  });
});
