/**
 * A minimal MC146818 CMOS RTC and its NVRAM.
 *
 * @module
 */
import {
  checkBool,
  checkInt,
  checkObject,
  checkU64,
  checkU8,
  invalidType,
  invalidValue,
  outOfRange,
} from '../abi/validate';
import type { PortRange } from '../runtime/operators/match';
import { byteRegisters, deviceStage } from './port-device';
import type { DeviceStage, PortDevice } from './port-device';

/** The index port (bit 7: NMI disable). */
export const CMOS_INDEX_PORT = 0x70;
/** The data port. */
export const CMOS_DATA_PORT = 0x71;

/** CMOS register numbers. */
export const CMOS_REG = {
  SECONDS: 0x00,
  SECONDS_ALARM: 0x01,
  MINUTES: 0x02,
  MINUTES_ALARM: 0x03,
  HOURS: 0x04,
  HOURS_ALARM: 0x05,
  DAY_OF_WEEK: 0x06,
  DAY_OF_MONTH: 0x07,
  MONTH: 0x08,
  YEAR: 0x09,
  STATUS_A: 0x0a,
  STATUS_B: 0x0b,
  STATUS_C: 0x0c,
  STATUS_D: 0x0d,
  BASE_MEM_LO: 0x15,
  BASE_MEM_HI: 0x16,
  EXT_MEM_LO: 0x17,
  EXT_MEM_HI: 0x18,
  EXT_MEM2_LO: 0x30,
  EXT_MEM2_HI: 0x31,
  CENTURY: 0x32,
  MEM_ABOVE_16M_LO: 0x34,
  MEM_ABOVE_16M_HI: 0x35,
  MEM_ABOVE_4G_LO: 0x5b,
  MEM_ABOVE_4G_MID: 0x5c,
  MEM_ABOVE_4G_HI: 0x5d,
} as const;

const B_BINARY = 0x04;
const B_24H = 0x02;
/** Status A at reset: UIP clear, 32.768 kHz time base, 1024 Hz periodic rate. */
const STATUS_A_DEFAULT = 0x26;
/** Status B at reset: 24-hour mode, BCD. */
const STATUS_B_DEFAULT = B_24H;
/** Status D: valid RAM and time. */
const STATUS_D_VRT = 0x80;

const KIB = 1024n;
const MIB = 1024n * KIB;
const GIB = 1024n * MIB;

/** Options of {@link Cmos}. */
export interface CmosOptions {
  /** The wall clock the RTC shows (read in UTC). Default `() => new Date()`. */
  clock?: () => Date;
  /** Guest RAM size in bytes, for the memory size registers. Default 0 (registers left 0). */
  memorySize?: number | bigint;
  /**
   * Where RAM stops below 4 GiB (the start of the PCI hole); RAM past it is mapped from 4 GiB
   * (registers 0x5b–0x5d). Default 3 GiB.
   */
  lowMemoryLimit?: number | bigint;
}

/** The largest time value of a `Date`, in milliseconds from the epoch (either way). */
const MAX_TIME_MS = 8.64e15;

/**
 * The state of a {@link Cmos} as plain, JSON-safe data ({@link Cmos.saveState},
 * {@link Cmos.restoreState}).
 *
 * The clock: the RTC shows the injected clock (`options.clock`, the host's time by default)
 * plus an offset that guest writes to the time registers move. The state keeps both the offset
 * and the time the guest's RTC showed when it was saved; a restored RTC shows its own clock plus
 * the same offset, so the guest's clock went on running while the VM was saved (as a real RTC
 * does on its battery), except that it never shows a time before the saved one: when the restoring
 * host's clock is behind the saving host's, the offset grows so that the RTC starts at the saved
 * time.
 */
export interface CmosState {
  /** The format's version: 1. */
  version: 1;
  /** The register the index port selects (0..127). */
  index: number;
  /** Whether the guest set the NMI-disable bit (bit 7 of the index port). */
  nmiDisabled: boolean;
  /**
   * The 128 bytes of CMOS RAM, each 0..255: the alarms, status A and B, the memory size registers
   * as the saved device had them, and what the guest stored elsewhere. (The time registers, status
   * C and D are computed: their bytes are kept but not read.)
   */
  ram: number[];
  /** Milliseconds the guest's RTC is ahead of the injected clock (negative: behind); an integer. */
  clockOffsetMs: number;
  /** The time the guest's RTC showed when the state was saved, in milliseconds since the epoch (UTC). */
  timeMs: number;
}

const CMOS_STATE_KEYS: ReadonlySet<string> = new Set([
  'version',
  'index',
  'nmiDisabled',
  'ram',
  'clockOffsetMs',
  'timeMs',
]);

/** Checks a whole {@link CmosState} at `path`; returns a copy made of the values checked (`+ 0`: a -0 is kept as 0). */
function checkCmosState(path: string, state: unknown): CmosState {
  const s = checkObject<Record<string, unknown>>(path, state);
  if (s.version !== 1) invalidValue(`${path}.version`, 'must be 1 (the only CmosState version)', s.version);
  for (const key of Object.keys(s)) {
    if (!CMOS_STATE_KEYS.has(key)) invalidValue(`${path}.${key}`, 'is not a field of a CmosState');
  }
  const index = checkInt(`${path}.index`, s.index, 0, 0x7f) + 0;
  const nmiDisabled = checkBool(`${path}.nmiDisabled`, s.nmiDisabled);
  const ramIn = s.ram;
  if (!Array.isArray(ramIn)) invalidType(`${path}.ram`, 'an array of 128 bytes', ramIn);
  const length: number = ramIn.length;
  if (length !== 128) outOfRange(`${path}.ram.length`, '128', length);
  const ram: number[] = [];
  for (let i = 0; i < 128; i++) ram.push(checkU8(`${path}.ram[${i}]`, ramIn[i]));
  const clockOffsetMs = checkInt(`${path}.clockOffsetMs`, s.clockOffsetMs, -2 * MAX_TIME_MS, 2 * MAX_TIME_MS) + 0;
  const timeMs = checkInt(`${path}.timeMs`, s.timeMs, -MAX_TIME_MS, MAX_TIME_MS) + 0;
  return { version: 1, index, nmiDisabled, ram, clockOffsetMs, timeMs };
}

const toBcd = (v: number): number => ((Math.floor(v / 10) % 10) << 4) | (v % 10);
const fromBcd = (v: number): number => (v >> 4) * 10 + (v & 0x0f);

/**
 * A minimal CMOS/RTC at ports 0x70 (index; bit 7 is the NMI mask, recorded in
 * {@link nmiDisabled}) and 0x71 (data): the time registers 0x00–0x09 and the century (0x32) from
 * the injectable clock, in BCD unless status B bit 2 selects binary, in 24-hour mode unless status B
 * bit 1 is cleared (12-hour: bit 7 of the hours is PM); status A (update never in progress),
 * B (writable), C (no interrupt flags) and D (valid RAM); the memory size registers from the
 * configured RAM size; every other byte of the 128-byte RAM reads back what was written. Guest
 * writes to the time registers move the guest's clock (an offset from the injected clock). Status
 * B's SET bit is stored but does not stop the clock.
 *
 * @example
 * ```ts
 * const rtc = cmos({ memorySize: 256 * 1024 * 1024, clock: () => new Date('2024-02-29T23:59:58Z') });
 * exits$.pipe(rtc, untilHalt());
 * ```
 */
export class Cmos implements PortDevice {
  readonly ports: ReadonlyArray<PortRange> = [[CMOS_INDEX_PORT, CMOS_DATA_PORT]];
  readonly #ram = new Uint8Array(128);
  readonly #clock: () => Date;
  #index = 0;
  #nmiDisabled = false;
  /** Milliseconds added to the injected clock (moved by guest writes to the time registers). */
  #offsetMs = 0;

  /**
   * @param options - see {@link CmosOptions}
   * @throws TypeError `ERR_INVALID_ARG_TYPE` / RangeError `ERR_OUT_OF_RANGE` for invalid options
   */
  constructor(options: CmosOptions = {}) {
    checkObject('options', options);
    if (options.clock !== undefined && typeof options.clock !== 'function')
      invalidType('options.clock', 'of type function', options.clock);
    this.#clock = options.clock ?? (() => new Date());
    const size = checkU64('options.memorySize', options.memorySize ?? 0);
    const limit = checkU64('options.lowMemoryLimit', options.lowMemoryLimit ?? 3n * GIB);
    this.#ram[CMOS_REG.STATUS_A] = STATUS_A_DEFAULT;
    this.#ram[CMOS_REG.STATUS_B] = STATUS_B_DEFAULT;
    this.#ram[CMOS_REG.STATUS_D] = STATUS_D_VRT;
    this.#setMemory(size, limit < 4n * GIB ? limit : 4n * GIB);
  }

  /** Whether the guest set the NMI-disable bit (bit 7 of the index port). */
  get nmiDisabled(): boolean {
    return this.#nmiDisabled;
  }

  /** The selected register (0..127). */
  get index(): number {
    return this.#index;
  }

  /**
   * The device's state as plain, JSON-safe data: the selected register, the NMI-disable bit, the
   * 128 bytes of RAM, and the guest's clock as its offset from the injected clock and the time it
   * shows now (see {@link CmosState} for how a restore uses them). Reads the clock; nothing changes.
   *
   * @example
   * ```ts
   * const rtc = new Cmos({ memorySize: 256 * 1024 * 1024 });
   * rtc.ioWrite(CMOS_INDEX_PORT, 1, 0x80 | CMOS_REG.STATUS_B); // select status B, NMIs off
   * const saved = JSON.stringify(rtc.saveState());
   * const again = new Cmos();
   * again.restoreState(JSON.parse(saved));
   * again.nmiDisabled; // true
   * ```
   * @return a new object; see {@link CmosState}
   * @throws whatever `options.clock` throws
   */
  saveState(): CmosState {
    const host = this.#hostMs();
    return {
      version: 1,
      index: this.#index,
      nmiDisabled: this.#nmiDisabled,
      ram: Array.from(this.#ram),
      clockOffsetMs: this.#offsetMs,
      timeMs: Math.min(Math.max(host + this.#offsetMs, -MAX_TIME_MS), MAX_TIME_MS),
    };
  }

  /**
   * Puts the device into a state {@link saveState} gave, usually into one just constructed with the
   * clock of the process that resumes the VM. The RTC then shows this device's clock plus the saved
   * offset, or the saved time if that is later (the restoring host's clock is behind the saving
   * host's): the guest's time never goes back from what it was at the save. The memory size
   * registers come from the state (the restored VM has the saved VM's memory), not from
   * `options.memorySize`. The whole state is checked before anything changes; a refused state
   * leaves the device as it was.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const snapshot: { cmos: unknown }; // read from a snapshot file
   * const rtc = cmos();
   * rtc.device.restoreState(snapshot.cmos); // the guest's time goes on from the snapshot's
   * ```
   * @param state - a {@link CmosState}
   * @throws TypeError `ERR_INVALID_ARG_TYPE` for a field of the wrong type, `ERR_INVALID_ARG_VALUE`
   *   for another version or a missing or unknown field; RangeError `ERR_OUT_OF_RANGE` for a
   *   number out of range (an index past 127, a byte past 255, a time outside `Date`'s range) or a
   *   RAM of another length than 128; each names the field (`state.ram[17]`). Whatever
   *   `options.clock` throws, with nothing changed.
   */
  restoreState(state: unknown): void {
    this.prepareRestore(state)();
  }

  /**
   * @internal Checks `state` (named `path` in errors), reads the clock, and returns the function
   * that applies the state (which cannot throw); `legacyPc()` checks every device before applying any.
   */
  prepareRestore(state: unknown, path = 'state'): () => void {
    const s = checkCmosState(path, state);
    const host = this.#hostMs();
    const offsetMs = host + s.clockOffsetMs < s.timeMs ? s.timeMs - host : s.clockOffsetMs;
    return () => {
      this.#ram.set(s.ram);
      this.#index = s.index;
      this.#nmiDisabled = s.nmiDisabled;
      this.#offsetMs = offsetMs;
    };
  }

  #setMemory(size: bigint, limit: bigint): void {
    const low = size < limit ? size : limit;
    const high = size - low;
    const set16 = (reg: number, v: bigint): void => {
      this.#ram[reg] = Number(v & 0xffn);
      this.#ram[reg + 1] = Number((v >> 8n) & 0xffn);
    };
    const cap = (v: bigint, max: bigint): bigint => (v > max ? max : v < 0n ? 0n : v);
    const baseKib = cap(low / KIB, 640n);
    set16(CMOS_REG.BASE_MEM_LO, baseKib);
    const extKib = low > MIB ? cap((low - MIB) / KIB, 0xffffn) : 0n;
    set16(CMOS_REG.EXT_MEM_LO, extKib);
    set16(CMOS_REG.EXT_MEM2_LO, extKib);
    const above16 = low > 16n * MIB ? cap((low - 16n * MIB) / (64n * KIB), 0xffffn) : 0n;
    set16(CMOS_REG.MEM_ABOVE_16M_LO, above16);
    const above4g = cap(high / (64n * KIB), 0xffffffn);
    set16(CMOS_REG.MEM_ABOVE_4G_LO, above4g);
    this.#ram[CMOS_REG.MEM_ABOVE_4G_HI] = Number((above4g >> 16n) & 0xffn);
  }

  /** The injected clock's time in milliseconds (0 for an invalid date). */
  #hostMs(): number {
    const t = this.#clock().getTime();
    return Number.isFinite(t) ? t : 0;
  }

  #now(): Date {
    return new Date(this.#hostMs() + this.#offsetMs);
  }

  #encode(v: number): number {
    return (this.#ram[CMOS_REG.STATUS_B] & B_BINARY) !== 0 ? v : toBcd(v);
  }

  #decode(v: number): number {
    return (this.#ram[CMOS_REG.STATUS_B] & B_BINARY) !== 0 ? v : fromBcd(v);
  }

  /**
   * Reads CMOS register `reg` (0..127) as the guest does: time registers come from the clock,
   * status C reads 0 (no interrupt flags), other registers from the RAM.
   */
  readRegister(reg: number): number {
    const r = checkInt('reg', reg, 0, 0xff) & 0x7f;
    switch (r) {
      case CMOS_REG.SECONDS:
        return this.#encode(this.#now().getUTCSeconds());
      case CMOS_REG.MINUTES:
        return this.#encode(this.#now().getUTCMinutes());
      case CMOS_REG.HOURS: {
        const h = this.#now().getUTCHours();
        if ((this.#ram[CMOS_REG.STATUS_B] & B_24H) !== 0) return this.#encode(h);
        return this.#encode(h % 12 === 0 ? 12 : h % 12) | (h >= 12 ? 0x80 : 0);
      }
      case CMOS_REG.DAY_OF_WEEK:
        return this.#encode(this.#now().getUTCDay() + 1);
      case CMOS_REG.DAY_OF_MONTH:
        return this.#encode(this.#now().getUTCDate());
      case CMOS_REG.MONTH:
        return this.#encode(this.#now().getUTCMonth() + 1);
      case CMOS_REG.YEAR:
        return this.#encode(this.#now().getUTCFullYear() % 100);
      case CMOS_REG.CENTURY:
        return this.#encode(Math.floor(this.#now().getUTCFullYear() / 100) % 100);
      case CMOS_REG.STATUS_A:
        return this.#ram[r] & 0x7f; // UIP never set
      case CMOS_REG.STATUS_C:
        return 0;
      case CMOS_REG.STATUS_D:
        return STATUS_D_VRT;
      default:
        return this.#ram[r];
    }
  }

  /** Writes CMOS register `reg` (0..127) as the guest does (only the low 8 bits of `value` count). */
  writeRegister(reg: number, value: number): void {
    const r = checkInt('reg', reg, 0, 0xff) & 0x7f;
    const v = checkInt('value', value, 0, 0xffff_ffff) & 0xff;
    switch (r) {
      case CMOS_REG.SECONDS:
      case CMOS_REG.MINUTES:
      case CMOS_REG.HOURS:
      case CMOS_REG.DAY_OF_MONTH:
      case CMOS_REG.MONTH:
      case CMOS_REG.YEAR:
      case CMOS_REG.CENTURY:
        this.#setTime(r, v);
        return;
      case CMOS_REG.DAY_OF_WEEK:
      case CMOS_REG.STATUS_C:
      case CMOS_REG.STATUS_D:
        return; // computed or read-only
      case CMOS_REG.STATUS_A:
        this.#ram[r] = v & 0x7f;
        return;
      default:
        this.#ram[r] = v;
    }
  }

  /** Moves the guest's clock so that field `reg` reads `raw` (out-of-range values are ignored). */
  #setTime(reg: number, raw: number): void {
    const now = this.#now();
    const f = {
      s: now.getUTCSeconds(),
      min: now.getUTCMinutes(),
      h: now.getUTCHours(),
      d: now.getUTCDate(),
      mon: now.getUTCMonth(),
      y: now.getUTCFullYear(),
    };
    let v: number;
    if (reg === CMOS_REG.HOURS && (this.#ram[CMOS_REG.STATUS_B] & B_24H) === 0) {
      const h12 = this.#decode(raw & 0x7f);
      if (h12 < 1 || h12 > 12) return;
      v = (h12 % 12) + ((raw & 0x80) !== 0 ? 12 : 0);
    } else {
      v = this.#decode(raw);
    }
    switch (reg) {
      case CMOS_REG.SECONDS:
        if (v > 59) return;
        f.s = v;
        break;
      case CMOS_REG.MINUTES:
        if (v > 59) return;
        f.min = v;
        break;
      case CMOS_REG.HOURS:
        if (v > 23) return;
        f.h = v;
        break;
      case CMOS_REG.DAY_OF_MONTH:
        if (v < 1 || v > 31) return;
        f.d = v;
        break;
      case CMOS_REG.MONTH:
        if (v < 1 || v > 12) return;
        f.mon = v - 1;
        break;
      case CMOS_REG.YEAR:
        if (v > 99) return;
        f.y = Math.floor(f.y / 100) * 100 + v;
        break;
      default: // century
        if (v > 99) return;
        f.y = v * 100 + (f.y % 100);
    }
    const target = Date.UTC(f.y, f.mon, f.d, f.h, f.min, f.s, now.getUTCMilliseconds());
    if (Number.isFinite(target)) this.#offsetMs += target - now.getTime();
  }

  // 0x70 (index, write-only: it reads as all ones, as on QEMU) and 0x71 (data), split into byte
  // accesses like any ISA device.
  readonly #ports = byteRegisters(
    CMOS_INDEX_PORT,
    2,
    (off) => (off === CMOS_DATA_PORT - CMOS_INDEX_PORT ? this.readRegister(this.#index) : 0xff),
    (off, v) => {
      if (off === 0) {
        this.#index = v & 0x7f;
        this.#nmiDisabled = (v & 0x80) !== 0;
      } else this.writeRegister(this.#index, v);
    },
  );

  ioRead(port: number, size: number): number {
    return this.#ports.ioRead(port, size);
  }

  ioWrite(port: number, size: number, value: number): void {
    this.#ports.ioWrite(port, size, value);
  }
}

/**
 * A minimal CMOS/RTC as a pipeline stage (ports 0x70–0x71); the model is `stage.device`.
 *
 * @example
 * ```ts
 * // @ts-setup: declare const vmRamBytes: number; // the size of the guest's RAM, in bytes
 * exits$.pipe(cmos({ memorySize: vmRamBytes }), untilHalt());
 * ```
 *
 * @param options - see {@link CmosOptions}
 * @return the stage
 * @throws TypeError / RangeError for invalid options
 */
export function cmos(options: CmosOptions = {}): DeviceStage<Cmos> {
  return deviceStage(new Cmos(options));
}
