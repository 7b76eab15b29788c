/**
 * The terminal side of a serial console: stdin in raw mode to the guest, Ctrl-A x to quit.
 *
 * @module
 */
import { checkInt } from '../abi/validate';

/** How long the guest must stay silent, once a piped stdin has ended, before the console quits. */
export const DEFAULT_QUIET_MS = 500;

/** What {@link attachConsole} reads: `process.stdin`, or any readable stream (e.g. in tests). */
export type ConsoleInput = NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (mode: boolean) => unknown };

/** Options of {@link attachConsole}. */
export interface ConsoleOptions {
  /**
   * Called when the user types Ctrl-A x (`'key'`), or when a non-terminal stdin has ended and the
   * guest has gone quiet (`'end'`).
   */
  onQuit: (reason: 'key' | 'end') => void;
  /** Called for Ctrl-A s (a terminal only); without it Ctrl-A s sends `s` to the guest. */
  onSnapshotKey?: () => void;
  /** The input (default `process.stdin`): any readable stream; a terminal has `isTTY` and `setRawMode`. */
  input?: ConsoleInput;
  /**
   * Whether the end of a stdin that is not a terminal quits. Default `true`: once the input has
   * ended, the console is connected and the guest has printed something, it quits when no guest
   * output (`noteOutput()`) came for `quietMs`, so the guest can take and echo what was typed.
   * `false` keeps the VM running until it ends by itself.
   */
  quitOnEnd?: boolean;
  /** The quiet period of `quitOnEnd`, in ms (default {@link DEFAULT_QUIET_MS}). */
  quietMs?: number;
}

/**
 * Puts a terminal stdin in raw mode and forwards keys to the guest once `connect(send)` is called;
 * Ctrl-A x quits, Ctrl-A s calls `onSnapshotKey` (when given) and Ctrl-A Ctrl-A sends one Ctrl-A. A stdin that is not a terminal is forwarded as
 * it is; when it ends, the console quits as soon as the guest has drained it: once the guest has
 * printed something and then stayed silent for `quietMs` (call `noteOutput()` for each output of the
 * guest). The guest may end first. `close()` restores the terminal.
 *
 * @example
 * ```ts
 * const ac = new AbortController();
 * const con = attachConsole({ onQuit: () => ac.abort() });
 * runDemo({ output: (b) => (con.noteOutput(), process.stdout.write(b)), onStart: (send) => con.connect(send) });
 * ```
 * @throws `RangeError` (`ERR_OUT_OF_RANGE`) for a `quietMs` that is not an integer from 1 to 60000
 */
export function attachConsole(options: ConsoleOptions): {
  connect(send: (bytes: Uint8Array) => void): void;
  noteOutput(): void;
  close(): void;
} {
  const input: ConsoleInput = options.input ?? process.stdin;
  const quietMs = checkInt('options.quietMs', options.quietMs ?? DEFAULT_QUIET_MS, 1, 60_000);
  const tty = (input.isTTY ?? false) && typeof input.setRawMode === 'function';
  let send: ((bytes: Uint8Array) => void) | undefined;
  const pending: Uint8Array[] = [];
  let escape = false;
  let ended = false;
  let sawOutput = false;
  let closed = false;
  let quiet: NodeJS.Timeout | undefined;
  // Re-armed by every guest output once the input has ended and the guest is connected.
  const armQuiet = () => {
    if (closed || !ended || send === undefined || !sawOutput || options.quitOnEnd === false) return;
    if (quiet) clearTimeout(quiet);
    quiet = setTimeout(() => {
      if (!closed) options.onQuit('end');
    }, quietMs);
    quiet.unref();
  };
  const onData = (chunk: Buffer) => {
    let bytes: Uint8Array = chunk;
    if (tty) {
      const out: number[] = [];
      for (const b of chunk) {
        if (escape) {
          escape = false;
          if (b === 0x78 /* x */) {
            options.onQuit('key');
            return;
          }
          if (b === 0x73 /* s */ && options.onSnapshotKey) {
            options.onSnapshotKey();
            continue;
          }
          out.push(b === 0x01 ? 0x01 : b);
        } else if (b === 0x01) escape = true;
        else out.push(b);
      }
      bytes = Uint8Array.from(out);
    }
    if (bytes.length === 0) return;
    if (send) send(bytes);
    else pending.push(bytes);
  };
  const onEnd = () => {
    ended = true;
    armQuiet();
  };
  if (tty) input.setRawMode?.(true);
  input.on('data', onData);
  input.on('end', onEnd);
  input.resume();
  return {
    connect(s) {
      send = s;
      for (const b of pending.splice(0)) s(b);
      armQuiet();
    },
    noteOutput() {
      sawOutput = true;
      armQuiet();
    },
    close() {
      closed = true;
      if (quiet) clearTimeout(quiet);
      input.off('data', onData);
      input.off('end', onEnd);
      if (tty) input.setRawMode?.(false);
      input.pause();
    },
  };
}
