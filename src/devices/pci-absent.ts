/**
 * PCI configuration mechanism #1 with no device behind it.
 *
 * @module
 */
import type { PortRange } from '../runtime/operators/match';
import { checkAccess, deviceStage } from './port-device';
import type { DeviceStage, PortDevice } from './port-device';

/** CONFIG_ADDRESS. */
export const PCI_CONFIG_ADDRESS = 0xcf8;
/** CONFIG_DATA (0xCFC–0xCFF). */
export const PCI_CONFIG_DATA = 0xcfc;

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
