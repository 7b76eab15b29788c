/**
 * `--gdb <port|path>` and `--gdb-wait` of `kvm-rx boot` and `kvm-rx run`.
 *
 * @module
 */
import { attachGdb, parseGdbListen, type GdbServer } from '../vmm/gdb/server';
import type { Debuggable } from '../vmm/gdb/kvm-target';

/** What the gdb options asked for. */
export interface GdbCli {
  listen: string;
  wait: boolean;
}

/** The parseArgs options. */
export const GDB_OPTIONS = {
  gdb: { type: 'string' },
  'gdb-wait': { type: 'boolean' },
} as const;

/** The lines the usage texts share. */
export const GDB_USAGE = `  --gdb <port|path>  Serve gdb on 127.0.0.1:<port> (or [::1]:<port>) or on the Unix socket
                     <path>: gdb -ex 'target remote :<port>'. Each vCPU is a thread. A gdb
                     connecting stops the guest; detach or quit lets it run on. See
                     docs/debugging.md.
  --gdb-wait         Keep the guest stopped before its first instruction until gdb connects.
`;

/** @internal Checks --gdb/--gdb-wait; returns the problem as a message, or the options. */
export function parseGdbOptions(values: { gdb?: string; 'gdb-wait'?: boolean }): GdbCli | string | undefined {
  if (values['gdb-wait'] === true && values.gdb === undefined) return '--gdb-wait needs --gdb <port|path>';
  if (values.gdb === undefined) return undefined;
  try {
    parseGdbListen(values.gdb);
  } catch (e) {
    return `--gdb: ${(e as Error).message}`;
  }
  return { listen: values.gdb, wait: values['gdb-wait'] === true };
}

/** @internal Attaches the stub and says where on stderr. */
export async function startGdb(vm: Debuggable, gdb: GdbCli): Promise<GdbServer> {
  const server = await attachGdb(vm, {
    listen: gdb.listen,
    wait: gdb.wait,
    log: (m) => process.stderr.write(`\r\n[kvm-rx] gdb: ${m}\r\n`),
  });
  const a = server.address;
  const where = 'path' in a ? a.path : `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
  process.stderr.write(
    `[kvm-rx] gdb stub on ${where}: gdb -ex 'target remote ${where}'${gdb.wait ? ' (the guest waits for it)' : ''}\n`,
  );
  return server;
}
