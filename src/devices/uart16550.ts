/**
 * A 16550A UART (the PC's COM ports) as a pipeline stage.
 *
 * @module
 */
import { Subject } from 'rxjs';
import type { Observable, Subscription } from 'rxjs';
import {
  checkBool,
  checkInt,
  checkObject,
  checkU16,
  checkU8,
  invalidType,
  invalidValue,
  outOfRange,
} from '../abi/validate';
import type { PortRange } from '../runtime/operators/match';
import { byteRegisters, deviceStage, whileSubscribed } from './port-device';
import type { DeviceStage, PortDevice } from './port-device';

/** Register offsets from the base port (DLAB = LCR bit 7). */
export const UART_REG = {
  /** Read: receiver buffer (RBR); write: transmitter holding (THR). DLAB=1: divisor latch low (DLL). */
  RBR_THR: 0,
  /** Interrupt enable (IER). DLAB=1: divisor latch high (DLM). */
  IER: 1,
  /** Read: interrupt identification (IIR); write: FIFO control (FCR). */
  IIR_FCR: 2,
  /** Line control (LCR). */
  LCR: 3,
  /** Modem control (MCR). */
  MCR: 4,
  /** Line status (LSR). */
  LSR: 5,
  /** Modem status (MSR). */
  MSR: 6,
  /** Scratch (SCR). */
  SCR: 7,
} as const;

// IER bits
const IER_RDI = 0x01;
const IER_THRI = 0x02;
const IER_RLSI = 0x04;
const IER_MSI = 0x08;
// IIR values
const IIR_NO_INT = 0x01;
const IIR_MSI = 0x00;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_RLSI = 0x06;
const IIR_CTI = 0x0c;
const IIR_FIFO = 0xc0;
// FCR bits
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
// LCR
const LCR_DLAB = 0x80;
// MCR bits
const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
// LSR bits
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const LSR_INT_ANY = 0x1e;
// MSR bits
const MSR_DCTS = 0x01;
const MSR_DDSR = 0x02;
const MSR_TERI = 0x04;
const MSR_DDCD = 0x08;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;
const MSR_DELTAS = 0x0f;

/** Receive FIFO trigger levels selected by FCR bits 7:6. */
const TRIGGER_LEVELS = [1, 4, 8, 14] as const;

/** Size of the receive FIFO, in bytes. */
export const UART_FIFO_SIZE = 64;

/**
 * The state of a {@link Uart16550} as plain, JSON-safe data ({@link Uart16550.saveState},
 * {@link Uart16550.restoreState}): everything the guest can observe. The callbacks and the other
 * options are not part of it; they come from the device the state is restored into.
 */
export interface Uart16550State {
  /** The format's version: 1. */
  version: 1;
  /** Interrupt enable (IER), bits 3:0. */
  ier: number;
  /**
   * FIFO control as it stands: 0 (FIFOs off), or bit 0 (enable) with the trigger level (bits 7:6)
   * and DMA mode (bit 3); the self-clearing reset bits are never set.
   */
  fcr: number;
  /** Line control (LCR), with DLAB in bit 7. */
  lcr: number;
  /** Modem control (MCR), bits 4:0. */
  mcr: number;
  /**
   * Line status (LSR): THRE and TEMT (0x60) always set, data ready (bit 0) exactly when `rx` is not
   * empty, overrun (bit 1); no other bit.
   */
  lsr: number;
  /** Modem status (MSR): the status bits 7:4 and the delta bits 3:0 not yet read. */
  msr: number;
  /** Scratch (SCR). */
  scr: number;
  /** The divisor latch (DLM:DLL), 0..0xffff. */
  divisor: number;
  /**
   * The bytes in the receiver, oldest first: at most {@link UART_FIFO_SIZE} with the FIFOs on, at
   * most 1 (the holding register) with them off.
   */
  rx: number[];
  /** Whether a "transmitter holding register empty" interrupt is pending (cleared by reading IIR or writing THR). */
  thrPending: boolean;
  /**
   * The interrupt line's level as the device last drove it: `true` exactly when an enabled
   * interrupt is pending (IIR bit 0 clear).
   */
  irqLevel: boolean;
}

const UART_STATE_KEYS: ReadonlySet<string> = new Set([
  'version',
  'ier',
  'fcr',
  'lcr',
  'mcr',
  'lsr',
  'msr',
  'scr',
  'divisor',
  'rx',
  'thrPending',
  'irqLevel',
]);

/** IIR as the registers say (FIFO bits and the interrupt of highest priority). */
function interruptId(ier: number, fcr: number, lsr: number, msr: number, rxCount: number, thrPending: boolean): number {
  const fifo = (fcr & FCR_ENABLE) !== 0 ? IIR_FIFO : 0;
  let id = IIR_NO_INT;
  if ((ier & IER_RLSI) !== 0 && (lsr & LSR_INT_ANY) !== 0) id = IIR_RLSI;
  else if ((ier & IER_RDI) !== 0 && rxCount > 0) {
    const trigger = TRIGGER_LEVELS[fcr >> 6];
    id = fifo === 0 || rxCount >= trigger ? IIR_RDI : IIR_CTI;
  } else if ((ier & IER_THRI) !== 0 && thrPending) id = IIR_THRI;
  else if ((ier & IER_MSI) !== 0 && (msr & MSR_DELTAS) !== 0) id = IIR_MSI;
  return fifo | id;
}

/** Checks a whole {@link Uart16550State} at `path`; returns a copy made of the values checked (`+ 0`: a -0 is kept as 0). */
function checkUartState(path: string, state: unknown): Uart16550State {
  const s = checkObject<Record<string, unknown>>(path, state);
  if (s.version !== 1) invalidValue(`${path}.version`, 'must be 1 (the only Uart16550State version)', s.version);
  for (const key of Object.keys(s)) {
    if (!UART_STATE_KEYS.has(key)) invalidValue(`${path}.${key}`, 'is not a field of a Uart16550State');
  }
  const ier = checkInt(`${path}.ier`, s.ier, 0, 0x0f) + 0;
  const fcr = checkU8(`${path}.fcr`, s.fcr) + 0;
  if ((fcr & ~0xc9) !== 0 || (fcr !== 0 && (fcr & FCR_ENABLE) === 0))
    invalidValue(`${path}.fcr`, 'must be 0 or have bit 0 set and only bits 7, 6 and 3 besides', fcr);
  const lcr = checkU8(`${path}.lcr`, s.lcr) + 0;
  const mcr = checkInt(`${path}.mcr`, s.mcr, 0, 0x1f) + 0;
  const lsr = checkU8(`${path}.lsr`, s.lsr) + 0;
  const msr = checkU8(`${path}.msr`, s.msr) + 0;
  const scr = checkU8(`${path}.scr`, s.scr) + 0;
  const divisor = checkU16(`${path}.divisor`, s.divisor) + 0;
  const rxIn = s.rx;
  if (!Array.isArray(rxIn)) invalidType(`${path}.rx`, 'an array of bytes', rxIn);
  const capacity = (fcr & FCR_ENABLE) !== 0 ? UART_FIFO_SIZE : 1;
  const length: number = rxIn.length;
  if (length > capacity)
    outOfRange(`${path}.rx.length`, `<= ${capacity} (the receiver's size with ${path}.fcr = ${fcr})`, length);
  const rx: number[] = [];
  for (let i = 0; i < length; i++) rx.push(checkU8(`${path}.rx[${i}]`, rxIn[i]));
  if ((lsr & ~(LSR_DR | LSR_OE | LSR_THRE | LSR_TEMT)) !== 0 || (lsr & (LSR_THRE | LSR_TEMT)) !== (LSR_THRE | LSR_TEMT))
    invalidValue(`${path}.lsr`, 'must have bits 6 and 5 set and no other bit than 1 and 0 besides', lsr);
  if (((lsr & LSR_DR) !== 0) !== length > 0)
    invalidValue(`${path}.lsr`, `must have bit 0 (data ready) set exactly when ${path}.rx is not empty`, lsr);
  const thrPending = checkBool(`${path}.thrPending`, s.thrPending);
  const irqLevel = checkBool(`${path}.irqLevel`, s.irqLevel);
  if (((interruptId(ier, fcr, lsr, msr, length, thrPending) & IIR_NO_INT) === 0) !== irqLevel)
    invalidValue(
      `${path}.irqLevel`,
      'must be true exactly when the registers have an enabled interrupt pending',
      irqLevel,
    );
  return { version: 1, ier, fcr, lcr, mcr, lsr, msr, scr, divisor, rx, thrPending, irqLevel };
}

/** Options of {@link Uart16550}. */
export interface Uart16550Options {
  /** First of the UART's 8 ports. Default 0x3f8 (COM1). */
  base?: number;
  /**
   * Called with each level change of the interrupt line (the VMM wires it to
   * `vm.setIrqLine(4, level)` or an irqfd). The line is high while an enabled interrupt is
   * pending; each THR write lowers and raises it again, so an edge-triggered PIC sees every
   * "transmitter empty" interrupt.
   */
  irq?: (level: boolean) => void;
  /**
   * Called with the bytes the guest transmitted during one exit (one call per `out`, or per
   * `rep outsb`). In a worker pipeline: `onTx: (bytes) => ctx.emit('com1', bytes)`.
   */
  onTx?: (bytes: Uint8Array) => void;
  /** Bytes to receive: each value is queued with {@link Uart16550.input} (subscribed by the stage). */
  input$?: Observable<Uint8Array | string>;
  /**
   * The modem status inputs (MSR bits 7:4: DCD, RI, DSR, CTS) outside loopback mode.
   * Default 0xb0 (carrier detect, data set ready and clear to send, as a connected terminal).
   */
  modemInputs?: number;
}

/**
 * A 16550A UART: the eight registers at `base..base+7`, a 64-byte receive FIFO, immediate
 * transmission (THR is always empty again when the next instruction runs, so LSR reads THRE and
 * TEMT), interrupt identification with the 16550's priorities (line status > received data or
 * character timeout > THR empty > modem status) and the loopback mode the Linux 8250 driver
 * probes for.
 *
 * Guest accesses never throw: other access sizes are split into byte accesses at consecutive
 * ports; bytes outside the 8 registers read 0xff.
 *
 * The character timeout (IIR 0xCC) has no clock here: when the FIFO holds fewer bytes than the
 * trigger level, the timeout counts as already elapsed, so the guest is interrupted for every
 * byte that arrives.
 *
 * @example
 * ```ts
 * const com1 = uart16550({ irq: (level) => vm.setIrqLine(4, level) });
 * com1.device.output$.subscribe((bytes) => process.stdout.write(bytes));
 * com1.device.input('root\n');
 * await runInThread(vcpu, (exits$) => exits$.pipe(com1, untilHalt(), failOnUnhandled()));
 * ```
 */
export class Uart16550 implements PortDevice {
  /** The base port. */
  readonly base: number;
  /** The 8 ports `[base, base + 7]`. */
  readonly ports: ReadonlyArray<PortRange>;
  /** The bytes the guest transmits (outside loopback), one value per exit. */
  readonly output$: Observable<Uint8Array>;
  readonly ioRead: PortDevice['ioRead'];
  readonly ioWrite: PortDevice['ioWrite'];

  readonly #output = new Subject<Uint8Array>();
  readonly #irq: ((level: boolean) => void) | undefined;
  readonly #onTx: ((bytes: Uint8Array) => void) | undefined;
  readonly #input$: Observable<Uint8Array | string> | undefined;
  readonly #modemInputs: number;
  readonly #rx = new Uint8Array(UART_FIFO_SIZE);
  #rxHead = 0;
  #rxCount = 0;
  #tx: number[] = [];
  #ier = 0;
  #fcr = 0;
  #lcr = 0;
  #mcr = 0;
  #lsr = LSR_THRE | LSR_TEMT;
  #msr = 0;
  #scr = 0;
  #divisor = 0x0c;
  #thrPending = false;
  #level = false;

  /**
   * @param options - see {@link Uart16550Options}
   * @throws TypeError `ERR_INVALID_ARG_TYPE` / RangeError `ERR_OUT_OF_RANGE` for invalid options
   */
  constructor(options: Uart16550Options = {}) {
    checkObject('options', options);
    this.base = checkInt('options.base', options.base ?? 0x3f8, 0, 0xfff8);
    for (const name of ['irq', 'onTx'] as const) {
      if (options[name] !== undefined && typeof options[name] !== 'function')
        invalidType(`options.${name}`, 'of type function', options[name]);
    }
    this.#irq = options.irq;
    this.#onTx = options.onTx;
    this.#input$ = options.input$;
    this.#modemInputs = checkU8('options.modemInputs', options.modemInputs ?? MSR_DCD | MSR_DSR | MSR_CTS) & 0xf0;
    this.#msr = this.#modemInputs;
    this.ports = [[this.base, this.base + 7]];
    this.output$ = this.#output.asObservable();
    const regs = byteRegisters(
      this.base,
      8,
      (o) => this.readRegister(o),
      (o, v) => this.writeRegister(o, v),
    );
    this.ioRead = regs.ioRead;
    this.ioWrite = regs.ioWrite;
  }

  /** Whether the interrupt line is high. */
  get irqLevel(): boolean {
    return this.#level;
  }

  /** Bytes waiting in the receive FIFO (or holding register when the FIFO is off). */
  get rxCount(): number {
    return this.#rxCount;
  }

  /** Free space in the receiver: bytes {@link input} can take before an overrun. */
  get rxSpace(): number {
    return this.#rxCapacity() - this.#rxCount;
  }

  /** The divisor latch (DLM:DLL); the baud rate is 115200 / divisor. */
  get divisor(): number {
    return this.#divisor;
  }

  /**
   * Receives `bytes` (a string is taken as Latin-1) into the receive FIFO, as if they came down
   * the line. Bytes that do not fit are lost and set the overrun error (LSR.OE), as on the chip.
   * In loopback mode the line is disconnected and nothing is received.
   *
   * @param bytes - the bytes
   * @return how many bytes were stored
   * @throws TypeError `ERR_INVALID_ARG_TYPE` if `bytes` is not a Uint8Array, byte array or string
   */
  input(bytes: Uint8Array | ReadonlyArray<number> | string): number {
    let data: Uint8Array;
    if (typeof bytes === 'string') data = Uint8Array.from(Buffer.from(bytes, 'latin1'));
    else if (bytes instanceof Uint8Array) data = bytes;
    else if (Array.isArray(bytes)) data = Uint8Array.from(bytes as number[], (b) => b & 0xff);
    else invalidType('bytes', 'a Uint8Array, an array of bytes or a string', bytes);
    if ((this.#mcr & MCR_LOOP) !== 0) return 0;
    let stored = 0;
    for (const b of data) if (this.#receive(b)) stored++;
    this.#updateIrq();
    return stored;
  }

  /** Whether the UART was given an `input$` to subscribe. */
  get hasInput(): boolean {
    return this.#input$ !== undefined;
  }

  /** Subscribes {@link Uart16550Options.input$} (called by the stage on subscription). */
  connectInput(): Subscription | undefined {
    return this.#input$?.subscribe((chunk) => this.input(chunk));
  }

  /**
   * Reads register `offset` as the guest does (with its side effects: reading RBR pops the FIFO,
   * LSR clears the error bits, MSR the delta bits, IIR a THR-empty interrupt). Offsets outside
   * 0..7 read 0xff.
   */
  readRegister(offset: number): number {
    if (typeof offset !== 'number') invalidType('offset', 'a number', offset);
    switch (offset) {
      case UART_REG.RBR_THR: {
        if ((this.#lcr & LCR_DLAB) !== 0) return this.#divisor & 0xff;
        if (this.#rxCount === 0) return 0;
        const b = this.#rx[this.#rxHead];
        this.#rxHead = (this.#rxHead + 1) % UART_FIFO_SIZE;
        this.#rxCount--;
        if (this.#rxCount === 0) this.#lsr &= ~LSR_DR;
        this.#updateIrq();
        return b;
      }
      case UART_REG.IER:
        return (this.#lcr & LCR_DLAB) !== 0 ? this.#divisor >> 8 : this.#ier;
      case UART_REG.IIR_FCR: {
        const iir = this.#iir();
        if ((iir & 0x0f) === IIR_THRI) {
          this.#thrPending = false;
          this.#updateIrq();
        }
        return iir;
      }
      case UART_REG.LCR:
        return this.#lcr;
      case UART_REG.MCR:
        return this.#mcr;
      case UART_REG.LSR: {
        const lsr = this.#lsr;
        if ((lsr & LSR_INT_ANY) !== 0) {
          this.#lsr &= ~LSR_INT_ANY;
          this.#updateIrq();
        }
        return lsr;
      }
      case UART_REG.MSR: {
        const msr = this.#msr;
        if ((msr & MSR_DELTAS) !== 0) {
          this.#msr &= ~MSR_DELTAS;
          this.#updateIrq();
        }
        return msr;
      }
      case UART_REG.SCR:
        return this.#scr;
      default:
        return 0xff;
    }
  }

  /** Writes register `offset` as the guest does (only the low 8 bits of `value` count; offsets outside 0..7 are ignored). */
  writeRegister(offset: number, value: number): void {
    if (typeof offset !== 'number') invalidType('offset', 'a number', offset);
    if (typeof value !== 'number') invalidType('value', 'a number', value);
    const v = value & 0xff;
    switch (offset) {
      case UART_REG.RBR_THR:
        if ((this.#lcr & LCR_DLAB) !== 0) this.#divisor = (this.#divisor & 0xff00) | v;
        else this.#transmit(v);
        return;
      case UART_REG.IER: {
        if ((this.#lcr & LCR_DLAB) !== 0) {
          this.#divisor = (this.#divisor & 0xff) | (v << 8);
          return;
        }
        const changed = (this.#ier ^ v) & 0x0f;
        this.#ier = v & 0x0f;
        // Enabling THRI while THR is empty raises the interrupt (Linux's UART_BUG_TXEN test relies on it).
        if ((changed & IER_THRI) !== 0) this.#thrPending = (this.#ier & IER_THRI) !== 0 && (this.#lsr & LSR_THRE) !== 0;
        this.#updateIrq();
        return;
      }
      case UART_REG.IIR_FCR: {
        // Toggling the FIFO enable bit clears both FIFOs.
        if (((this.#fcr ^ v) & FCR_ENABLE) !== 0 || (v & FCR_CLEAR_RX) !== 0) this.#clearRx();
        this.#fcr = v & 0xc9; // trigger level, DMA mode, enable; the reset bits self-clear
        if ((v & FCR_ENABLE) === 0) this.#fcr = 0;
        this.#updateIrq();
        return;
      }
      case UART_REG.LCR:
        this.#lcr = v;
        return;
      case UART_REG.MCR: {
        const old = this.#mcr;
        this.#mcr = v & 0x1f;
        if (old !== this.#mcr) this.#setModemStatus();
        this.#updateIrq();
        return;
      }
      case UART_REG.SCR:
        this.#scr = v;
        return;
      default:
        return; // LSR and MSR are read-only
    }
  }

  /**
   * The device's state as plain, JSON-safe data: the registers, the divisor latch, the bytes in
   * the receiver, the pending "THR empty" interrupt and the level of the interrupt line. Nothing
   * changes. Bytes the guest transmitted are handed to `onTx`/{@link output$} after each exit
   * and are not part of the state (a stage's device has none left between exits).
   *
   * @example
   * ```ts
   * const com1 = new Uart16550();
   * com1.writeRegister(UART_REG.SCR, 0x5a);
   * const saved = JSON.stringify(com1.saveState()); // e.g. into a snapshot file
   * const again = new Uart16550({ irq: (level) => vm.setIrqLine(4, level) });
   * again.restoreState(JSON.parse(saved));
   * again.readRegister(UART_REG.SCR); // 0x5a
   * ```
   * @return a new object; see {@link Uart16550State}
   * @throws nothing: the device's registers are always a valid state
   */
  saveState(): Uart16550State {
    const rx: number[] = [];
    for (let i = 0; i < this.#rxCount; i++) rx.push(this.#rx[(this.#rxHead + i) % UART_FIFO_SIZE]);
    return {
      version: 1,
      ier: this.#ier,
      fcr: this.#fcr,
      lcr: this.#lcr,
      mcr: this.#mcr,
      lsr: this.#lsr,
      msr: this.#msr,
      scr: this.#scr,
      divisor: this.#divisor,
      rx,
      thrPending: this.#thrPending,
      irqLevel: this.#level,
    };
  }

  /**
   * Puts the device into a state {@link saveState} gave (here or in another process), usually
   * into a device just constructed with the options the VM needs now (`irq`, `onTx`, `input$`,
   * `modemInputs` are this device's: the saved modem status stays until the guest next writes
   * MCR). The whole state is checked before anything changes; a refused state leaves the device
   * as it was. Guest accesses after a restore never throw, whatever the state held.
   *
   * The `irq` callback is not called: the saved level is taken as the line's level (the in-kernel
   * irqchip restored from the same snapshot already has it), so the next change is an edge.
   * Bytes transmitted before the restore and not yet handed to `onTx` stay queued.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const snapshot: { com1: unknown }; // read from a snapshot file
   * const com1 = uart16550({ irq: (level) => vm.setIrqLine(4, level) });
   * com1.device.restoreState(snapshot.com1);
   * exits$.pipe(com1, untilHalt());
   * ```
   * @param state - a {@link Uart16550State}
   * @throws TypeError `ERR_INVALID_ARG_TYPE` for a field of the wrong type, `ERR_INVALID_ARG_VALUE`
   *   for another version, a missing or unknown field, or registers that contradict each other
   *   (data ready without data, an interrupt line level the registers do not give); RangeError
   *   `ERR_OUT_OF_RANGE` for a number out of its register's range or more received bytes than the
   *   receiver holds. Each message names the field (`state.rx[3]`).
   */
  restoreState(state: unknown): void {
    this.prepareRestore(state)();
  }

  /**
   * @internal Checks `state` (named `path` in errors) and returns the function that applies it
   * (which cannot throw); `legacyPc()` checks every device before applying any.
   */
  prepareRestore(state: unknown, path = 'state'): () => void {
    const s = checkUartState(path, state);
    return () => {
      this.#rx.fill(0);
      this.#rx.set(s.rx);
      this.#rxHead = 0;
      this.#rxCount = s.rx.length;
      this.#ier = s.ier;
      this.#fcr = s.fcr;
      this.#lcr = s.lcr;
      this.#mcr = s.mcr;
      this.#lsr = s.lsr;
      this.#msr = s.msr;
      this.#scr = s.scr;
      this.#divisor = s.divisor;
      this.#thrPending = s.thrPending;
      this.#level = s.irqLevel;
    };
  }

  /** Emits the bytes transmitted during the exit (called by the stage after each exit). */
  afterExit(): void {
    if (this.#tx.length === 0) return;
    const bytes = Uint8Array.from(this.#tx);
    this.#tx = [];
    this.#onTx?.(bytes);
    this.#output.next(bytes);
  }

  #rxCapacity(): number {
    return (this.#fcr & FCR_ENABLE) !== 0 ? UART_FIFO_SIZE : 1;
  }

  #clearRx(): void {
    this.#rxHead = 0;
    this.#rxCount = 0;
    this.#lsr &= ~LSR_DR;
  }

  /** One byte off the line into the receiver; false on overrun. */
  #receive(b: number): boolean {
    if ((this.#fcr & FCR_ENABLE) === 0 && this.#rxCount > 0) {
      // 16450 mode: the new byte overwrites the holding register.
      this.#rx[this.#rxHead] = b;
      this.#lsr |= LSR_OE;
      return false;
    }
    if (this.#rxCount >= this.#rxCapacity()) {
      this.#lsr |= LSR_OE;
      return false;
    }
    this.#rx[(this.#rxHead + this.#rxCount) % UART_FIFO_SIZE] = b;
    this.#rxCount++;
    this.#lsr |= LSR_DR;
    return true;
  }

  #transmit(b: number): void {
    // THR is written: the THRE interrupt drops, then the byte leaves at once and THR is empty again.
    this.#thrPending = false;
    this.#updateIrq();
    if ((this.#mcr & MCR_LOOP) !== 0) this.#receive(b);
    else this.#tx.push(b);
    this.#thrPending = (this.#ier & IER_THRI) !== 0;
    this.#updateIrq();
  }

  /** Recomputes MSR bits 7:4 from the modem inputs or, in loopback, from MCR; sets the delta bits. */
  #setModemStatus(): void {
    let status: number;
    if ((this.#mcr & MCR_LOOP) !== 0) {
      status =
        ((this.#mcr & MCR_RTS) !== 0 ? MSR_CTS : 0) |
        ((this.#mcr & MCR_DTR) !== 0 ? MSR_DSR : 0) |
        ((this.#mcr & MCR_OUT1) !== 0 ? MSR_RI : 0) |
        ((this.#mcr & MCR_OUT2) !== 0 ? MSR_DCD : 0);
    } else {
      status = this.#modemInputs;
    }
    const old = this.#msr & 0xf0;
    const diff = old ^ status;
    let deltas = this.#msr & MSR_DELTAS;
    if ((diff & MSR_CTS) !== 0) deltas |= MSR_DCTS;
    if ((diff & MSR_DSR) !== 0) deltas |= MSR_DDSR;
    if ((old & MSR_RI) !== 0 && (status & MSR_RI) === 0) deltas |= MSR_TERI;
    if ((diff & MSR_DCD) !== 0) deltas |= MSR_DDCD;
    this.#msr = status | deltas;
  }

  #iir(): number {
    return interruptId(this.#ier, this.#fcr, this.#lsr, this.#msr, this.#rxCount, this.#thrPending);
  }

  #updateIrq(): void {
    const level = (this.#iir() & IIR_NO_INT) === 0;
    if (level === this.#level) return;
    this.#level = level;
    this.#irq?.(level);
  }
}

/**
 * A 16550A UART as a pipeline stage: consumes the port I/O exits at `base..base+7` (COM1 by
 * default) and passes every other exit on. The device model is `stage.device` (a
 * {@link Uart16550}): `stage.device.input(bytes)`, `stage.device.output$`.
 * `options.input$` is subscribed while the stage is.
 *
 * @example
 * ```ts
 * // In a worker pipeline: forward TX to the main thread.
 * const pipeline: VcpuPipeline = (exits$, ctx) => {
 *   const com1 = uart16550({ onTx: (bytes) => ctx.emit('com1', bytes), irq: (l) => ctx.vm.setIrqLine(4, l) });
 *   return exits$.pipe(com1, untilHalt(), failOnUnhandled());
 * };
 * export default pipeline;
 * ```
 *
 * @param options - see {@link Uart16550Options}
 * @return the stage
 * @throws TypeError `ERR_INVALID_ARG_TYPE` / RangeError `ERR_OUT_OF_RANGE` for invalid options
 */
export function uart16550(options: Uart16550Options = {}): DeviceStage<Uart16550> {
  const device = new Uart16550(options);
  const stage = deviceStage(device);
  return options.input$ === undefined ? stage : whileSubscribed(stage, () => device.connectInput());
}
