/**
 * `attachGdb()`: a GDB remote stub for a kvm-rx machine, listening on a loopback TCP port or a
 * Unix socket. One gdb at a time; when it detaches or disconnects the guest runs on, and another
 * gdb may connect.
 *
 * @module
 */
import { createServer, type Server, type Socket } from 'node:net';
import { lstatSync, unlinkSync } from 'node:fs';
import { resolve } from 'node:path';
import { checkObject, invalidType, invalidValue } from '../../abi/validate';
import { GdbSession, type SessionEnd } from './session';
import { GDB_MACHINE, KvmGdbTarget, type Debuggable, type GdbMachine, type SoftwareBreakpoints } from './kvm-target';

/** Where the stub listens: a TCP port on the loopback interface, or a Unix socket. */
export type GdbListen = number | string | { port: number; host?: string } | { path: string };

/** Options of {@link attachGdb}. */
export interface AttachGdbOptions {
  /**
   * A port (`1234`, `'1234'`, `'127.0.0.1:1234'`, `{ port, host }` with a loopback host; 0 picks a
   * free one) or a Unix socket path (`'/tmp/vm.gdb'`, `{ path }`). Nothing but loopback is accepted.
   */
  listen: GdbListen;
  /**
   * Keep the machine stopped until gdb connects: it is paused before `attachGdb` resolves (start
   * the machine with `paused: true` for gdb to see its very first instruction). Default `false`:
   * it runs until a gdb connects (connecting stops it, as attaching to a process does).
   */
  wait?: boolean;
  /** How `break` is implemented (see {@link SoftwareBreakpoints}). Default `'auto'`. */
  softwareBreakpoints?: SoftwareBreakpoints;
  /** Receives what happens: connections, sessions ending, protocol errors. */
  log?: (message: string) => void;
}

/** A listening stub ({@link attachGdb}). */
export interface GdbServer extends AsyncDisposable {
  /** Where it listens (the port chosen, for port 0). */
  readonly address: { host: string; port: number } | { path: string };
  /** Sessions so far and how each ended (`undefined` while one is on). */
  readonly sessions: ReadonlyArray<SessionEnd | undefined>;
  /** Resolves when a gdb has connected and the machine is stopped for it. */
  readonly connected: Promise<void>;
  /**
   * Stops listening and ends the session if there is one (detaching: the guest runs on).
   * Idempotent; also happens by itself when the machine ends.
   */
  close(): Promise<void>;
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);

/**
 * Where {@link attachGdb} would listen for `listen` (for checking a command-line value early).
 *
 * @example `parseGdbListen('1234') // { host: '127.0.0.1', port: 1234 }`
 * @throws `TypeError` `ERR_INVALID_ARG_VALUE` for a port out of range or a non-loopback host
 */
export function parseGdbListen(listen: GdbListen): { host: string; port: number } | { path: string } {
  const port = (p: unknown, host: string) => {
    if (typeof p !== 'number' || !Number.isInteger(p) || p < 0 || p > 65535)
      invalidValue('options.listen', 'must have a port from 0 to 65535', p);
    if (!LOOPBACK.has(host))
      invalidValue('options.listen', 'must be a loopback address (127.0.0.1, ::1) or a Unix socket', host);
    return { host: host === 'localhost' ? '127.0.0.1' : host, port: p };
  };
  if (typeof listen === 'number') return port(listen, '127.0.0.1');
  if (typeof listen === 'string') {
    if (/^\d+$/.test(listen)) return port(Number(listen), '127.0.0.1');
    const m = /^(\[?[^\]]*\]?|[^:]+):(\d+)$/.exec(listen);
    if (m && !listen.includes('/')) return port(Number(m[2]), m[1].replace(/^\[|\]$/g, ''));
    if (listen === '') invalidValue('options.listen', 'must not be empty', listen);
    return { path: resolve(listen) };
  }
  checkObject('options.listen', listen);
  if ('path' in listen) {
    if (typeof listen.path !== 'string' || listen.path === '')
      invalidType('options.listen.path', 'a non-empty string', listen.path);
    return { path: resolve(listen.path) };
  }
  return port((listen as { port: unknown }).port, (listen as { host?: string }).host ?? '127.0.0.1');
}

function machineOf(m: Debuggable | GdbMachine): GdbMachine {
  if (m !== null && typeof m === 'object' && GDB_MACHINE in m) return m[GDB_MACHINE]();
  if (m !== null && typeof m === 'object' && Array.isArray(m.runs)) return m;
  return invalidType('machine', 'a machine handle (bootLinux(), startDemo()) or a GdbMachine', m);
}

/**
 * Serves the GDB remote protocol for `machine` (a `bootLinux()` or `startDemo()` handle, or a
 * {@link GdbMachine} of your own): `gdb -ex 'target remote :1234'`. Every vCPU is a gdb thread.
 * A gdb connecting stops the machine; `detach`, `quit` or a dropped connection lets it run on;
 * `kill` stops it. See docs/debugging.md for what works on which host.
 *
 * @example
 * ```ts
 * // @ts-setup: declare const kernel: Uint8Array;
 * const vm = bootLinux({ kernel, paused: true, output: (b) => process.stdout.write(b) });
 * const gdb = await attachGdb(vm, { listen: 1234, wait: true }); // gdb vmlinux -ex 'target remote :1234'
 * await vm.done;
 * await gdb.close();
 * ```
 * @throws `TypeError` (`ERR_INVALID_ARG_TYPE`, `ERR_INVALID_ARG_VALUE`) for a bad machine or a
 *   non-loopback address; (rejects) the listen error (`EADDRINUSE`, `EACCES`)
 */
export async function attachGdb(machine: Debuggable | GdbMachine, options: AttachGdbOptions): Promise<GdbServer> {
  checkObject('options', options);
  const where = parseGdbListen(options.listen);
  if (options.wait !== undefined && typeof options.wait !== 'boolean')
    invalidType('options.wait', 'of type boolean', options.wait);
  if (
    options.softwareBreakpoints !== undefined &&
    !['auto', 'hardware', 'memory'].includes(options.softwareBreakpoints)
  )
    invalidValue('options.softwareBreakpoints', "must be 'auto', 'hardware' or 'memory'", options.softwareBreakpoints);
  const m = machineOf(machine);
  const log = options.log ?? (() => undefined);
  const sessions: Array<SessionEnd | undefined> = [];
  let current: { session: GdbSession; socket: Socket } | undefined;
  let closed = false;
  let onConnected: () => void = () => undefined;
  const connected = new Promise<void>((r) => (onConnected = r));

  const server: Server = createServer({ allowHalfOpen: false, pauseOnConnect: false }, (socket) => {
    if (closed || current !== undefined) {
      log('refused a second gdb connection (one at a time)');
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    const target = new KvmGdbTarget(m, {
      ...(options.softwareBreakpoints ? { softwareBreakpoints: options.softwareBreakpoints } : {}),
    });
    const session = new GdbSession(
      target,
      {
        write: (b) => {
          if (!socket.destroyed) socket.write(b);
        },
        end: () => socket.end(),
      },
      { log },
    );
    const index = sessions.push(undefined) - 1;
    current = { session, socket };
    log(`gdb connected from ${socket.remoteAddress ?? 'a Unix socket'}`);
    socket.on('data', (b: Buffer) => session.receive(b));
    socket.on('error', (e) => log(`connection error: ${e.message}`));
    socket.on('close', () => session.disconnected());
    void session.ended.then((why) => {
      sessions[index] = why;
      if (current?.session === session) current = undefined;
      if (!socket.destroyed) socket.destroy();
      if (why === 'kill' || why === 'exited') void close();
    });
    void session.start().then(onConnected);
  });
  server.on('error', (e) => log(`server error: ${e.message}`));

  await new Promise<void>((resolveListen, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      resolveListen();
    };
    if ('path' in where) {
      try {
        if (lstatSync(where.path).isSocket()) unlinkSync(where.path); // a stale socket of an earlier run
      } catch {
        /* nothing there */
      }
      server.listen(where.path, done);
    } else server.listen(where.port, where.host, done);
  });
  const addr = server.address();
  const address =
    'path' in where
      ? { path: where.path }
      : { host: where.host, port: typeof addr === 'object' && addr ? addr.port : where.port };

  let waiting = options.wait === true;
  if (waiting) await Promise.all(m.runs.filter((r) => !r.paused).map((r) => r.pause().catch(() => undefined)));

  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    const s = current;
    current = undefined;
    await new Promise<void>((r) => server.close(() => r()));
    if (s !== undefined) await s.session.close();
    if (waiting && sessions.length === 0) for (const r of m.runs) r.resume(); // never left stopped
    waiting = false;
    if ('path' in where) {
      try {
        unlinkSync(where.path);
      } catch {
        /* already gone */
      }
    }
  };
  void m.done.then(close, close);
  return {
    address,
    sessions,
    connected,
    close,
    [Symbol.asyncDispose]: close,
  };
}
