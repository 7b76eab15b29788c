/**
 * What kind of virtualisation backs `/dev/kvm` here, and the kernel command line a stock
 * distribution kernel needs on it.
 *
 * On a PVM host (`kvm_pvm`: software virtualisation, no VMX/SVM) guest kernel code runs through
 * KVM's instruction emulator. A stock kernel then needs features the emulator lacks switched off
 * (`noxsave`, `clearcpuid=…`), and skipping a few slow initcalls saves minutes. On VMX/SVM nothing
 * needs working around.
 *
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import { checkString, invalidValue } from '../abi/validate';

/** `pvm`: the kvm_pvm module; `vmx`/`svm`: hardware virtualisation; `unknown`: neither seen. */
export type HostVirtualization = 'pvm' | 'vmx' | 'svm' | 'unknown';

/**
 * Detects the host's virtualisation: `/sys/module/kvm_pvm` means PVM, otherwise the `vmx`/`svm`
 * CPU flag in `/proc/cpuinfo`.
 *
 * @example `if (hostVirtualization() === 'pvm') console.log('guest kernel code is emulated')`
 * @param root Prefix for `/sys` and `/proc` (tests point it at a fixture tree). Default `''`.
 * @returns the kind; `'unknown'` when neither file says (e.g. `/proc` not mounted).
 */
export function hostVirtualization(root = ''): HostVirtualization {
  checkString('root', root);
  if (existsSync(`${root}/sys/module/kvm_pvm`)) return 'pvm';
  let cpuinfo = '';
  try {
    cpuinfo = readFileSync(`${root}/proc/cpuinfo`, 'utf8');
  } catch {
    return 'unknown';
  }
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1] ?? '';
  if (/\bvmx\b/.test(flags)) return 'vmx';
  if (/\bsvm\b/.test(flags)) return 'svm';
  return 'unknown';
}

/** Console on COM1, reset on panic, and reboot through the i8042 (which ends the VM). */
export const BASE_CMDLINE = 'console=ttyS0 panic=-1 reboot=k';

/**
 * The command line that boots Debian's 6.1 cloud kernel fastest on a PVM host (measured in
 * `shared/notes/cloud-kernel-boot.md`): features the emulator lacks are hidden from the kernel,
 * and initcalls that take tens of seconds under emulation (BTF parse, trace-event set-up,
 * self-tests, CMOS and i8042 probes) are skipped.
 */
export const PVM_CMDLINE = [
  `${BASE_CMDLINE} noxsave`,
  'clearcpuid=smap,cx16,fsgsbase,rdrand,rdseed,popcnt,ssse3,sse4_1,sse4_2,invpcid',
  'initcall_blacklist=load_system_certificate_list,inet6_init nokaslr mitigations=off cryptomgr.notests rodata=off',
  'initcall_blacklist=ftrace_check_for_weak_functions,trace_eval_init,tracer_init_tracefs',
  'initcall_blacklist=cubictcp_register,bpf_tcp_ca_kfunc_init,kfunc_init,bpf_prog_test_run_init,bpf_rstat_kfunc_init,bpf_key_sig_kfuncs_init,blake2s_mod_init,cmos_init,i8042_init,crypto_kdf108_init',
].join(' ');

/** With hardware virtualisation only the useless legacy probes are skipped. */
export const HW_CMDLINE = `${BASE_CMDLINE} initcall_blacklist=i8042_init,cmos_init`;

/**
 * The default command line for a stock distribution kernel on this kind of host: where guest
 * kernel code is emulated (`pvm`, and `unknown` to be safe), `console=ttyS0 panic=-1 reboot=k`
 * with the features the emulator lacks hidden and the initcalls that take tens of seconds under
 * emulation skipped (`PVM_CMDLINE`); on VMX/SVM the same console and reset options with only the
 * i8042 and CMOS probes skipped (`HW_CMDLINE`).
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * const linux = bootLinux({ kernel: readFileSync('vmlinuz'), cmdline: stockKernelCmdline(hostVirtualization()) });
 * ```
 * @throws `TypeError` (`ERR_INVALID_ARG_VALUE`) for a kind that is not a {@link HostVirtualization}
 */
export function stockKernelCmdline(host: HostVirtualization): string {
  switch (host) {
    case 'pvm':
    case 'unknown':
      return PVM_CMDLINE;
    case 'vmx':
    case 'svm':
      return HW_CMDLINE;
    default:
      return invalidValue('host', "must be 'pvm', 'vmx', 'svm' or 'unknown'", host);
  }
}
