#!/usr/bin/env node
/**
 * The `kvm-rx` command line: `kvm-rx run` (the embedded demo guest), `kvm-rx boot` (a Linux
 * kernel), `kvm-rx restore` (a snapshot) and `kvm-rx doctor` (checks this host), each with
 * `--help`. Bad usage exits 2.
 *
 * @module
 */
import { parseArgs } from 'node:util';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { startDemo } from '../vmm/demo';
import { demoOnConsole } from './demo-console';
import { GDB_OPTIONS, parseGdbOptions, type GdbCli } from './gdb';

const USAGE = `Usage: kvm-rx <command> [options]

Commands:
  run             Run the embedded demo guest: a banner, then it echoes what you type
                  (Ctrl-D resets the guest, Ctrl-A x quits).
  boot            Boot a Linux kernel with its serial console on this terminal
                  (see kvm-rx boot --help).
  restore         Resume a VM from a snapshot file written by kvm-rx boot --snapshot
                  (see kvm-rx restore --help).
  doctor          Check this host for kvm-rx: /dev/kvm access, VMX/SVM/PVM, KVM API,
                  capabilities, ioeventfd/irqfd delivery, tun, netns, huge pages
                  (--json for a machine-readable report; see kvm-rx doctor --help).

Options:
  -h, --help      Show help (also after a command).
  -v, --version   Show the version.
`;

const RUN_USAGE = `Usage: kvm-rx run [options]

Runs kvm-rx's demo guest, a small real-mode program whose 16550 UART is an RxJS pipeline in the
vCPU's worker thread. What you type goes to the guest's serial port and the guest echoes it.

Keys: Ctrl-D resets the guest (a clean end, exit status 0); Ctrl-A x quits; Ctrl-A s writes
a snapshot.
When standard input is not a terminal, its bytes are typed into the guest; once it has ended, the
VM stops as soon as the guest has gone quiet (no output for half a second: it has echoed what it
was given), e.g. printf 'abc' | kvm-rx run.

Options:
  --timeout <s>   Stop the VM after this many seconds.
  --snapshot <f>  Where Ctrl-A s writes a snapshot (default kvm-rx-<pid>-<n>.snap here);
                  resume it with kvm-rx restore <f>.
  --gdb <where>   Serve gdb on 127.0.0.1:<port> (a number) or on the Unix socket <path>:
                  gdb -ex 'target remote :<port>'. A gdb connecting stops the guest;
                  detach or quit lets it run on. See docs/debugging.md.
  --gdb-wait      Keep the guest stopped before its first instruction until gdb connects.
  -h, --help      Show this help.

Exit status: 0 when the guest reset the machine or the VM was stopped (Ctrl-A x, end of
input, --timeout); 1 on an error; 2 for bad usage.
`;

class UsageError extends Error {}

function usageError(cmd: string, message: string): number {
  process.stderr.write(`${cmd}: ${message}\nTry '${cmd} --help'.\n`);
  return 2;
}

function version(): string {
  for (let dir = __dirname; ; dir = dirname(dir)) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) return (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version;
    if (dirname(dir) === dir) return 'unknown';
  }
}

async function cmdRun(argv: string[]): Promise<number> {
  let timeoutS: number | undefined;
  let snapshotPath: string | undefined;
  let gdb: GdbCli | undefined;
  try {
    let values;
    try {
      ({ values } = parseArgs({
        args: argv,
        options: {
          help: { type: 'boolean', short: 'h' },
          timeout: { type: 'string' },
          snapshot: { type: 'string' },
          ...GDB_OPTIONS,
        },
        strict: true,
        allowPositionals: false,
      }));
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    if (values.help) {
      process.stdout.write(RUN_USAGE);
      return 0;
    }
    if (values.snapshot !== undefined) snapshotPath = resolve(values.snapshot);
    const g = parseGdbOptions(values);
    if (typeof g === 'string') throw new UsageError(g);
    gdb = g;
    if (values.timeout !== undefined) {
      timeoutS = Number(values.timeout);
      if (!Number.isFinite(timeoutS) || timeoutS <= 0)
        throw new UsageError(`--timeout must be a positive number of seconds, not ${values.timeout}`);
    }
  } catch (e) {
    if (e instanceof UsageError) return usageError('kvm-rx run', e.message);
    throw e;
  }
  return demoOnConsole(
    gdb?.wait === true ? (o) => startDemo({ ...o, paused: true }) : startDemo,
    timeoutS,
    snapshotPath,
    gdb,
  );
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case undefined:
      return usageError('kvm-rx', 'no command given (run, boot, restore or doctor)');
    case '-h':
    case '--help':
      process.stdout.write(USAGE);
      return 0;
    case '-v':
    case '--version':
      process.stdout.write(`${version()}\n`);
      return 0;
    case 'run':
      return cmdRun(rest);
    case 'boot': {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { cmdBoot } = require('./boot') as { cmdBoot: (argv: string[]) => Promise<number> };
      return cmdBoot(rest);
    }
    case 'restore': {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { cmdRestore } = require('./restore') as { cmdRestore: (argv: string[]) => Promise<number> };
      return cmdRestore(rest);
    }
    case 'doctor': {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { cmdDoctor } = require('./doctor') as { cmdDoctor: (argv: string[]) => Promise<number> };
      return cmdDoctor(rest);
    }
    default:
      return usageError('kvm-rx', cmd.startsWith('-') ? `unknown option '${cmd}'` : `unknown command '${cmd}'`);
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      const err = e as { code?: string; message?: string };
      process.stderr.write(`kvm-rx: ${err.message ?? String(e)}${err.code ? ` (${err.code})` : ''}\n`);
      process.exitCode = 1;
    },
  );
}

export { main };
