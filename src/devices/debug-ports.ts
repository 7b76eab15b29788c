/**
 * The POST code port (0x80) and QEMU's debug console (0x402).
 *
 * @module
 */
import { Subject } from 'rxjs';
import type { Observable } from 'rxjs';
import { checkObject, checkU16, invalidType, invalidValue } from '../abi/validate';
import type { PortRange } from '../runtime/operators/match';
import { checkAccess, deviceStage } from './port-device';
import type { DeviceStage, PortDevice } from './port-device';

/** What QEMU's debugcon answers to reads, so guests can detect it. */
export const DEBUGCON_READBACK = 0xe9;

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
