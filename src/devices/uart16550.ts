/**
 * A 16550A UART (the PC's COM ports) as a pipeline stage.
 *
 * @module
 */
import { Subject } from 'rxjs';
import type { Observable, Subscription } from 'rxjs';
import { checkInt, checkObject, checkU8, invalidType } from '../abi/validate';
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
    const fifo = (this.#fcr & FCR_ENABLE) !== 0 ? IIR_FIFO : 0;
    const ier = this.#ier;
    let id = IIR_NO_INT;
    if ((ier & IER_RLSI) !== 0 && (this.#lsr & LSR_INT_ANY) !== 0) id = IIR_RLSI;
    else if ((ier & IER_RDI) !== 0 && this.#rxCount > 0) {
      const trigger = TRIGGER_LEVELS[this.#fcr >> 6];
      id = fifo === 0 || this.#rxCount >= trigger ? IIR_RDI : IIR_CTI;
    } else if ((ier & IER_THRI) !== 0 && this.#thrPending) id = IIR_THRI;
    else if ((ier & IER_MSI) !== 0 && (this.#msr & MSR_DELTAS) !== 0) id = IIR_MSI;
    return fifo | id;
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
