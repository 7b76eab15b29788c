/**
 * The POST code port (0x80) and QEMU's debug console (0x402).
 *
 * @module
 */
import { Subject } from 'rxjs';
import type { Observable } from 'rxjs';
import { checkInt, checkObject, checkU16, invalidType, invalidValue } from '../abi/validate';
import type { PortRange } from '../runtime/operators/match';
import { checkAccess, deviceStage } from './port-device';
import type { DeviceStage, PortDevice } from './port-device';

/** What QEMU's debugcon answers to reads, so guests can detect it. */
export const DEBUGCON_READBACK = 0xe9;

/**
 * The state of a {@link DebugPorts} as plain, JSON-safe data ({@link DebugPorts.saveState},
 * {@link DebugPorts.restoreState}). What the guest reads does not depend on it (the ports read
 * constants); it keeps what the VMM sees of the POST codes.
 */
export interface DebugPortsState {
  /** The format's version: 1. */
  version: 1;
  /** The last POST code written (0..255), or -1 when none was. */
  lastPostCode: number;
  /** How many POST codes were written (0 exactly when `lastPostCode` is -1). */
  postCodeCount: number;
}

const DEBUG_STATE_KEYS: ReadonlySet<string> = new Set(['version', 'lastPostCode', 'postCodeCount']);

/** Checks a whole {@link DebugPortsState} at `path`; returns a copy made of the values checked (`+ 0`: a -0 is kept as 0). */
function checkDebugState(path: string, state: unknown): DebugPortsState {
  const s = checkObject<Record<string, unknown>>(path, state);
  if (s.version !== 1) invalidValue(`${path}.version`, 'must be 1 (the only DebugPortsState version)', s.version);
  for (const key of Object.keys(s)) {
    if (!DEBUG_STATE_KEYS.has(key)) invalidValue(`${path}.${key}`, 'is not a field of a DebugPortsState');
  }
  const lastPostCode = checkInt(`${path}.lastPostCode`, s.lastPostCode, -1, 0xff) + 0;
  const postCodeCount = checkInt(`${path}.postCodeCount`, s.postCodeCount, 0, Number.MAX_SAFE_INTEGER) + 0;
  if ((lastPostCode === -1) !== (postCodeCount === 0))
    invalidValue(`${path}.postCodeCount`, `must be 0 exactly when ${path}.lastPostCode is -1`, postCodeCount);
  return { version: 1, lastPostCode, postCodeCount };
}

/** Options of {@link DebugPorts}. */
export interface DebugPortsOptions {
  /** The POST code port. Default 0x80. */
  postPort?: number;
  /** The debug console port. Default 0x402 (SeaBIOS, OVMF); Bochs uses 0xe9. */
  debugconPort?: number;
  /** Called with each POST code written (Linux also writes port 0x80 as an I/O delay). */
  onPostCode?: (code: number) => void;
  /** Called with the bytes written to the debug console during one exit. */
  onDebugOutput?: (bytes: Uint8Array) => void;
}

/**
 * Port 0x80, where firmware writes POST codes (recorded in {@link lastPostCode}; reads return
 * 0xff, as on QEMU), and a QEMU-style debug console at 0x402: each byte written is output
 * ({@link output$}, `onDebugOutput`), reads return 0xe9. Only the low byte of a wider access
 * reaches either port.
 *
 * @example
 * ```ts
 * const dbg = debugPorts({ onDebugOutput: (b) => process.stderr.write(b) });
 * exits$.pipe(dbg, untilHalt());
 * ```
 */
export class DebugPorts implements PortDevice {
  readonly ports: ReadonlyArray<PortRange>;
  /** The bytes written to the debug console, one value per exit. */
  readonly output$: Observable<Uint8Array>;
  readonly #postPort: number;
  readonly #debugconPort: number;
  readonly #onPostCode: ((code: number) => void) | undefined;
  readonly #onDebugOutput: ((bytes: Uint8Array) => void) | undefined;
  readonly #output = new Subject<Uint8Array>();
  #out: number[] = [];
  #lastPostCode: number | undefined;
  #postCodes = 0;

  /**
   * @param options - see {@link DebugPortsOptions}
   * @throws TypeError `ERR_INVALID_ARG_TYPE` / `ERR_INVALID_ARG_VALUE`, RangeError `ERR_OUT_OF_RANGE` for invalid options
   */
  constructor(options: DebugPortsOptions = {}) {
    checkObject('options', options);
    this.#postPort = checkU16('options.postPort', options.postPort ?? 0x80);
    this.#debugconPort = checkU16('options.debugconPort', options.debugconPort ?? 0x402);
    if (this.#postPort === this.#debugconPort)
      invalidValue('options.debugconPort', 'must differ from options.postPort', this.#debugconPort);
    for (const name of ['onPostCode', 'onDebugOutput'] as const) {
      if (options[name] !== undefined && typeof options[name] !== 'function')
        invalidType(`options.${name}`, 'of type function', options[name]);
    }
    this.#onPostCode = options.onPostCode;
    this.#onDebugOutput = options.onDebugOutput;
    this.ports = [
      [this.#postPort, this.#postPort],
      [this.#debugconPort, this.#debugconPort],
    ];
    this.output$ = this.#output.asObservable();
  }

  /** The last POST code written, or `undefined`. */
  get lastPostCode(): number | undefined {
    return this.#lastPostCode;
  }

  /** How many POST codes were written. */
  get postCodeCount(): number {
    return this.#postCodes;
  }

  ioRead(port: number, size: number): number {
    checkAccess(port, size);
    const low = port === this.#debugconPort ? DEBUGCON_READBACK : 0xff;
    return 2 ** (8 * size) - 256 + low;
  }

  ioWrite(port: number, _size: number, value: number): void {
    checkAccess(port, _size, value);
    const v = value & 0xff;
    if (port === this.#postPort) {
      this.#lastPostCode = v;
      this.#postCodes++;
      this.#onPostCode?.(v);
    } else if (port === this.#debugconPort) {
      this.#out.push(v);
    }
  }

  /**
   * The device's state as plain, JSON-safe data: the last POST code and how many were written.
   * Nothing changes. Debug console bytes are handed to `onDebugOutput`/{@link output$} after each
   * exit and are not part of the state.
   *
   * @example
   * ```ts
   * const dbg = new DebugPorts();
   * dbg.ioWrite(0x80, 1, 0x55);
   * const again = new DebugPorts();
   * again.restoreState(JSON.parse(JSON.stringify(dbg.saveState())));
   * again.lastPostCode; // 0x55
   * ```
   * @return a new object; see {@link DebugPortsState}
   * @throws nothing: the device's fields are always a valid state
   */
  saveState(): DebugPortsState {
    return { version: 1, lastPostCode: this.#lastPostCode ?? -1, postCodeCount: this.#postCodes };
  }

  /**
   * Puts the device into a state {@link saveState} gave, usually into one just constructed with
   * the ports and callbacks the VM needs now (`onPostCode` is not called for the restored code).
   * The whole state is checked before anything changes; a refused state leaves the device as it was.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const snapshot: { debug: unknown }; // read from a snapshot file
   * const dbg = debugPorts({ onDebugOutput: (b) => process.stderr.write(b) });
   * dbg.device.restoreState(snapshot.debug);
   * ```
   * @param state - a {@link DebugPortsState}
   * @throws TypeError `ERR_INVALID_ARG_TYPE` for a field of the wrong type, `ERR_INVALID_ARG_VALUE`
   *   for another version, a missing or unknown field or a count that contradicts the last code;
   *   RangeError `ERR_OUT_OF_RANGE` for a number out of range; each names the field
   *   (`state.lastPostCode`)
   */
  restoreState(state: unknown): void {
    this.prepareRestore(state)();
  }

  /**
   * @internal Checks `state` (named `path` in errors) and returns the function that applies it
   * (which cannot throw); `legacyPc()` checks every device before applying any.
   */
  prepareRestore(state: unknown, path = 'state'): () => void {
    const s = checkDebugState(path, state);
    return () => {
      this.#lastPostCode = s.lastPostCode === -1 ? undefined : s.lastPostCode;
      this.#postCodes = s.postCodeCount;
    };
  }

  /** Emits the debug console bytes of the exit (called by the stage). */
  afterExit(): void {
    if (this.#out.length === 0) return;
    const bytes = Uint8Array.from(this.#out);
    this.#out = [];
    this.#onDebugOutput?.(bytes);
    this.#output.next(bytes);
  }
}

/**
 * Port 0x80 and the debug console as a pipeline stage; the model is `stage.device`.
 *
 * @example
 * ```ts
 * // A worker pipeline: the debug console's bytes to the main thread's `run.events$`.
 * const pipeline: VcpuPipeline = (exits$, ctx) =>
 *   exits$.pipe(debugPorts({ onDebugOutput: (b) => ctx.emit('debugcon', b) }), untilHalt());
 * export default pipeline;
 * ```
 *
 * @param options - see {@link DebugPortsOptions}
 * @return the stage
 * @throws TypeError / RangeError for invalid options
 */
export function debugPorts(options: DebugPortsOptions = {}): DeviceStage<DebugPorts> {
  return deviceStage(new DebugPorts(options));
}
