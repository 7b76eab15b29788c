/**
 * The legacy PC devices in one pipeline stage.
 *
 * @module
 */
import { checkObject, invalidType, invalidValue } from '../abi/validate';
import type { PortRange } from '../runtime/operators/match';
import { Cmos } from './cmos';
import type { CmosOptions } from './cmos';
import { DebugPorts } from './debug-ports';
import type { DebugPortsOptions } from './debug-ports';
import { I8042 } from './i8042';
import type { I8042Options } from './i8042';
import { PciAbsent } from './pci-absent';
import { checkAccess, deviceStage, inRanges, whileSubscribed } from './port-device';
import type { DeviceStage, PortDevice } from './port-device';
import { Uart16550 } from './uart16550';
import type { Uart16550Options } from './uart16550';

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

/** The device models of a {@link legacyPc} stage (absent ones are `undefined`). */
export interface LegacyPcDevices extends PortDevice {
  readonly com1: Uart16550 | undefined;
  readonly i8042: I8042 | undefined;
  readonly cmos: Cmos | undefined;
  readonly pci: PciAbsent | undefined;
  readonly debug: DebugPorts | undefined;
}

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
