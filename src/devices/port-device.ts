/**
 * The plumbing shared by the legacy PC device models: a port-I/O device is an object that answers
 * reads and takes writes of 1, 2 or 4 bytes at its ports, and {@link deviceStage} turns it into a
 * pipeline stage that consumes the `IoIn`/`IoOut` exits on those ports and passes every other exit
 * downstream unchanged.
 *
 * Device models are synchronous: they answer while the vCPU is stopped and never hold it.
 *
 * @module
 */
import { defer, filter, finalize, takeWhile } from 'rxjs';
import type { MonoTypeOperatorFunction, Observable, Unsubscribable } from 'rxjs';
import type { PortRange } from '../runtime/operators/match';
import type { VcpuExit } from '../wrappers/vcpu-exit';
import { checkInt, checkObject, checkU16, invalidType, invalidValue } from '../abi/validate';

/**
 * Checks the arguments of a device model's public `ioRead`/`ioWrite` (the run loop only passes
 * what the kernel produced, but these are public methods): `port` 0..0xffff, `size` 1, 2 or 4, and
 * for writes `value` an integer 0..2^32-1. A size such as 2^53 would otherwise loop for ever.
 *
 * @throws TypeError `ERR_INVALID_ARG_TYPE` / RangeError `ERR_OUT_OF_RANGE`, `ERR_INVALID_ARG_VALUE`
 */
export function checkAccess(port: unknown, size: unknown, value?: unknown): void {
  checkU16('port', port);
  checkInt('size', size, 1, 4);
  if (size === 3) invalidValue('size', 'must be 1, 2 or 4', size);
  if (value !== undefined || arguments.length > 2) checkInt('value', value, 0, 0xffff_ffff);
}

/** A device model reached through x86 port I/O. */
export interface PortDevice {
  /** The inclusive port ranges the device decodes. */
  readonly ports: ReadonlyArray<PortRange>;
  /**
   * The value the guest reads at `port` (an access of `size` bytes, 1, 2 or 4), unsigned.
   * Must not throw for any port in {@link ports} and any size.
   */
  ioRead(port: number, size: number): number;
  /** The guest writes `value` (`size` bytes, unsigned) at `port`. Must not throw for guest values. */
  ioWrite(port: number, size: number, value: number): void;
  /** Called after each exit the device handled (e.g. to flush the bytes it transmitted). */
  afterExit?(): void;
  /** Checked after each exit the device handled: `true` completes the stage's output. */
  readonly stopRequested?: boolean;
}

/** A pipeline stage that is also a handle on its device model: `exits$.pipe(stage)`, `stage.device`. */
export type DeviceStage<D> = MonoTypeOperatorFunction<VcpuExit> & { readonly device: D };

/** Whether `port` falls in one of `ranges`. */
export function inRanges(ranges: ReadonlyArray<PortRange>, port: number): boolean {
  if (!Array.isArray(ranges)) invalidType('ranges', 'an array of [from, to] ranges', ranges);
  for (const r of ranges) {
    if (!Array.isArray(r)) invalidType('ranges', 'an array of [from, to] ranges', r);
    if (port >= r[0] && port <= r[1]) return true;
  }
  return false;
}

/** Reads `size` bytes little-endian from `data` at `offset` (unsigned, size <= 4). */
function getLe(data: Uint8Array, offset: number, size: number): number {
  let v = 0;
  for (let b = size - 1; b >= 0; b--) v = v * 256 + (data[offset + b] ?? 0);
  return v;
}

/** Writes `size` bytes of `value` little-endian into `data` at `offset`. */
function setLe(data: Uint8Array, offset: number, size: number, value: number): void {
  for (let b = 0; b < size && offset + b < data.length; b++) data[offset + b] = Math.floor(value / 2 ** (8 * b)) & 0xff;
}

/**
 * Performs one port-I/O exit on `device`: each of the `count` elements of a string instruction
 * (`rep insb`/`rep outsw`, …) is one access of `size` bytes at the same port. Accesses of another
 * size than 1, 2 or 4 (which the kernel does not produce) read all ones and write nothing.
 *
 * @param device - the device model
 * @param exit - an `IoIn` or `IoOut` exit on one of the device's ports
 */
export function performIo(device: PortDevice, exit: VcpuExit): void {
  checkObject('device', device);
  checkObject('exit', exit);
  if (exit.kind !== 'IoIn' && exit.kind !== 'IoOut') return;
  const { port, size, data } = exit;
  const valid = size === 1 || size === 2 || size === 4;
  const count = size > 0 ? Math.floor(data.length / size) : 0;
  if (exit.kind === 'IoIn') {
    if (!valid) {
      data.fill(0xff);
      return;
    }
    for (let i = 0; i < count; i++) setLe(data, i * size, size, device.ioRead(port, size));
    data.fill(0xff, count * size);
  } else if (valid) {
    for (let i = 0; i < count; i++) device.ioWrite(port, size, getLe(data, i * size, size));
  }
}

/**
 * Turns a {@link PortDevice} into a pipeline stage: `IoIn`/`IoOut` exits whose port is in
 * `device.ports` are performed on the device and consumed, every other exit is passed downstream
 * unchanged. When the device requests a stop (`stopRequested`), the output completes (which
 * unsubscribes from the source and ends the vCPU's run). An error thrown by the device (in
 * practice by a callback it was given, such as an IRQ line) errors the output.
 *
 * @example
 * ```ts
 * // A device at ports 0x510–0x511 that reads as 0xff and logs what the guest writes.
 * const myDevice: PortDevice = {
 *   ports: [[0x510, 0x511]],
 *   ioRead: () => 0xff,
 *   ioWrite: (port, size, value) => console.log(`out ${size} byte(s) at 0x${port.toString(16)}: ${value}`),
 * };
 * const stage = deviceStage(myDevice);
 * exits$.pipe(stage, failOnUnhandled());
 * ```
 *
 * @param device - the device model
 * @return the stage, with the device as `stage.device`
 */
export function deviceStage<D extends PortDevice>(device: D): DeviceStage<D> {
  checkObject('device', device);
  if (!Array.isArray(device.ports)) invalidType('device.ports', 'an array of [from, to] ranges', device.ports);
  const ranges = device.ports;
  const mine = (exit: VcpuExit): boolean =>
    (exit.kind === 'IoIn' || exit.kind === 'IoOut') && inRanges(ranges, exit.port);
  // Built from takeWhile and filter so that a stop or an error also stops a synchronous source at once.
  const stage = (source: Observable<VcpuExit>): Observable<VcpuExit> =>
    source.pipe(
      takeWhile((exit) => {
        if (!mine(exit)) return true;
        performIo(device, exit);
        device.afterExit?.();
        return device.stopRequested !== true;
      }),
      filter((exit) => !mine(exit)),
    );
  return Object.assign(stage, { device });
}

/**
 * Runs `connect` when the stage is subscribed and unsubscribes what it returns when the stage's
 * subscription ends (used to feed device inputs such as a UART's `input$` while the vCPU runs).
 *
 * @param stage - the device stage
 * @param connect - called at each subscription
 * @return a stage with the same device
 */
export function whileSubscribed<D>(stage: DeviceStage<D>, connect: () => Unsubscribable | undefined): DeviceStage<D> {
  if (typeof stage !== 'function') invalidType('stage', 'a device stage (function)', stage);
  if (typeof connect !== 'function') invalidType('connect', 'a function', connect);
  const wrapped = (source: Observable<VcpuExit>): Observable<VcpuExit> =>
    defer(() => {
      const connection = connect();
      return stage(source).pipe(finalize(() => connection?.unsubscribe()));
    });
  return Object.assign(wrapped, { device: stage.device });
}

/**
 * Adapts a bank of 8-bit registers at `base..base + count - 1` to {@link PortDevice} reads and
 * writes: a 2- or 4-byte access is split into byte accesses at consecutive ports (as an ISA bus
 * does); bytes outside the bank read 0xff and their writes are dropped.
 *
 * @param base - first port of the bank
 * @param count - number of registers
 * @param read - reads register `offset` (0..count-1), returns a byte
 * @param write - writes the byte `value` to register `offset`
 * @return `ioRead`/`ioWrite` functions
 */
export function byteRegisters(
  base: number,
  count: number,
  read: (offset: number) => number,
  write: (offset: number, value: number) => void,
): Pick<PortDevice, 'ioRead' | 'ioWrite'> {
  return {
    ioRead: (port, size) => {
      checkAccess(port, size);
      let v = 0;
      for (let b = size - 1; b >= 0; b--) {
        const off = port + b - base;
        v = v * 256 + (off >= 0 && off < count ? read(off) & 0xff : 0xff);
      }
      return v;
    },
    ioWrite: (port, size, value) => {
      checkAccess(port, size, value);
      for (let b = 0; b < size; b++) {
        const off = port + b - base;
        if (off >= 0 && off < count) write(off, Math.floor(value / 2 ** (8 * b)) & 0xff);
      }
    },
  };
}

/** Composes device stages left to right into one stage (`exits$.pipe(a, b, c)`). */
export function composeStages(
  stages: ReadonlyArray<MonoTypeOperatorFunction<VcpuExit>>,
): MonoTypeOperatorFunction<VcpuExit> {
  return (source) => stages.reduce((acc, stage) => stage(acc), source);
}
