/**
 * The terminal side of a serial console: stdin in raw mode to the guest, Ctrl-A x to quit.
 *
 * @module
 */

/** Options of {@link attachConsole}. */
export interface ConsoleOptions {
  /** Called when the user types Ctrl-A x, or when a non-terminal stdin ends. */
  onQuit: () => void;
  input?: NodeJS.ReadStream;
  /**
   * Whether the end of a stdin that is not a terminal quits (5 s later, so the guest can take what
   * was typed). Default `true`; `false` keeps the VM running until it ends by itself.
   */
  quitOnEnd?: boolean;
}

/**
 * Puts a terminal stdin in raw mode and forwards keys to the guest once `connect(send)` is called;
 * Ctrl-A x quits and Ctrl-A Ctrl-A sends one Ctrl-A. A stdin that is not a terminal is forwarded as
 * it is, and when it ends the console quits 5 s later (the guest may end first). `close()` restores
 * the terminal.
 */
export function attachConsole(options: ConsoleOptions): {
  connect(send: (bytes: Uint8Array) => void): void;
  close(): void;
} {
  const input = options.input ?? process.stdin;
  const tty = input.isTTY ?? false;
  let send: ((bytes: Uint8Array) => void) | undefined;
  const pending: Uint8Array[] = [];
  let escape = false;
  const onData = (chunk: Buffer) => {
    let bytes: Uint8Array = chunk;
    if (tty) {
      const out: number[] = [];
      for (const b of chunk) {
        if (escape) {
          escape = false;
          if (b === 0x78 /* x */) {
            options.onQuit();
            return;
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
  // A piped stdin that ends: give the guest a few seconds to take what was typed, then quit.
  const onEnd = () => {
    if (options.quitOnEnd !== false) setTimeout(() => options.onQuit(), 5000).unref();
  };
  if (tty) input.setRawMode(true);
  input.on('data', onData);
  input.on('end', onEnd);
  input.resume();
  return {
    connect(s) {
      send = s;
      for (const b of pending.splice(0)) s(b);
    },
    close() {
      input.off('data', onData);
      input.off('end', onEnd);
      if (tty) input.setRawMode(false);
      input.pause();
    },
  };
}
