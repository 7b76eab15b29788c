/**
 * A minimal i8042 keyboard controller: enough for a guest to find no keyboard and to reset the
 * machine through it.
 *
 * @module
 */
import { checkBool, checkObject, invalidType, invalidValue } from '../abi/validate';
import type { PortRange } from '../runtime/operators/match';
import { byteRegisters, deviceStage } from './port-device';
import type { DeviceStage, PortDevice } from './port-device';

/** The data port. */
export const I8042_DATA_PORT = 0x60;
/** The status (read) and command (write) port. */
export const I8042_COMMAND_PORT = 0x64;

/** Status register bits. */
const STATUS_SYS = 0x04; // system flag: self-test passed
const STATUS_CMD = 0x08; // the last write went to the command port
const STATUS_UNLOCKED = 0x10; // keyboard not inhibited

/** The "write output port" command: the next data byte is the output port (bit 0 = reset line, active low). */
const CMD_WRITE_OUTPUT = 0xd1;
/** The "pulse reset line" command. */
export const I8042_CMD_RESET = 0xfe;

/**
 * The state of an {@link I8042} as plain, JSON-safe data ({@link I8042.saveState},
 * {@link I8042.restoreState}). The output buffer is always empty (no keyboard or mouse is
 * attached), so it has no field.
 */
export interface I8042State {
  /** The format's version: 1. */
  version: 1;
  /** Whether the last write went to the command port (status bit 3). */
  lastWasCommand: boolean;
  /** Whether the last command was 0xD1 ("write output port"): the next data byte is the output port. */
  writeOutputPending: boolean;
  /** Whether the guest has reset the CPU through the controller ({@link I8042.resetRequested}). */
  resetRequested: boolean;
}

const I8042_STATE_KEYS: ReadonlySet<string> = new Set([
  'version',
  'lastWasCommand',
  'writeOutputPending',
  'resetRequested',
]);

/** Checks a whole {@link I8042State} at `path`; returns a copy made of the values checked. */
function checkI8042State(path: string, state: unknown): I8042State {
  const s = checkObject<Record<string, unknown>>(path, state);
  if (s.version !== 1) invalidValue(`${path}.version`, 'must be 1 (the only I8042State version)', s.version);
  for (const key of Object.keys(s)) {
    if (!I8042_STATE_KEYS.has(key)) invalidValue(`${path}.${key}`, 'is not a field of an I8042State');
  }
  return {
    version: 1,
    lastWasCommand: checkBool(`${path}.lastWasCommand`, s.lastWasCommand),
    writeOutputPending: checkBool(`${path}.writeOutputPending`, s.writeOutputPending),
    resetRequested: checkBool(`${path}.resetRequested`, s.resetRequested),
  };
}

/** Options of {@link I8042}. */
export interface I8042Options {
  /**
   * Called when the guest resets the CPU through the controller (command 0xFE, any other
   * "pulse output lines" command 0xF0–0xFE that pulses bit 0, or a "write output port" with bit 0
   * clear). In a worker pipeline: `onReset: () => ctx.emit('reset', null)`.
   */
  onReset?: () => void;
  /** Whether the stage completes its output at a reset, which ends the vCPU's run cleanly. Default `true`. */
  stopOnReset?: boolean;
}

/**
 * A minimal i8042 at ports 0x60 (data) and 0x64 (status/command): no keyboard or mouse is
 * attached, so the status register never reports data (OBF = 0) and is always ready for input
 * (IBF = 0); reads of the data port return 0. The CPU-reset commands set {@link resetRequested},
 * call `onReset` and (by default) complete the stage's output, so the run ends with reason
 * `'completed'`; the VMM tells a reset from a halt by `resetRequested`. Every other command and
 * data byte is accepted and ignored.
 *
 * @example
 * ```ts
 * // @ts-setup: declare function restartVm(): void; // what your VMM does on a guest reboot
 * const kbc = i8042({ onReset: () => console.log('guest reboot') });
 * const outcome = await runInThread(vcpu, (exits$) => exits$.pipe(kbc, untilHalt()));
 * if (kbc.device.resetRequested) restartVm();
 * ```
 */
export class I8042 implements PortDevice {
  readonly ports: ReadonlyArray<PortRange> = [
    [I8042_DATA_PORT, I8042_DATA_PORT],
    [I8042_COMMAND_PORT, I8042_COMMAND_PORT],
  ];
  readonly #onReset: (() => void) | undefined;
  readonly #stopOnReset: boolean;
  #lastWasCommand = false;
  #pending: number | undefined;
  #reset = false;

  /**
   * @param options - see {@link I8042Options}
   * @throws TypeError `ERR_INVALID_ARG_TYPE` for invalid options
   */
  constructor(options: I8042Options = {}) {
    checkObject('options', options);
    if (options.onReset !== undefined && typeof options.onReset !== 'function')
      invalidType('options.onReset', 'of type function', options.onReset);
    if (options.stopOnReset !== undefined && typeof options.stopOnReset !== 'boolean')
      invalidType('options.stopOnReset', 'of type boolean', options.stopOnReset);
    this.#onReset = options.onReset;
    this.#stopOnReset = options.stopOnReset ?? true;
  }

  /** Whether the guest has reset the CPU through the controller. */
  get resetRequested(): boolean {
    return this.#reset;
  }

  /** `true` once a reset is requested (and `stopOnReset` is on): the stage completes. */
  get stopRequested(): boolean {
    return this.#reset && this.#stopOnReset;
  }

  /** The status register. */
  get status(): number {
    return STATUS_SYS | STATUS_UNLOCKED | (this.#lastWasCommand ? STATUS_CMD : 0);
  }

  /**
   * The controller's state as plain, JSON-safe data: the status register's command bit, a
   * "write output port" command waiting for its data byte, and whether a reset was requested.
   * Nothing changes.
   *
   * @example
   * ```ts
   * const kbc = new I8042();
   * kbc.ioWrite(I8042_COMMAND_PORT, 1, 0xd1); // "write output port": the data byte is to come
   * const again = new I8042({ onReset: () => console.log('guest reboot') });
   * again.restoreState(JSON.parse(JSON.stringify(kbc.saveState())));
   * again.ioWrite(I8042_DATA_PORT, 1, 0x00); // bit 0 clear: resets, as it would have on kbc
   * ```
   * @return a new object; see {@link I8042State}
   * @throws nothing: the controller's fields are always a valid state
   */
  saveState(): I8042State {
    return {
      version: 1,
      lastWasCommand: this.#lastWasCommand,
      writeOutputPending: this.#pending === CMD_WRITE_OUTPUT,
      resetRequested: this.#reset,
    };
  }

  /**
   * Puts the controller into a state {@link saveState} gave, usually into one just constructed
   * with the options the VM needs now (`onReset`, `stopOnReset`). The whole state is checked
   * before anything changes; a refused state leaves the controller as it was. `onReset` is not
   * called for a restored `resetRequested: true` (the reset was reported where it happened); such a
   * controller ignores further reset commands and, with `stopOnReset`, completes its stage at the
   * next access, as the saved one would have.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const snapshot: { i8042: unknown }; // read from a snapshot file
   * const kbc = i8042({ onReset: () => console.log('guest reboot') });
   * kbc.device.restoreState(snapshot.i8042);
   * ```
   * @param state - an {@link I8042State}
   * @throws TypeError `ERR_INVALID_ARG_TYPE` for a field of the wrong type, `ERR_INVALID_ARG_VALUE`
   *   for another version or a missing or unknown field, naming the field (`state.lastWasCommand`)
   */
  restoreState(state: unknown): void {
    this.prepareRestore(state)();
  }

  /**
   * @internal Checks `state` (named `path` in errors) and returns the function that applies it
   * (which cannot throw); `legacyPc()` checks every device before applying any.
   */
  prepareRestore(state: unknown, path = 'state'): () => void {
    const s = checkI8042State(path, state);
    return () => {
      this.#lastWasCommand = s.lastWasCommand;
      this.#pending = s.writeOutputPending ? CMD_WRITE_OUTPUT : undefined;
      this.#reset = s.resetRequested;
    };
  }

  // 0x60 (data) and 0x64 (status/command) in a bank of 5 ports, split into byte accesses like
  // any ISA device; 0x61–0x63 are not the i8042's and read as all ones.
  readonly #ports = byteRegisters(
    I8042_DATA_PORT,
    I8042_COMMAND_PORT - I8042_DATA_PORT + 1,
    (off) => (off === 0 ? 0 : off === I8042_COMMAND_PORT - I8042_DATA_PORT ? this.status : 0xff),
    (off, v) => {
      if (off === I8042_COMMAND_PORT - I8042_DATA_PORT) this.#command(v);
      else if (off === 0) this.#data(v);
    },
  );

  ioRead(port: number, size: number): number {
    return this.#ports.ioRead(port, size);
  }

  ioWrite(port: number, size: number, value: number): void {
    this.#ports.ioWrite(port, size, value);
  }

  #command(cmd: number): void {
    this.#lastWasCommand = true;
    this.#pending = cmd === CMD_WRITE_OUTPUT ? cmd : undefined;
    // 0xF0-0xFF pulse the output lines whose bits are clear; bit 0 is the CPU reset line.
    if (cmd >= 0xf0 && (cmd & 1) === 0) this.#resetCpu();
  }

  #data(v: number): void {
    this.#lastWasCommand = false;
    const pending = this.#pending;
    this.#pending = undefined;
    if (pending === CMD_WRITE_OUTPUT && (v & 1) === 0) this.#resetCpu();
  }

  #resetCpu(): void {
    if (this.#reset) return;
    this.#reset = true;
    this.#onReset?.();
  }
}

/**
 * A minimal i8042 as a pipeline stage (ports 0x60 and 0x64); the model is `stage.device`.
 *
 * @example
 * ```ts
 * // A worker pipeline: tell the main thread about a guest reset.
 * const pipeline: VcpuPipeline = (exits$, ctx) =>
 *   exits$.pipe(i8042({ onReset: () => ctx.emit('reset', null) }), untilHalt(), failOnUnhandled());
 * export default pipeline;
 * ```
 *
 * @param options - see {@link I8042Options}
 * @return the stage
 * @throws TypeError `ERR_INVALID_ARG_TYPE` for invalid options
 */
export function i8042(options: I8042Options = {}): DeviceStage<I8042> {
  return deviceStage(new I8042(options));
}
