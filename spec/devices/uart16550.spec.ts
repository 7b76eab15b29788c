import { Subject } from 'rxjs';
import type { TestScheduler } from 'rxjs/testing';
import { Uart16550, uart16550, UART_FIFO_SIZE } from '../../src/devices/uart16550';
import { bytesOf, hlt, ioIn, ioOut, newTestScheduler } from '../helpers/exits';
import { expectCode } from '../helpers/kvm';

const COM1 = 0x3f8;
/** A byte read of COM1 register `off`. */
const r = (off: number): ReturnType<typeof ioIn> => ioIn(COM1 + off);
/** A byte write of `v` to COM1 register `off`. */
const w = (off: number, v: number): ReturnType<typeof ioOut> => ioOut(COM1 + off, [v]);
const [RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR] = [0, 1, 2, 3, 4, 5, 6, 7];
const FCR = IIR;
const THR = RBR;
const u8 = (...b: number[]): Uint8Array => Uint8Array.from(b);

/** uart16550 */
describe('uart16550', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should consume port I/O on base..base+7 and pass every other exit through', () => {
    const a = r(LSR);
    const b = ioIn(COM1 - 1);
    const c = ioOut(COM1 + 8, [0x41]);
    const d = w(SCR, 0x5a);
    const h = hlt();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-d-h-|', { a, b, c, d, h });
      const e1subs = '  ^----------!';
      const expected = '---b-c---h-|';

      expectObservable(e1.pipe(uart16550())).toBe(expected, { b, c, h });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(bytesOf(a.data)).toEqual([0x60]); // THRE | TEMT
    expect(bytesOf(b.data)).toEqual([0xcc]);
  });

  it("should pass Linux 8250 autoconfig's IER existence test (port 0x80 writes pass through)", () => {
    const com = uart16550();
    const save = r(IER);
    const zero = w(IER, 0);
    const p1 = ioOut(0x80, [0xff]);
    const s2 = r(IER);
    const all = w(IER, 0x0f);
    const p2 = ioOut(0x80, [0]);
    const s3 = r(IER);
    const restore = w(IER, 0);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-d-e-f-g-h-|', { a: save, b: zero, c: p1, d: s2, e: all, f: p2, g: s3, h: restore });
      const e1subs = '  ^----------------!';
      const expected = '-----c-----f-----|';

      expectObservable(e1.pipe(com)).toBe(expected, { c: p1, f: p2 });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect([save, s2, s3].map((e) => e.data[0])).toEqual([0x00, 0x00, 0x0f]);
  });

  it('should pass the loopback test: MCR = LOOP|OUT2|RTS makes MSR[7:4] read DCD|CTS', () => {
    const com = uart16550();
    const mcr = r(MCR);
    const lcr = r(LCR);
    const loop = w(MCR, 0x1a);
    const msr = r(MSR);
    const back = w(MCR, 0x00);
    const msr2 = r(MSR);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-d-e-f-|', { a: mcr, b: lcr, c: loop, d: msr, e: back, f: msr2 });
      const e1subs = '  ^------------!';
      const expected = '-------------|';

      expectObservable(e1.pipe(com)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(mcr.data[0]).toBe(0);
    expect(lcr.data[0]).toBe(0);
    // DCD|CTS (0x90), and DSR went 1 -> 0 (DDSR) on entering loopback: the delta bits are 3:0.
    expect(msr.data[0] & 0xf0).toBe(0x90);
    expect(msr.data[0]).toBe(0x92);
    // Back to the line: DCD|DSR|CTS, with the DSR delta (deltas cleared by the previous read).
    expect(msr2.data[0]).toBe(0xb2);
  });

  it('should be detected as a 16550A: IIR bits 7:6 set once the FIFO is enabled, no EFR, no 64-byte FIFO, no UUE', () => {
    const com = uart16550();
    const s = {
      a: w(LCR, 0xbf),
      b: w(FCR, 0),
      c: w(LCR, 0),
      d: w(FCR, 0x01),
      e: r(IIR), // type probe
      f: w(LCR, 0x80),
      g: r(IIR),
      h: w(LCR, 0xbf),
      i: r(IIR), // EFR probes read IIR, not 0
      j: w(LCR, 0),
      k: w(FCR, 0x21),
      l: r(IIR),
      m: w(FCR, 0x01), // TI16750 probe
      n: w(LCR, 0x80),
      o: w(FCR, 0x21),
      p: r(IIR),
      q: w(FCR, 0x01),
      t: w(LCR, 0),
      u: r(IER),
      v: w(IER, 0x40),
      x: r(IER), // Xscale UUE probe
    };
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -abcde-fghi-jklm-nopqt-uvx-|', s);
      const e1subs = '  ^--------------------------!';
      const expected = '---------------------------|';

      expectObservable(e1.pipe(com)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(s.e.data[0]).toBe(0xc1);
    expect(s.e.data[0] >> 6).toBe(3); // autoconfig_16550a
    expect([s.g.data[0], s.i.data[0]]).toEqual([0xc1, 0xc1]);
    expect([s.l.data[0] & 0xe0, s.p.data[0] & 0xe0]).toEqual([0xc0, 0xc0]); // no 64-byte FIFO bit
    expect([s.u.data[0], s.x.data[0]]).toEqual([0x00, 0x00]); // IER bits 7:4 read 0
  });

  it('should keep the scratch register and report IIR bits 7:6 clear with the FIFO off', () => {
    const s = {
      a: w(SCR, 0xa5),
      b: r(SCR),
      c: w(SCR, 0x5a),
      d: r(SCR),
      e: r(IIR),
      f: w(FCR, 0x07),
      g: r(IIR),
      h: w(FCR, 0),
      i: r(IIR),
    };
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -abcdefghi-|', s);
      const e1subs = '  ^----------!';
      const expected = '-----------|';

      expectObservable(e1.pipe(uart16550())).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect([s.b.data[0], s.d.data[0]]).toEqual([0xa5, 0x5a]);
    expect([s.e.data[0], s.g.data[0], s.i.data[0]]).toEqual([0x01, 0xc1, 0x01]);
  });

  it('should pass the UART_BUG_TXEN test: enabling THRI with THR empty raises a THRE interrupt', () => {
    const s = { a: w(IER, 0x02), b: r(LSR), c: r(IIR), d: w(IER, 0), e: r(IIR) };
    const irq = new Subject<boolean>();
    const com = uart16550({ irq: (level) => irq.next(level) });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('   -a-b-c-d-e-|', s);
      const e1subs = '   ^----------!';
      const expected = ' -----------|';
      const irqLine = '  -t---f------';

      expectObservable(irq).toBe(irqLine, { t: true, f: false });
      expectObservable(e1.pipe(com)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect([s.b.data[0], s.c.data[0], s.e.data[0]]).toEqual([0x60, 0x02, 0x01]);
  });

  it('should transmit THR bytes to output$ and onTx, pulsing the IRQ for each THR-empty interrupt', () => {
    const s = {
      a: w(LCR, 0x03),
      b: w(FCR, 0x07),
      c: w(IER, 0x02),
      d: r(IIR),
      e: r(LSR),
      f: w(THR, 0x48),
      g: r(IIR),
      h: w(THR, 0x69),
      i: w(THR, 0x21),
      j: w(IER, 0),
    };
    const irq = new Subject<boolean>();
    const tx: number[][] = [];
    const com = uart16550({ irq: (level) => irq.next(level), onTx: (b) => tx.push(bytesOf(b)) });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('   -a-b-c-d-e-f-g-h-i----j-|', s);
      const e1subs = '   ^-----------------------!';
      const expected = ' ------------------------|';
      const irqLine = '  -----t-f---t-f-t-(ft)-f-';
      const output = '   -----------x---y-z------';

      expectObservable(irq).toBe(irqLine, { t: true, f: false });
      expectObservable(com.device.output$).toBe(output, { x: u8(0x48), y: u8(0x69), z: u8(0x21) });
      expectObservable(e1.pipe(com)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(s.d.data[0]).toBe(0xc2); // FIFO enabled | THR empty
    expect(s.e.data[0]).toBe(0x60);
    expect(s.g.data[0]).toBe(0xc2);
    expect(tx).toEqual([[0x48], [0x69], [0x21]]);
  });

  it('should send the bytes of a rep outsb as one chunk', () => {
    const a = ioOut(COM1, [0x61, 0x62, 0x63], 3);
    const com = uart16550();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-|', { a });
      const e1subs = '  ^--!';
      const expected = '---|';

      expectObservable(com.device.output$).toBe('-x--', { x: u8(0x61, 0x62, 0x63) });
      expectObservable(e1.pipe(com)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should fill the RX FIFO from input$, with a timeout interrupt below the trigger level and a data interrupt at it', () => {
    const s = {
      a: w(FCR, 0x41),
      b: w(IER, 0x01),
      c: r(IIR),
      d: r(LSR),
      e: r(IIR),
      f: r(RBR),
      g: r(RBR),
      h: r(RBR),
      i: r(RBR),
      j: r(LSR),
      k: r(IIR),
      l: r(RBR),
    };
    const irq = new Subject<boolean>();
    testScheduler.run(({ hot, cold, expectObservable, expectSubscriptions }) => {
      const input = cold('     ---x--y------------', { x: 'abc', y: 'd' });
      const inputsubs = '      ^-----------------!';
      const com = uart16550({ irq: (level) => irq.next(level), input$: input });
      const e1 = hot('         -ab-cd-e-fghi-jkl-|', s);
      const e1subs = '         ^-----------------!';
      const expected = '       ------------------|';
      const irqLine = '        ---t--------f------';

      expectObservable(irq).toBe(irqLine, { t: true, f: false });
      expectObservable(e1.pipe(com)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      expectSubscriptions(input.subscriptions).toBe(inputsubs);
    });
    expect(s.c.data[0]).toBe(0xcc); // 3 bytes < trigger level 4: character timeout
    expect(s.d.data[0]).toBe(0x61); // DR | THRE | TEMT
    expect(s.e.data[0]).toBe(0xc4); // 4 bytes >= trigger level 4: received data available
    expect([s.f, s.g, s.h, s.i].map((e) => e.data[0])).toEqual([0x61, 0x62, 0x63, 0x64]);
    expect(s.j.data[0]).toBe(0x60);
    expect(s.k.data[0]).toBe(0xc1);
    expect(s.l.data[0]).toBe(0x00); // empty FIFO
  });

  it('should report a character timeout (IIR 0xCC) for data below the trigger level', () => {
    const com = uart16550();
    const s = { a: w(FCR, 0xc1), b: w(IER, 0x01), c: r(IIR), d: r(RBR), e: r(IIR) };
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -ab-c-d-e-|', s);
      const e1subs = '  ^---------!';
      const expected = '----------|';

      hot('---x').subscribe(() => com.device.input([0x7a]));
      expectObservable(e1.pipe(com)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect([s.c.data[0], s.d.data[0], s.e.data[0]]).toEqual([0xcc, 0x7a, 0xc1]);
  });

  it('should set OE on FIFO overflow, raise a line status interrupt (highest priority) and clear it on LSR read', () => {
    const com = uart16550();
    const stored = { n: -1 };
    const s = { a: w(FCR, 0x01), b: w(IER, 0x07), c: r(IIR), d: r(LSR), e: r(IIR), f: r(LSR) };
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -ab--c-d-e-f-|', s);
      const e1subs = '  ^------------!';
      const expected = '-------------|';

      hot('---x').subscribe(() => (stored.n = com.device.input(new Uint8Array(UART_FIFO_SIZE + 6).fill(0x55))));
      expectObservable(e1.pipe(com)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(stored.n).toBe(64);
    expect(com.device.rxCount).toBe(64);
    expect(s.c.data[0]).toBe(0xc6); // line status beats received data and THR empty
    expect(s.d.data[0]).toBe(0x63); // DR | OE | THRE | TEMT
    expect(s.e.data[0]).toBe(0xc4); // then received data (64 >= trigger 1)
    expect(s.f.data[0]).toBe(0x61); // OE cleared by the read
  });

  it('should overwrite the holding register and set OE with the FIFO off (16450 mode)', () => {
    const com = new Uart16550();
    expect(com.input('xy')).toBe(1);
    expect(com.readRegister(LSR)).toBe(0x63);
    expect(com.readRegister(RBR)).toBe(0x79);
    expect(com.readRegister(LSR)).toBe(0x60);
    expect(com.rxSpace).toBe(1);
  });

  it('should loop TX back to RX in loopback mode, with MSR following MCR and modem status interrupts', () => {
    const s = {
      a: w(IER, 0x09),
      b: w(MCR, 0x10),
      c: r(IIR),
      d: r(MSR),
      e: r(IIR),
      f: w(THR, 0x42),
      g: r(LSR),
      h: r(IIR),
      i: r(RBR),
      j: w(MCR, 0x1f),
      k: r(MSR),
      l: w(MCR, 0x1b),
      m: r(MSR),
      n: w(MCR, 0),
      o: r(MSR),
    };
    const com = uart16550();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -abcdefghi-jklmno-|', s);
      const e1subs = '  ^-----------------!';
      const expected = '------------------|';

      expectObservable(com.device.output$).toBe('-------------------');
      expectObservable(e1.pipe(com)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(s.c.data[0]).toBe(0x00); // modem status interrupt (FIFO off)
    expect(s.d.data[0]).toBe(0x0b); // all inputs dropped: DCTS | DDSR | DDCD
    expect(s.e.data[0]).toBe(0x01);
    expect(s.g.data[0]).toBe(0x61); // the byte came back
    expect(s.h.data[0]).toBe(0x04);
    expect(s.i.data[0]).toBe(0x42);
    expect(s.k.data[0]).toBe(0xfb); // DCD | RI | DSR | CTS, deltas for CTS, DSR, DCD (RI rose: no TERI)
    expect(s.m.data[0]).toBe(0xb4); // OUT1 off: RI fell, trailing edge (TERI)
    expect(s.o.data[0]).toBe(0xb0); // back on the line: the modem inputs, unchanged
  });

  it('should give the divisor latch at offsets 0/1 while LCR.DLAB is set, leaving THR and IER alone', () => {
    const s = {
      a: w(IER, 0x05),
      b: w(LCR, 0x83),
      c: w(0, 0x01),
      d: w(1, 0x00),
      e: r(0),
      f: r(1),
      g: w(LCR, 0x03),
      h: r(IER),
      i: r(LCR),
    };
    const com = uart16550();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -abcdefghi-|', s);
      const e1subs = '  ^----------!';
      const expected = '-----------|';

      expectObservable(com.device.output$).toBe('------------');
      expectObservable(e1.pipe(com)).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect([s.e.data[0], s.f.data[0], s.h.data[0], s.i.data[0]]).toEqual([0x01, 0x00, 0x05, 0x03]);
    expect(com.device.divisor).toBe(1);
  });

  it('should split wider accesses into byte accesses and read 0xff past the 8 registers', () => {
    const a = ioIn(COM1 + LSR, 2); // LSR, MSR
    const b = ioIn(COM1 + MSR, 4); // MSR, SCR, 0x400, 0x401
    const c = ioOut(COM1 + SCR, [0x77, 0x88]); // SCR; 0x400 dropped
    const d = ioIn(COM1 + SCR);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-d-|', { a, b, c, d });
      const e1subs = '  ^--------!';
      const expected = '---------|';

      expectObservable(e1.pipe(uart16550())).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(bytesOf(a.data)).toEqual([0x60, 0xb0]);
    expect(bytesOf(b.data)).toEqual([0xb0, 0x00, 0xff, 0xff]);
    expect(bytesOf(d.data)).toEqual([0x77]);
  });

  it('should answer at another base port (COM2)', () => {
    const a = ioOut(0x2f8 + SCR, [0x12]);
    const b = ioIn(0x2f8 + SCR);
    const c = ioIn(COM1 + SCR);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-|', { a, b, c });
      const e1subs = '  ^------!';
      const expected = '-----c-|';

      expectObservable(e1.pipe(uart16550({ base: 0x2f8 }))).toBe(expected, { c });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(b.data[0]).toBe(0x12);
  });

  it('should error the output when the irq callback throws, and unsubscribe', () => {
    const error = new Error('KVM_IRQ_LINE: EBADF');
    const a = w(IER, 0x02);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-|', { a });
      const e1subs = '  ^!  ';
      const expected = '-#  ';

      const com = uart16550({
        irq: () => {
          throw error;
        },
      });
      expectObservable(e1.pipe(com)).toBe(expected, undefined, error);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should read 0xff at unknown offsets and ignore writes there', () => {
    const com = new Uart16550();
    expect([8, -1, 255, 1.5].map((o) => com.readRegister(o))).toEqual([0xff, 0xff, 0xff, 0xff]);
    expect(() => com.writeRegister(99, 0x1234)).not.toThrow();
    com.writeRegister(7, 0x1234); // only the low byte counts
    expect(com.readRegister(7)).toBe(0x34);
  });

  it('should check its options', () => {
    expectCode(() => uart16550({ base: 0xfff9 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => uart16550({ base: -1 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => uart16550({ irq: 4 as never }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(() => uart16550(null as never), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(() => new Uart16550().input({} as never), 'TypeError', 'ERR_INVALID_ARG_TYPE');
  });
});
