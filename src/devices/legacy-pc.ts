/**
 * The legacy PC devices in one pipeline stage.
 *
 * @module
 */
import { checkObject, invalidType, invalidValue } from '../abi/validate';
import type { PortRange } from '../runtime/operators/match';
import { Cmos } from './cmos';
import type { CmosOptions, CmosState } from './cmos';
import { DebugPorts } from './debug-ports';
import type { DebugPortsOptions, DebugPortsState } from './debug-ports';
import { I8042 } from './i8042';
import type { I8042Options, I8042State } from './i8042';
import { PciAbsent } from './pci-absent';
import type { PciAbsentState } from './pci-absent';
import { checkAccess, deviceStage, inRanges, whileSubscribed } from './port-device';
import type { DeviceStage, PortDevice } from './port-device';
import { Uart16550 } from './uart16550';
import type { Uart16550Options, Uart16550State } from './uart16550';

/** Options of {@link legacyPc}: each device's options, or `false` to leave it out. */
export interface LegacyPcOptions {
  /** COM1 (a 16550A at 0x3f8 unless `base` says otherwise). */
  com1?: Uart16550Options | false;
  /** The i8042 at 0x60/0x64. */
  i8042?: I8042Options | false;
  /** The CMOS/RTC at 0x70/0x71. */
  cmos?: CmosOptions | false;
  /** PCI configuration mechanism #1 with no device, at 0xCF8–0xCFF (`true` or `{}` to include). */
  pci?: boolean | Record<string, never>;
  /** Port 0x80 and the debug console at 0x402. */
  debug?: DebugPortsOptions | false;
}

/**
 * The state of a {@link legacyPc} stage's devices as plain, JSON-safe data
 * ({@link LegacyPcDevices.saveState}, {@link LegacyPcDevices.restoreState}): one field for each
 * device the stage has, none for the devices it was built without.
 */
export interface LegacyPcState {
  /** The format's version: 1. */
  version: 1;
  /** COM1's state (`Uart16550.saveState()`), when the stage has COM1. */
  com1?: Uart16550State;
  /** The i8042's state, when the stage has it. */
  i8042?: I8042State;
  /** The CMOS/RTC's state (with the guest's clock: see {@link CmosState}), when the stage has it. */
  cmos?: CmosState;
  /** The PCI configuration ports' state, when the stage has them. */
  pci?: PciAbsentState;
  /** The debug ports' state, when the stage has them. */
  debug?: DebugPortsState;
}

/** The device models of a {@link legacyPc} stage (absent ones are `undefined`). */
export interface LegacyPcDevices extends PortDevice {
  readonly com1: Uart16550 | undefined;
  readonly i8042: I8042 | undefined;
  readonly cmos: Cmos | undefined;
  readonly pci: PciAbsent | undefined;
  readonly debug: DebugPorts | undefined;
  /**
   * The state of every device the stage has, as plain, JSON-safe data (each device's
   * `saveState()`). Reads the CMOS clock; nothing changes.
   *
   * @example
   * ```ts
   * // @ts-setup: import { writeFileSync } from 'node:fs';
   * const pc = legacyPc({ cmos: { memorySize: 512 * 1024 * 1024 } });
   * // ... the vCPUs paused
   * writeFileSync('/tmp/devices.json', JSON.stringify(pc.device.saveState()));
   * ```
   * @return a new object; see {@link LegacyPcState}
   * @throws whatever the CMOS's `options.clock` throws
   */
  saveState(): LegacyPcState;
  /**
   * Puts every device into its part of a state {@link saveState} gave, usually into a stage just
   * built with the options the resumed VM needs (callbacks, clock). The state must have exactly the
   * stage's devices. Every part is checked before any device changes; a refused state leaves all
   * of them as they were. No callback is called (the COM1 interrupt line keeps its saved level: the
   * in-kernel irqchip restored from the same snapshot has it already).
   *
   * @example
   * ```ts
   * // @ts-setup: import { readFileSync } from 'node:fs';
   * const pc = legacyPc({ com1: { irq: (level) => vm.setIrqLine(4, level) } });
   * pc.device.restoreState(JSON.parse(readFileSync('/tmp/devices.json', 'utf8')));
   * exits$.pipe(pc, untilHalt());
   * ```
   * @param state - a {@link LegacyPcState}
   * @throws TypeError `ERR_INVALID_ARG_VALUE` for another version, a device the stage does not
   *   have or one of its devices missing; otherwise what the devices' `restoreState` throws, with
   *   the field named from the top (`state.com1.rx[0]`)
   */
  restoreState(state: unknown): void;
}

/** The names of the devices, in the order of {@link LegacyPcState}. */
const DEVICE_NAMES = ['com1', 'i8042', 'cmos', 'pci', 'debug'] as const;

class LegacyPc implements LegacyPcDevices {
  readonly ports: ReadonlyArray<PortRange>;
  readonly #devices: ReadonlyArray<PortDevice>;
  #current: PortDevice | undefined;

  constructor(
    readonly com1: Uart16550 | undefined,
    readonly i8042: I8042 | undefined,
    readonly cmos: Cmos | undefined,
    readonly pci: PciAbsent | undefined,
    readonly debug: DebugPorts | undefined,
  ) {
    this.#devices = [com1, i8042, cmos, pci, debug].filter((d): d is NonNullable<typeof d> => d !== undefined);
    const seen: PortRange[] = [];
    for (const d of this.#devices) {
      for (const [from, to] of d.ports) {
        for (let p = from; p <= to; p++) {
          if (inRanges(seen, p)) invalidTypeOverlap(p);
        }
      }
      seen.push(...d.ports);
    }
    this.ports = seen;
  }

  get stopRequested(): boolean {
    return this.#devices.some((d) => d.stopRequested === true);
  }

  #find(port: number): PortDevice | undefined {
    const cur = this.#current;
    if (cur !== undefined && inRanges(cur.ports, port)) return cur;
    this.#current = this.#devices.find((d) => inRanges(d.ports, port));
    return this.#current;
  }

  ioRead(port: number, size: number): number {
    checkAccess(port, size);
    const d = this.#find(port);
    return d === undefined ? 2 ** (8 * size) - 1 : d.ioRead(port, size);
  }

  ioWrite(port: number, size: number, value: number): void {
    checkAccess(port, size, value);
    this.#find(port)?.ioWrite(port, size, value);
  }

  afterExit(): void {
    this.#current?.afterExit?.();
  }

  saveState(): LegacyPcState {
    return {
      version: 1,
      ...(this.com1 && { com1: this.com1.saveState() }),
      ...(this.i8042 && { i8042: this.i8042.saveState() }),
      ...(this.cmos && { cmos: this.cmos.saveState() }),
      ...(this.pci && { pci: this.pci.saveState() }),
      ...(this.debug && { debug: this.debug.saveState() }),
    };
  }

  restoreState(state: unknown): void {
    const s = checkObject<Record<string, unknown>>('state', state);
    if (s.version !== 1) invalidValue('state.version', 'must be 1 (the only LegacyPcState version)', s.version);
    const names: ReadonlySet<string> = new Set(DEVICE_NAMES);
    for (const key of Object.keys(s)) {
      if (key !== 'version' && !names.has(key)) invalidValue(`state.${key}`, 'is not a device of a LegacyPcState');
    }
    for (const name of DEVICE_NAMES) {
      const has = this[name] !== undefined;
      const given = Object.hasOwn(s, name);
      if (has && !given) invalidValue(`state.${name}`, 'is missing: the stage has this device');
      if (!has && given) invalidValue(`state.${name}`, 'names a device the stage was built without');
    }
    // Every part is checked (and the CMOS clock read) before any device changes.
    const apply = [
      this.com1?.prepareRestore(s.com1, 'state.com1'),
      this.i8042?.prepareRestore(s.i8042, 'state.i8042'),
      this.cmos?.prepareRestore(s.cmos, 'state.cmos'),
      this.pci?.prepareRestore(s.pci, 'state.pci'),
      this.debug?.prepareRestore(s.debug, 'state.debug'),
    ];
    for (const f of apply) f?.();
  }
}

function invalidTypeOverlap(port: number): never {
  invalidValue('options', `puts two devices on port 0x${port.toString(16)}`);
}

/**
 * The legacy PC devices as one pipeline stage: COM1 ({@link Uart16550}), the i8042 (reset),
 * the CMOS/RTC, PCI mechanism #1 with no device and the debug ports (0x80, 0x402). It consumes
 * the port I/O exits of those ports and passes every other exit downstream; it completes when the
 * guest resets through the i8042. The models are `stage.device.com1`, `.i8042`, `.cmos`, `.pci`,
 * `.debug`. Every device is included by default; pass `false` to leave one out.
 * `stage.device.saveState()` and `restoreState()` take all their states at once, for snapshots.
 *
 * @example
 * ```ts
 * // A worker pipeline: serial output to the main thread, IRQ 4 on the in-kernel PIC.
 * const pipeline: VcpuPipeline = (exits$, ctx) =>
 *   exits$.pipe(
 *     legacyPc({
 *       com1: { onTx: (b) => ctx.emit('com1', b), irq: (l) => ctx.vm.setIrqLine(4, l) },
 *       i8042: { onReset: () => ctx.emit('reset', null) },
 *       cmos: { memorySize: 512 * 1024 * 1024 },
 *     }),
 *     untilHalt(),
 *     failOnUnhandled(),
 *   );
 * export default pipeline;
 * ```
 *
 * @param options - see {@link LegacyPcOptions}
 * @return the stage
 * @throws TypeError `ERR_INVALID_ARG_TYPE` / `ERR_INVALID_ARG_VALUE`, RangeError `ERR_OUT_OF_RANGE`
 *   for invalid options or two devices on one port
 */
export function legacyPc(options: LegacyPcOptions = {}): DeviceStage<LegacyPcDevices> {
  checkObject('options', options);
  const opt = <T>(name: string, v: T | false | undefined): T | undefined => {
    if (v === false) return undefined;
    if (v === undefined) return {} as T;
    if (typeof v !== 'object' || v === null) invalidType(`options.${name}`, 'an object or false', v);
    return v;
  };
  const com1Opts = opt('com1', options.com1);
  const com1 = com1Opts && new Uart16550(com1Opts);
  const i8042Opts = opt('i8042', options.i8042);
  const kbc = i8042Opts && new I8042(i8042Opts);
  const cmosOpts = opt('cmos', options.cmos);
  const rtc = cmosOpts && new Cmos(cmosOpts);
  if (
    options.pci !== undefined &&
    typeof options.pci !== 'boolean' &&
    (typeof options.pci !== 'object' || options.pci === null)
  ) {
    invalidType('options.pci', 'a boolean or an object', options.pci);
  }
  const pci = options.pci === false ? undefined : new PciAbsent();
  const debugOpts = opt('debug', options.debug);
  const debug = debugOpts && new DebugPorts(debugOpts);
  const device = new LegacyPc(com1, kbc, rtc, pci, debug);
  const stage = deviceStage(device);
  return com1?.hasInput === true ? whileSubscribed(stage, () => com1.connectInput()) : stage;
}
