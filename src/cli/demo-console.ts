/**
 * The demo VM on the terminal: `kvm-rx run` and `kvm-rx restore` of a demo snapshot.
 *
 * @module
 */
import { resolve } from 'node:path';
import type { DemoOptions, DemoVm } from '../vmm/demo';
import { attachConsole } from './console';
import { startGdb, type GdbCli } from './gdb';
import type { GdbServer } from '../vmm/gdb/server';

/**
 * @internal Runs a demo VM (`start` makes it: `startDemo` or `restoreDemo`) with its UART on the
 * terminal until it ends: Ctrl-A x, the end of a piped stdin, `timeoutS`, SIGINT/SIGTERM; Ctrl-A s
 * writes a snapshot to `snapshotPath` (or `kvm-rx-<pid>-<n>.snap`). Returns the exit status.
 */
export async function demoOnConsole(
  start: (options: DemoOptions) => DemoVm,
  timeoutS: number | undefined,
  snapshotPath: string | undefined,
  gdb?: GdbCli,
): Promise<number> {
  const ac = new AbortController();
  let why: 'timeout' | 'quit' | 'input ended' | 'signal' | undefined;
  const stop = (w: NonNullable<typeof why>) => {
    why ??= w;
    ac.abort();
  };
  if (timeoutS !== undefined) setTimeout(() => stop('timeout'), timeoutS * 1000).unref();
  let vm: DemoVm | undefined;
  let snapshots = 0;
  let snapshotting = false;
  const console_ = attachConsole({
    onQuit: (reason) => stop(reason === 'end' ? 'input ended' : 'quit'),
    onSnapshotKey: () => {
      if (vm === undefined || snapshotting) return;
      snapshotting = true;
      const path = snapshotPath ?? resolve(`kvm-rx-${process.pid}-${++snapshots}.snap`);
      vm.snapshot(path)
        .then(
          () =>
            process.stderr.write(
              `\r\n[kvm-rx] snapshot written to ${path}; resume it with: kvm-rx restore ${path}\r\n`,
            ),
          (e: unknown) => process.stderr.write(`\r\n[kvm-rx] snapshot failed: ${(e as Error).message}\r\n`),
        )
        .finally(() => (snapshotting = false));
    },
  });
  const onSignal = () => stop('signal');
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let gdbServer: GdbServer | undefined;
  try {
    vm = start({
      output: (bytes) => {
        console_.noteOutput();
        process.stdout.write(bytes);
      },
      onStart: (send) => console_.connect(send),
      signal: ac.signal,
    });
    if (gdb !== undefined) {
      try {
        gdbServer = await startGdb(vm, gdb);
      } catch (e) {
        process.stderr.write(`\r\n[kvm-rx] --gdb ${gdb.listen}: ${(e as Error).message}\r\n`);
        await vm.stop();
        return 1;
      }
    }
    const outcome = await vm.done;
    const end = outcome.reset ? 'guest reset the machine' : `VM ${outcome.reason}${why ? ` (${why})` : ''}`;
    process.stderr.write(`\r\n[kvm-rx] ${end} after ${outcome.exits} exits\r\n`);
    return 0;
  } finally {
    await gdbServer?.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    console_.close();
  }
}
