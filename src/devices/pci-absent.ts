/**
 * PCI configuration mechanism #1 with no device behind it.
 *
 * @module
 */
import { checkObject, checkU32, invalidValue } from '../abi/validate';
import type { PortRange } from '../runtime/operators/match';
import { checkAccess, deviceStage } from './port-device';
import type { DeviceStage, PortDevice } from './port-device';

/** CONFIG_ADDRESS. */
export const PCI_CONFIG_ADDRESS = 0xcf8;
/** CONFIG_DATA (0xCFC–0xCFF). */
export const PCI_CONFIG_DATA = 0xcfc;

/**
 * The state of a {@link PciAbsent} as plain, JSON-safe data ({@link PciAbsent.saveState},
 * {@link PciAbsent.restoreState}).
 */
export interface PciAbsentState {
  /** The format's version: 1. */
  version: 1;
  /** CONFIG_ADDRESS as last written (0..0xffffffff). */
  address: number;
}

const PCI_STATE_KEYS: ReadonlySet<string> = new Set(['version', 'address']);

/** Checks a whole {@link PciAbsentState} at `path`; returns a copy made of the values checked (`+ 0`: a -0 is kept as 0). */
function checkPciState(path: string, state: unknown): PciAbsentState {
  const s = checkObject<Record<string, unknown>>(path, state);
  if (s.version !== 1) invalidValue(`${path}.version`, 'must be 1 (the only PciAbsentState version)', s.version);
  for (const key of Object.keys(s)) {
    if (!PCI_STATE_KEYS.has(key)) invalidValue(`${path}.${key}`, 'is not a field of a PciAbsentState');
  }
  return { version: 1, address: checkU32(`${path}.address`, s.address) + 0 };
}

/**
 * PCI configuration mechanism #1 (ports 0xCF8–0xCFF) on a bus with no devices: a 32-bit access to
 * CONFIG_ADDRESS (0xCF8) stores and reads back the address; every read of CONFIG_DATA
 * (0xCFC–0xCFF, any size) returns all ones, the "no device" answer, and writes to it are ignored.
 * Narrower accesses to 0xCF8–0xCFB are not configuration cycles: they read all ones and writes are
 * ignored (Linux's `pci_check_type1` probe then finds mechanism #1 but no device on bus 0).
 *
 * @example
 * ```ts
 * exits$.pipe(pciAbsent(), failOnUnhandled());
 * ```
 */
export class PciAbsent implements PortDevice {
  readonly ports: ReadonlyArray<PortRange> = [[PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA + 3]];
  #address = 0;

  /** The CONFIG_ADDRESS register, as last written. */
  get address(): number {
    return this.#address;
  }

  /**
   * The device's state as plain, JSON-safe data: CONFIG_ADDRESS. Nothing changes.
   *
   * @example
   * ```ts
   * const pci = new PciAbsent();
   * pci.ioWrite(PCI_CONFIG_ADDRESS, 4, 0x8000_0000);
   * const again = new PciAbsent();
   * again.restoreState(JSON.parse(JSON.stringify(pci.saveState())));
   * again.ioRead(PCI_CONFIG_ADDRESS, 4); // 0x80000000
   * ```
   * @return a new object; see {@link PciAbsentState}
   * @throws nothing: the device's fields are always a valid state
   */
  saveState(): PciAbsentState {
    return { version: 1, address: this.#address };
  }

  /**
   * Puts the device into a state {@link saveState} gave. The whole state is checked before
   * anything changes; a refused state leaves the device as it was.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const snapshot: { pci: unknown }; // read from a snapshot file
   * const pci = pciAbsent();
   * pci.device.restoreState(snapshot.pci);
   * ```
   * @param state - a {@link PciAbsentState}
   * @throws TypeError `ERR_INVALID_ARG_TYPE` for a field of the wrong type, `ERR_INVALID_ARG_VALUE`
   *   for another version or a missing or unknown field; RangeError `ERR_OUT_OF_RANGE` for an
   *   address that is not a 32-bit unsigned integer; each names the field (`state.address`)
   */
  restoreState(state: unknown): void {
    this.prepareRestore(state)();
  }

  /**
   * @internal Checks `state` (named `path` in errors) and returns the function that applies it
   * (which cannot throw); `legacyPc()` checks every device before applying any.
   */
  prepareRestore(state: unknown, path = 'state'): () => void {
    const s = checkPciState(path, state);
    return () => {
      this.#address = s.address;
    };
  }

  ioRead(port: number, size: number): number {
    checkAccess(port, size);
    if (port === PCI_CONFIG_ADDRESS && size === 4) return this.#address;
    return 2 ** (8 * size) - 1;
  }

  ioWrite(port: number, size: number, value: number): void {
    checkAccess(port, size, value);
    if (port === PCI_CONFIG_ADDRESS && size === 4) this.#address = value >>> 0;
  }
}

/**
 * PCI configuration mechanism #1 with no device, as a pipeline stage (ports 0xCF8–0xCFF).
 *
 * @example
 * ```ts
 * exits$.pipe(pciAbsent(), untilHalt());
 * ```
 *
 * @return the stage; the model is `stage.device`
 */
export function pciAbsent(): DeviceStage<PciAbsent> {
  return deviceStage(new PciAbsent());
}
