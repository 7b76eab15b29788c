#!/usr/bin/env node
/**
 * The `kvm-rx` command line: `kvm-rx run` (the embedded demo guest) and `kvm-rx boot` (a Linux
 * kernel), each with `--help`.
 *
 * @module
 */
import { parseArgs } from 'node:util';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { runDemo } from '../vmm/demo';
import { attachConsole } from './console';

const USAGE = `Usage: kvm-rx <command> [options]

Commands:
  run             Run the embedded demo guest: a banner, then it echoes what you type
                  (Ctrl-D resets the guest, Ctrl-A x quits).
  boot            Boot a Linux kernel with its serial console on this terminal
                  (see kvm-rx boot --help).

Options:
  -h, --help      Show help (also after a command).
  -v, --version   Show the version.
`;

const RUN_USAGE = `Usage: kvm-rx run [options]

Runs kvm-rx's demo guest, a small real-mode program whose 16550 UART is an RxJS pipeline in the
vCPU's worker thread. What you type goes to the guest's serial port and the guest echoes it.

Keys: Ctrl-D resets the guest (a clean end, exit status 0); Ctrl-A x quits.
When standard input is not a terminal, its bytes are typed into the guest and the VM stops when
it ends.

Options:
  --timeout <s>   Stop the VM after this many seconds.
  -h, --help      Show this help.
`;

function version(): string {
  for (let dir = __dirname; ; dir = dirname(dir)) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) return (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version;
    if (dirname(dir) === dir) return 'unknown';
  }
}

async function cmdRun(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { help: { type: 'boolean', short: 'h' }, timeout: { type: 'string' } },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(RUN_USAGE);
    return 0;
  }
  const ac = new AbortController();
  if (values.timeout !== undefined) {
    const s = Number(values.timeout);
    if (!Number.isFinite(s) || s <= 0)
      throw Object.assign(new Error(`--timeout must be a positive number of seconds, not ${values.timeout}`), {
        code: 'ERR_INVALID_ARG_VALUE',
      });
    setTimeout(() => ac.abort(), s * 1000).unref();
  }
  const console_ = attachConsole({ onQuit: () => ac.abort() });
  try {
    const outcome = await runDemo({
      output: (bytes) => process.stdout.write(bytes),
      onStart: (send) => console_.connect(send),
      signal: ac.signal,
    });
    process.stderr.write(
      `\r\n[kvm-rx] ${outcome.reset ? 'guest reset the machine' : `VM ${outcome.reason}`} after ${outcome.exits} exits\r\n`,
    );
    return 0;
  } finally {
    console_.close();
  }
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(USAGE);
      return cmd === undefined ? 1 : 0;
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
    default:
      process.stderr.write(`kvm-rx: unknown command '${cmd}'\n\n${USAGE}`);
      return 2;
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
