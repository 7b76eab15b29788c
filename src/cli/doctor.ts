/**
 * `kvm-rx doctor`: checks this host for kvm-rx (the command-line side of `checkHost`).
 *
 * @module
 */
import { parseArgs } from 'node:util';
import { checkHost, formatReport, reportJson } from '../vmm/doctor';

/** Exit statuses of `kvm-rx doctor`. */
export const DOCTOR_STATUS = { ok: 0, failed: 1, usage: 2 } as const;

export const DOCTOR_USAGE = `Usage: kvm-rx doctor [options]

Checks what this host offers kvm-rx, as libvirt's virt-host-validate does for QEMU: /dev/kvm
access, the kind of virtualization (VMX, SVM, or PVM: software nested virtualization) and the
CPU, the KVM API version, the capabilities kvm-rx relies on, vCPU limits, CPUID and MSR lists,
whether ioeventfds (PIO and MMIO) and irqfds deliver (a tiny real-mode guest and an in-kernel
irqchip), /dev/net/tun, network namespaces and huge pages. Each probe is short and closes what it
opened; nothing persistent is created and no existing interface is touched.

Each check prints one line ([ ok ], [warn], [FAIL], [skip]) and, for what is missing, a remedy
under it; the last line is a one-line summary. See docs/doctor.md.

Options:
  --json             Print the report as JSON instead (checks, summary, ok, facts).
  --kvm-path <file>  Check another KVM device node instead of /dev/kvm.
  -h, --help         Show this help.

Exit status:
  0    no check failed (warnings allowed)
  1    at least one check failed
  2    bad usage
`;

/**
 * `kvm-rx doctor …`: prints the report and returns the exit status (see {@link DOCTOR_USAGE}).
 *
 * @example `process.exitCode = await cmdDoctor(['--json'])`
 */
export async function cmdDoctor(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        help: { type: 'boolean', short: 'h' },
        json: { type: 'boolean' },
        'kvm-path': { type: 'string' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    process.stderr.write(`kvm-rx doctor: ${(e as Error).message}\nTry 'kvm-rx doctor --help'.\n`);
    return DOCTOR_STATUS.usage;
  }
  if (values.help) {
    process.stdout.write(DOCTOR_USAGE);
    return DOCTOR_STATUS.ok;
  }
  const kvmPath = values['kvm-path'];
  if (kvmPath === '') {
    process.stderr.write(`kvm-rx doctor: --kvm-path needs a path\nTry 'kvm-rx doctor --help'.\n`);
    return DOCTOR_STATUS.usage;
  }
  const report = await checkHost(kvmPath === undefined ? {} : { kvmPath });
  process.stdout.write(values.json ? reportJson(report) : formatReport(report));
  return report.ok ? DOCTOR_STATUS.ok : DOCTOR_STATUS.failed;
}
