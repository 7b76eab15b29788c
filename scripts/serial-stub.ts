/**
 * A throwaway 16550 console stub for the Linux e2e boot. TO BE REPLACED by the real device in
 * `src/devices/uart16550` once it lands: this one has no receive path and no interrupts.
 *
 * Enough for the kernel's 8250 driver to find a 16550A and print: LSR always THRE|TEMT, THR bytes
 * go to the sink, IER/LCR/MCR/SCR/DLL/DLM are plain registers, IIR always says "no interrupt"
 * (so the driver flags the THRE bug and transmits from a timer instead of the IRQ), MSR follows
 * MCR in loopback (the driver's loopback probe).
 */
export class SerialStub {
  readonly base: number;
  #ier = 0;
  #lcr = 0;
  #mcr = 0;
  #scr = 0;
  #dll = 0;
  #dlm = 0;
  #fifo = false;
  readonly #sink: (byte: number) => void;

  constructor(base: number, sink: (byte: number) => void) {
    this.base = base;
    this.#sink = sink;
  }

  /** Whether `port` is one of this UART's eight registers. */
  owns(port: number): boolean {
    return port >= this.base && port < this.base + 8;
  }

  write(port: number, value: number): void {
    const dlab = (this.#lcr & 0x80) !== 0;
    switch (port - this.base) {
      case 0:
        if (dlab) this.#dll = value;
        else this.#sink(value);
        break;
      case 1:
        if (dlab) this.#dlm = value;
        else this.#ier = value & 0x0f;
        break;
      case 2:
        this.#fifo = (value & 1) !== 0;
        break;
      case 3:
        this.#lcr = value;
        break;
      case 4:
        this.#mcr = value & 0x1f;
        break;
      case 7:
        this.#scr = value;
        break;
    }
  }

  read(port: number): number {
    const dlab = (this.#lcr & 0x80) !== 0;
    switch (port - this.base) {
      case 0:
        return dlab ? this.#dll : 0;
      case 1:
        return dlab ? this.#dlm : this.#ier;
      case 2:
        return 0x01 | (this.#fifo ? 0xc0 : 0);
      case 3:
        return this.#lcr;
      case 4:
        return this.#mcr;
      case 5:
        return 0x60; // THRE | TEMT
      case 6: {
        if (this.#mcr & 0x10) {
          const m = this.#mcr;
          return ((m & 2) << 3) | ((m & 1) << 5) | ((m & 4) << 4) | ((m & 8) << 4);
        }
        return 0xb0; // DCD | DSR | CTS
      }
      default:
        return this.#scr;
    }
  }
}
