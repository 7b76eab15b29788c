/**
 * The legacy PC devices' saveState/restoreState (issue 11): a device driven into a non-trivial
 * state, saved, sent through JSON and restored into a fresh device answers the same accesses as
 * the original, side by side; malformed states are refused, naming the field, with nothing
 * changed; and no mutation of a valid state makes a restored device throw during guest I/O.
 */
import fc from 'fast-check';
import { from } from 'rxjs';
import { Cmos } from '../../src/devices/cmos';
import type { CmosState } from '../../src/devices/cmos';
import { DebugPorts } from '../../src/devices/debug-ports';
import { I8042 } from '../../src/devices/i8042';
import { legacyPc } from '../../src/devices/legacy-pc';
import type { LegacyPcDevices, LegacyPcState } from '../../src/devices/legacy-pc';
import { PciAbsent } from '../../src/devices/pci-absent';
import type { DeviceStage, PortDevice } from '../../src/devices/port-device';
import { Uart16550 } from '../../src/devices/uart16550';
import type { Uart16550State } from '../../src/devices/uart16550';
import type * as api from '../../src/index';
import type { VcpuExit } from '../../src/wrappers/vcpu-exit';
import { ioIn, ioOut } from '../helpers/exits';
import { count } from '../helpers/stress';

const COM1 = 0x3f8;
const [RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR] = [0, 1, 2, 3, 4, 5, 6, 7];
const [DLL, DLM, FCR, THR] = [RBR, IER, IIR, RBR];
const LEAP_EVE = new Date('2024-02-29T23:59:58.250Z');

/** One guest access (or bytes arriving on COM1's line). */
type Access = { r: number; size?: 1 | 2 | 4 } | { w: number; v: number; size?: 1 | 2 | 4 } | { rx: number[] };

/** Performs `seq` on `dev` as the stage would (afterExit after each access); returns what was read. */
function play(dev: PortDevice, seq: readonly Access[], com1?: Uart16550): number[] {
  const reads: number[] = [];
  for (const a of seq) {
    if ('rx' in a) (dev instanceof Uart16550 ? dev : com1)?.input(a.rx);
    else if ('w' in a) dev.ioWrite(a.w, a.size ?? 1, a.v);
    else reads.push(dev.ioRead(a.r, a.size ?? 1));
    dev.afterExit?.();
  }
  return reads;
}

/** The state through a file: JSON text and back. */
const viaJson = <T>(state: T): unknown => JSON.parse(JSON.stringify(state));

/** Every value of `state`, recursively, is a number, boolean, string or an array or plain object of them. */
function expectPlain(value: unknown): void {
  if (Array.isArray(value)) value.forEach(expectPlain);
  else if (typeof value === 'object' && value !== null) {
    expect(Object.getPrototypeOf(value)).toBe(Object.prototype);
    Object.values(value).forEach(expectPlain);
  } else expect(['number', 'boolean', 'string']).toContain(typeof value);
  if (typeof value === 'number') expect(Number.isFinite(value)).toBe(true);
}

/** Expects `fn` to throw `name`/`code` naming `field` ("state.rx[0]"), and `dev` to be unchanged. */
function expectRefused(
  dev: { saveState(): unknown },
  fn: () => unknown,
  name: 'TypeError' | 'RangeError',
  code: string,
  field: string,
): void {
  const before = dev.saveState();
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  const e = thrown as { name?: string; code?: string; message?: string } | undefined;
  expect({ name: e?.name, code: e?.code }).toEqual({ name, code });
  expect(e?.message).toContain(`"${field}"`);
  expect(dev.saveState()).toEqual(before);
}

/** A mutable copy of `state` (tests change it). */
const copy = <T>(state: T): Record<string, unknown> => JSON.parse(JSON.stringify(state)) as Record<string, unknown>;

// ---------------------------------------------------------------------------------------------

/** A UART with DLAB divisor 1, FIFOs on (trigger 14), 5 bytes received, THRI pending, scratch, MCR. */
const UART_SETUP: Access[] = [
  { w: COM1 + LCR, v: 0x80 },
  { w: COM1 + DLL, v: 0x01 },
  { w: COM1 + DLM, v: 0x00 },
  { w: COM1 + LCR, v: 0x03 },
  { w: COM1 + FCR, v: 0xc7 },
  { w: COM1 + MCR, v: 0x0b },
  { w: COM1 + SCR, v: 0x5a },
  { w: COM1 + IER, v: 0x03 },
  { rx: [...Buffer.from('hello')] },
  { w: COM1 + THR, v: 0x41 },
];

/** What the guest does next: drain, IIR priorities, DLAB reads, loopback, modem status. */
const UART_NEXT: Access[] = [
  { r: COM1 + IIR },
  { r: COM1 + LSR },
  ...Array.from({ length: 6 }, () => ({ r: COM1 + RBR })),
  { r: COM1 + IIR },
  { r: COM1 + IIR },
  { w: COM1 + LCR, v: 0x83 },
  { r: COM1 + DLL },
  { r: COM1 + DLM },
  { w: COM1 + LCR, v: 0x03 },
  { r: COM1 + SCR },
  { r: COM1 + MCR },
  { r: COM1 + MSR },
  { w: COM1 + MCR, v: 0x1f },
  { w: COM1 + IER, v: 0x0f },
  { r: COM1 + IIR },
  { r: COM1 + MSR },
  { w: COM1 + THR, v: 0x42 },
  { r: COM1 + LSR },
  { r: COM1 + RBR, size: 2 },
  { rx: [1, 2, 3] },
  { w: COM1 + MCR, v: 0x0b },
  { rx: [...Buffer.from('0123456789abcdef')] },
  { r: COM1 + IIR },
  { r: COM1 + LSR, size: 4 },
  { w: COM1 + THR, v: 0x43 },
];

interface UartRig {
  dev: Uart16550;
  irqs: boolean[];
  tx: number[];
}

function newUart(): UartRig {
  const irqs: boolean[] = [];
  const tx: number[] = [];
  const dev = new Uart16550({ irq: (l) => irqs.push(l), onTx: (b) => tx.push(...b) });
  return { dev, irqs, tx };
}

/** Plays `next` on `a` and on `b`, from where they are, and expects the same reads, IRQ edges and TX. */
function expectSameAfter(a: UartRig, b: UartRig, next: readonly Access[]): number[] {
  const [irqA, txA] = [a.irqs.length, a.tx.length];
  const [irqB, txB] = [b.irqs.length, b.tx.length];
  const readsA = play(a.dev, next);
  const readsB = play(b.dev, next);
  expect(readsB).toEqual(readsA);
  expect(b.irqs.slice(irqB)).toEqual(a.irqs.slice(irqA));
  expect(b.tx.slice(txB)).toEqual(a.tx.slice(txA));
  expect(b.dev.saveState()).toEqual(a.dev.saveState());
  return readsA;
}

/** uart16550 saveState/restoreState */
describe('Uart16550 state', () => {
  it('should save registers, divisor, the FIFO and the pending interrupts as plain data', () => {
    const a = newUart();
    play(a.dev, UART_SETUP);
    const state = a.dev.saveState();
    expectPlain(state);
    expect(state).toEqual<Uart16550State>({
      version: 1,
      ier: 0x03,
      fcr: 0xc1,
      lcr: 0x03,
      mcr: 0x0b,
      lsr: 0x61,
      msr: 0xb0,
      scr: 0x5a,
      divisor: 1,
      rx: [...Buffer.from('hello')],
      thrPending: true,
      irqLevel: true,
    });
    expect(viaJson(state)).toEqual(state);
  });

  it('should answer the same accesses after a JSON round trip into a new device, without calling irq at the restore', () => {
    const a = newUart();
    play(a.dev, UART_SETUP);
    const b = newUart();
    b.dev.restoreState(viaJson(a.dev.saveState()));
    expect(b.irqs).toEqual([]); // the saved level is taken as the line's level
    expect(b.dev.irqLevel).toBe(true);
    expect([b.dev.divisor, b.dev.rxCount]).toEqual([1, 5]);
    const reads = expectSameAfter(a, b, UART_NEXT);
    // The state was the intended one: CTI (5 < 14 bytes), the FIFO's bytes, then THRI, none.
    expect(reads.slice(0, 10)).toEqual([0xcc, 0x61, ...Buffer.from('hello'), 0x00, 0xc2, 0xc1]);
    expect(b.irqs[0]).toBe(false); // the first change after the restore is a falling edge
  });

  it('should restore the 16450 mode holding register with an overrun pending', () => {
    const a = newUart();
    play(a.dev, [{ w: COM1 + IER, v: 0x05 }, { rx: [1, 2] }]);
    const state = a.dev.saveState();
    expect([state.rx, state.lsr, state.fcr]).toEqual([[2], 0x63, 0]);
    const b = newUart();
    b.dev.restoreState(viaJson(state));
    const next: Access[] = [
      { r: COM1 + IIR },
      { r: COM1 + LSR },
      { r: COM1 + IIR },
      { r: COM1 + RBR },
      { r: COM1 + IIR },
      { rx: [7] },
      { rx: [8] },
      { r: COM1 + LSR },
    ];
    expect(expectSameAfter(a, b, next)).toEqual([0x06, 0x63, 0x04, 0x02, 0x01, 0x63]);
  });

  it('should restore any saved FIFO position (the ring wrapped round)', () => {
    const a = newUart();
    play(a.dev, [{ w: COM1 + FCR, v: 0x01 }]);
    for (let i = 0; i < 3; i++) {
      play(a.dev, [{ rx: Array.from({ length: 40 }, (_, j) => (i * 40 + j) & 0xff) }]);
      play(
        a.dev,
        Array.from({ length: 30 }, () => ({ r: COM1 + RBR })),
      );
    }
    const b = newUart();
    b.dev.restoreState(viaJson(a.dev.saveState()));
    expect(b.dev.rxCount).toBe(30);
    expectSameAfter(a, b, [{ rx: Array.from({ length: 40 }, (_, j) => j) }, ...UART_NEXT]);
  });

  it('should store a -0 as 0 (a state built in the process, not read from JSON)', () => {
    const b = newUart();
    const state = { ...newUart().dev.saveState(), scr: -0, ier: -0 };
    b.dev.restoreState(state);
    expect(Object.is(b.dev.saveState().scr, 0) && Object.is(b.dev.saveState().ier, 0)).toBe(true);
  });

  const valid = (): Uart16550State => {
    const a = newUart();
    play(a.dev, UART_SETUP);
    return a.dev.saveState();
  };
  const cases: Array<[string, (s: Record<string, unknown>) => unknown, 'TypeError' | 'RangeError', string, string]> = [
    ['another version', (s) => ({ ...s, version: 2 }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.version'],
    ['no version', (s) => ({ ...s, version: undefined }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.version'],
    ['a version as a string', (s) => ({ ...s, version: '1' }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.version'],
    ['not an object', () => [1], 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state'],
    ['null', () => null, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state'],
    ['a missing field', ({ divisor: _d, ...s }) => s, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.divisor'],
    ['an unknown field', (s) => ({ ...s, tx: [] }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.tx'],
    ['a string register', (s) => ({ ...s, scr: '90' }), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.scr'],
    [
      'a boolean as a number',
      (s) => ({ ...s, thrPending: 1 }),
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
      'state.thrPending',
    ],
    ['IER past bit 3', (s) => ({ ...s, ier: 0x10 }), 'RangeError', 'ERR_OUT_OF_RANGE', 'state.ier'],
    ['a negative LCR', (s) => ({ ...s, lcr: -1 }), 'RangeError', 'ERR_OUT_OF_RANGE', 'state.lcr'],
    ['a fractional SCR', (s) => ({ ...s, scr: 1.5 }), 'RangeError', 'ERR_OUT_OF_RANGE', 'state.scr'],
    ['a NaN MSR', (s) => ({ ...s, msr: NaN }), 'RangeError', 'ERR_OUT_OF_RANGE', 'state.msr'],
    ['a 17-bit divisor', (s) => ({ ...s, divisor: 0x10000 }), 'RangeError', 'ERR_OUT_OF_RANGE', 'state.divisor'],
    ['MCR past bit 4', (s) => ({ ...s, mcr: 0x20 }), 'RangeError', 'ERR_OUT_OF_RANGE', 'state.mcr'],
    ['FCR reset bits', (s) => ({ ...s, fcr: 0xc3 }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.fcr'],
    ['FCR bits with FIFOs off', (s) => ({ ...s, fcr: 0xc0 }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.fcr'],
    ['rx not an array', (s) => ({ ...s, rx: 'hello' }), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.rx'],
    ['rx as a typed array', (s) => ({ ...s, rx: Uint8Array.of(1) }), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.rx'],
    ['a byte past 255', (s) => ({ ...s, rx: [104, 256] }), 'RangeError', 'ERR_OUT_OF_RANGE', 'state.rx[1]'],
    ['a hole in rx', (s) => ({ ...s, rx: [104, , 3] }), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.rx[1]'],
    [
      'more bytes than the FIFO holds',
      (s) => ({ ...s, rx: new Array(65).fill(1) }),
      'RangeError',
      'ERR_OUT_OF_RANGE',
      'state.rx.length',
    ],
    [
      'two bytes with the FIFOs off',
      (s) => ({ ...s, fcr: 0, rx: [1, 2] }),
      'RangeError',
      'ERR_OUT_OF_RANGE',
      'state.rx.length',
    ],
    ['LSR without THRE', (s) => ({ ...s, lsr: 0x41 }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.lsr'],
    ['LSR parity error', (s) => ({ ...s, lsr: 0x65 }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.lsr'],
    ['data ready without data', (s) => ({ ...s, rx: [] }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.lsr'],
    [
      'a line level the registers do not give',
      (s) => ({ ...s, irqLevel: false }),
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
      'state.irqLevel',
    ],
  ];
  it.each(cases)('should refuse %s, naming the field, and change nothing', (_what, mutate, name, code, field) => {
    const b = newUart();
    play(b.dev, [{ w: COM1 + SCR, v: 0x11 }, { rx: [9] }]);
    expectRefused(b.dev, () => b.dev.restoreState(mutate(copy(valid()))), name, code, field);
    expect(b.irqs).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------

/** i8042 saveState/restoreState */
describe('I8042 state', () => {
  function rig(): { dev: I8042; resets: number[] } {
    const resets: number[] = [];
    const dev = new I8042({ onReset: () => resets.push(1) });
    return { dev, resets };
  }

  it('should carry a "write output port" command in progress across a restore', () => {
    const a = rig();
    play(a.dev, [{ w: 0x64, v: 0xd1 }]);
    const state = a.dev.saveState();
    expectPlain(state);
    expect(state).toEqual({ version: 1, lastWasCommand: true, writeOutputPending: true, resetRequested: false });
    const b = rig();
    b.dev.restoreState(viaJson(state));
    const next: Access[] = [{ r: 0x64 }, { r: 0x60 }, { w: 0x60, v: 0xfe }, { r: 0x64 }, { r: 0x61 }];
    const reads = play(a.dev, next);
    expect(play(b.dev, next)).toEqual(reads);
    expect(reads).toEqual([0x1c, 0x00, 0x14, 0xff]);
    expect([a.resets, b.resets]).toEqual([[1], [1]]); // the data byte's bit 0 is clear: a reset
    expect(b.dev.saveState()).toEqual(a.dev.saveState());
  });

  it('should restore a requested reset without calling onReset again', () => {
    const a = rig();
    play(a.dev, [{ w: 0x64, v: 0xfe }]);
    const b = rig();
    b.dev.restoreState(viaJson(a.dev.saveState()));
    expect([b.dev.resetRequested, b.dev.stopRequested, b.resets]).toEqual([true, true, []]);
    play(b.dev, [{ w: 0x64, v: 0xfe }]);
    expect(b.resets).toEqual([]);
  });

  it.each<[string, (s: Record<string, unknown>) => unknown, 'TypeError', string, string]>([
    ['another version', (s) => ({ ...s, version: 0 }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.version'],
    [
      'a missing field',
      ({ resetRequested: _r, ...s }) => s,
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
      'state.resetRequested',
    ],
    [
      'a number flag',
      (s) => ({ ...s, lastWasCommand: 0 }),
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
      'state.lastWasCommand',
    ],
    [
      'a pending command byte (not a flag)',
      (s) => ({ ...s, writeOutputPending: 0xd1 }),
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
      'state.writeOutputPending',
    ],
    ['an unknown field', (s) => ({ ...s, obf: true }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.obf'],
  ])('should refuse %s, naming the field, and change nothing', (_what, mutate, name, code, field) => {
    const b = rig();
    play(b.dev, [{ w: 0x64, v: 0xd1 }]);
    expectRefused(b.dev, () => b.dev.restoreState(mutate(copy(new I8042().saveState()))), name, code, field);
  });
});

// ---------------------------------------------------------------------------------------------

/** A CMOS with binary 24-hour mode, status A, RAM bytes, the guest's time set, index 0x0e latched with NMIs off. */
const CMOS_SETUP: Access[] = [
  { w: 0x70, v: 0x8b },
  { w: 0x71, v: 0x06 },
  { w: 0x70, v: 0x8a },
  { w: 0x71, v: 0x2f },
  ...Array.from({ length: 16 }, (_, i): Access[] => [
    { w: 0x70, v: 0x40 + i },
    { w: 0x71, v: (0x40 + i) ^ 0xa5 },
  ]).flat(),
  { w: 0x70, v: 0x00 },
  { w: 0x71, v: 30 }, // seconds := 30
  { w: 0x70, v: 0x02 },
  { w: 0x71, v: 15 }, // minutes := 15
  { w: 0x70, v: 0x8e },
  { w: 0x71, v: 0x77 },
];
/** The latched register first (no index write), then all 128 registers. */
const CMOS_NEXT: Access[] = [
  { r: 0x71 },
  { r: 0x70 },
  ...Array.from({ length: 128 }, (_, reg): Access[] => [{ w: 0x70, v: reg }, { r: 0x71 }]).flat(),
  { w: 0x70, v: 0x0b },
  { w: 0x71, v: 0x00 }, // BCD, 12-hour
  { w: 0x70, v: 0x04 },
  { r: 0x71 },
  { r: 0x70, size: 2 },
];

/** cmos saveState/restoreState */
describe('Cmos state', () => {
  it('should save the latched index, the NMI bit, the RAM and the clock, and answer the same reads after a restore', () => {
    const a = new Cmos({ clock: () => LEAP_EVE, memorySize: 5n * 2n ** 30n });
    play(a, CMOS_SETUP);
    const state = a.saveState();
    expectPlain(state);
    expect(state.ram).toHaveLength(128);
    expect([state.index, state.nmiDisabled, state.ram[0x0a], state.ram[0x0b], state.ram[0x0e]]).toEqual([
      0x0e,
      true,
      0x2f,
      0x06,
      0x77,
    ]);
    expect(state.ram[0x41]).toBe(0x41 ^ 0xa5);
    expect(state.timeMs).toBe(LEAP_EVE.getTime() + state.clockOffsetMs);
    expect(state.clockOffsetMs).toBe(Date.UTC(2024, 1, 29, 23, 15, 30, 250) - LEAP_EVE.getTime());

    // Restored into a device built without memorySize: the memory registers come from the state.
    const b = new Cmos({ clock: () => LEAP_EVE });
    b.restoreState(viaJson(state));
    expect([b.index, b.nmiDisabled]).toEqual([0x0e, true]);
    const reads = play(a, CMOS_NEXT);
    expect(play(b, CMOS_NEXT)).toEqual(reads);
    expect(reads[0]).toBe(0x77);
    expect(reads.slice(2, 2 + 6)).toEqual([30, 0, 15, 0, 23, 0]); // binary seconds, minutes, hours
    expect(b.saveState()).toEqual(a.saveState());
  });

  it("should keep the guest's offset from a clock that is ahead, and start from the saved time on one that is behind", () => {
    let hostA = LEAP_EVE.getTime();
    const a = new Cmos({ clock: () => new Date(hostA) });
    play(a, [
      { w: 0x70, v: 0x0b },
      { w: 0x71, v: 0x06 }, // binary
      { w: 0x70, v: 0x04 },
      { w: 0x71, v: 10 }, // hours := 10: the guest is 14 h behind
    ]);
    hostA += 5000;
    const saved = viaJson(a.saveState()) as CmosState;
    const guestAtSave = Date.UTC(2024, 1, 29, 11, 0, 3, 250); // 10:59:58.250, then 5 s
    expect(saved.timeMs).toBe(guestAtSave);
    const seconds = (dev: Cmos): number[] => [0x04, 0x02, 0x00].map((reg) => dev.readRegister(reg));

    // A host clock an hour ahead: the guest's clock ran on for that hour (same offset).
    let hostB = hostA + 3_600_000;
    const ahead = new Cmos({ clock: () => new Date(hostB) });
    ahead.restoreState(saved);
    expect(seconds(ahead)).toEqual([12, 0, 3]);
    expect(ahead.saveState().clockOffsetMs).toBe(saved.clockOffsetMs);

    // A host clock a day behind: the guest goes on from the saved time, and runs with the clock.
    hostB = hostA - 86_400_000;
    const behind = new Cmos({ clock: () => new Date(hostB) });
    behind.restoreState(saved);
    expect(seconds(behind)).toEqual([11, 0, 3]);
    hostB += 7000;
    expect(seconds(behind)).toEqual([11, 0, 10]);
  });

  it('should read the clock before changing anything, and change nothing when it throws', () => {
    const state = new Cmos({ clock: () => LEAP_EVE }).saveState();
    let broken = false;
    const b = new Cmos({
      clock: () => {
        if (broken) throw new Error('no clock');
        return LEAP_EVE;
      },
    });
    b.ioWrite(0x70, 1, 0x85);
    broken = true;
    expect(() => b.restoreState({ ...state, index: 3 })).toThrow('no clock');
    broken = false;
    expect(b.index).toBe(5);
  });

  it.each<[string, (s: Record<string, unknown>) => unknown, 'TypeError' | 'RangeError', string, string]>([
    ['another version', (s) => ({ ...s, version: 2 }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.version'],
    ['a missing field', ({ timeMs: _t, ...s }) => s, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.timeMs'],
    ['an unknown field', (s) => ({ ...s, clock: 0 }), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.clock'],
    ['an index past 127', (s) => ({ ...s, index: 0x80 }), 'RangeError', 'ERR_OUT_OF_RANGE', 'state.index'],
    ['a string index', (s) => ({ ...s, index: '1' }), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.index'],
    ['a number NMI bit', (s) => ({ ...s, nmiDisabled: 1 }), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.nmiDisabled'],
    [
      'a short RAM',
      (s) => ({ ...s, ram: new Array(127).fill(0) }),
      'RangeError',
      'ERR_OUT_OF_RANGE',
      'state.ram.length',
    ],
    [
      'a long RAM',
      (s) => ({ ...s, ram: new Array(256).fill(0) }),
      'RangeError',
      'ERR_OUT_OF_RANGE',
      'state.ram.length',
    ],
    ['a RAM as bytes', (s) => ({ ...s, ram: Buffer.alloc(128) }), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.ram'],
    [
      'a RAM byte past 255',
      (s) => ({ ...s, ram: (s.ram as number[]).map((b, i) => (i === 17 ? 300 : b)) }),
      'RangeError',
      'ERR_OUT_OF_RANGE',
      'state.ram[17]',
    ],
    [
      'a RAM byte as a string',
      (s) => ({ ...s, ram: (s.ram as number[]).map((b, i) => (i === 99 ? '1' : b)) }),
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
      'state.ram[99]',
    ],
    [
      'a fractional offset',
      (s) => ({ ...s, clockOffsetMs: 0.5 }),
      'RangeError',
      'ERR_OUT_OF_RANGE',
      'state.clockOffsetMs',
    ],
    [
      'an infinite offset',
      (s) => ({ ...s, clockOffsetMs: Infinity }),
      'RangeError',
      'ERR_OUT_OF_RANGE',
      'state.clockOffsetMs',
    ],
    ['a time past Date', (s) => ({ ...s, timeMs: 8.64e15 + 1 }), 'RangeError', 'ERR_OUT_OF_RANGE', 'state.timeMs'],
    ['a time as a string', (s) => ({ ...s, timeMs: '2024' }), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.timeMs'],
  ])('should refuse %s, naming the field, and change nothing', (_what, mutate, name, code, field) => {
    const b = new Cmos({ clock: () => LEAP_EVE, memorySize: 2 ** 30 });
    play(b, [
      { w: 0x70, v: 0x85 },
      { w: 0x71, v: 0x12 },
    ]);
    const valid = new Cmos({ clock: () => LEAP_EVE }).saveState();
    expectRefused(b, () => b.restoreState(mutate(copy(valid))), name, code, field);
  });
});

// ---------------------------------------------------------------------------------------------

/** pciAbsent and debugPorts saveState/restoreState */
describe('PciAbsent and DebugPorts state', () => {
  it('should restore CONFIG_ADDRESS', () => {
    const a = new PciAbsent();
    play(a, [{ w: 0xcf8, v: 0x8000_1234, size: 4 }]);
    expect(a.saveState()).toEqual({ version: 1, address: 0x8000_1234 });
    const b = new PciAbsent();
    b.restoreState(viaJson(a.saveState()));
    const next: Access[] = [{ r: 0xcf8, size: 4 }, { r: 0xcfc, size: 4 }, { r: 0xcf8 }];
    expect(play(b, next)).toEqual(play(a, next));
    expect(b.address).toBe(0x8000_1234);
  });

  it('should restore the last POST code and their count, without calling onPostCode', () => {
    const a = new DebugPorts();
    play(a, [
      { w: 0x80, v: 0x12 },
      { w: 0x80, v: 0x55 },
      { w: 0x402, v: 0x41 },
    ]);
    expect(a.saveState()).toEqual({ version: 1, lastPostCode: 0x55, postCodeCount: 2 });
    const codes: number[] = [];
    const b = new DebugPorts({ onPostCode: (c) => codes.push(c) });
    b.restoreState(viaJson(a.saveState()));
    expect([b.lastPostCode, b.postCodeCount, codes]).toEqual([0x55, 2, []]);
    const none = new DebugPorts().saveState();
    expect(none).toEqual({ version: 1, lastPostCode: -1, postCodeCount: 0 });
    b.restoreState(viaJson(none));
    expect([b.lastPostCode, b.postCodeCount]).toEqual([undefined, 0]);
    const next: Access[] = [{ r: 0x80 }, { r: 0x402, size: 2 }];
    expect(play(b, next)).toEqual(play(a, next));
  });

  it.each<[string, unknown, 'TypeError' | 'RangeError', string, string]>([
    ['another version', { version: 3, address: 0 }, 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.version'],
    ['a missing address', { version: 1 }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.address'],
    ['a 33-bit address', { version: 1, address: 2 ** 32 }, 'RangeError', 'ERR_OUT_OF_RANGE', 'state.address'],
    ['a bigint address', { version: 1, address: 1n }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.address'],
    ['an unknown field', { version: 1, address: 0, bus: 0 }, 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.bus'],
  ])('should refuse a PCI state with %s', (_what, state, name, code, field) => {
    const b = new PciAbsent();
    b.ioWrite(0xcf8, 4, 0x8000_0000);
    expectRefused(b, () => b.restoreState(state), name, code, field);
  });

  it.each<[string, unknown, 'TypeError' | 'RangeError', string, string]>([
    [
      'another version',
      { version: '1', lastPostCode: -1, postCodeCount: 0 },
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
      'state.version',
    ],
    [
      'a code past 255',
      { version: 1, lastPostCode: 256, postCodeCount: 1 },
      'RangeError',
      'ERR_OUT_OF_RANGE',
      'state.lastPostCode',
    ],
    [
      'a negative count',
      { version: 1, lastPostCode: 1, postCodeCount: -1 },
      'RangeError',
      'ERR_OUT_OF_RANGE',
      'state.postCodeCount',
    ],
    [
      'a code without a count',
      { version: 1, lastPostCode: 1, postCodeCount: 0 },
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
      'state.postCodeCount',
    ],
    [
      'a count without a code',
      { version: 1, lastPostCode: -1, postCodeCount: 4 },
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
      'state.postCodeCount',
    ],
    ['a missing count', { version: 1, lastPostCode: -1 }, 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state.postCodeCount'],
  ])('should refuse a debug ports state with %s', (_what, state, name, code, field) => {
    const b = new DebugPorts();
    b.ioWrite(0x80, 1, 7);
    expectRefused(b, () => b.restoreState(state), name, code, field);
  });
});

// ---------------------------------------------------------------------------------------------

interface PcRig {
  pc: DeviceStage<LegacyPcDevices>;
  irqs: boolean[];
  tx: number[];
  resets: number;
  codes: number[];
}

function newPc(clock: () => Date = () => LEAP_EVE): PcRig {
  const rig: PcRig = { pc: undefined as never, irqs: [], tx: [], resets: 0, codes: [] };
  rig.pc = legacyPc({
    com1: { irq: (l) => rig.irqs.push(l), onTx: (b) => rig.tx.push(...b) },
    i8042: { onReset: () => rig.resets++, stopOnReset: false },
    cmos: { clock, memorySize: 5n * 2n ** 30n },
    debug: { onPostCode: (c) => rig.codes.push(c) },
  });
  return rig;
}

/** Runs `exits` through the stage as a vCPU would; returns the bytes each IoIn read. */
function runExits(pc: DeviceStage<LegacyPcDevices>, exits: VcpuExit[]): number[][] {
  let error: unknown;
  from(exits)
    .pipe(pc)
    .subscribe({ error: (e: unknown) => (error = e) });
  expect(error).toBeUndefined();
  return exits.flatMap((e) => (e.kind === 'IoIn' ? [Array.from(e.data)] : []));
}

/** legacyPc saveState/restoreState */
describe('legacyPc state', () => {
  const setup = (): VcpuExit[] => [
    ...UART_SETUP.filter((a) => !('rx' in a)).map((a) => ioOut((a as { w: number }).w, [(a as { v: number }).v])),
    ioOut(0x64, [0xd1]),
    ioOut(0x70, [0x8b]),
    ioOut(0x71, [0x06]),
    ioOut(0x70, [0x8e]),
    ioOut(0x71, [0x77]),
    ioOut(0xcf8, [0x00, 0x10, 0x00, 0x80], 1),
    ioOut(0x80, [0x2a]),
    ioOut(0x402, [0x41, 0x42], 2),
  ];
  const next = (): VcpuExit[] => [
    ioIn(COM1 + IIR),
    ioIn(COM1 + RBR, 1, 4),
    ioIn(COM1 + LSR),
    ioIn(0x64),
    ioOut(0x60, [0x00]),
    ioIn(0x71),
    ioIn(0x70),
    ioIn(0xcf8, 4),
    ioIn(0xcfc, 2),
    ioIn(0x402),
    ioOut(COM1 + THR, [0x48, 0x49], 2),
    ioIn(COM1 + IIR),
  ];

  it('should save every device and restore them all into a new stage, which answers as the old one', () => {
    const a = newPc();
    runExits(a.pc, setup());
    a.pc.device.com1!.input('hi');
    const state = a.pc.device.saveState();
    expectPlain(state);
    expect(Object.keys(state)).toEqual(['version', 'com1', 'i8042', 'cmos', 'pci', 'debug']);
    expect(state.pci).toEqual({ version: 1, address: 0x8000_1000 });
    expect(state.i8042?.writeOutputPending).toBe(true);

    const b = newPc();
    b.pc.device.restoreState(viaJson(state));
    expect([b.irqs, b.codes, b.resets]).toEqual([[], [], 0]);
    const [irqA, txA] = [a.irqs.length, a.tx.length];
    const readsA = runExits(a.pc, next());
    const readsB = runExits(b.pc, next());
    expect(readsB).toEqual(readsA);
    expect(readsA.slice(0, 2)).toEqual([[0xcc], [...Buffer.from('hi'), 0, 0]]);
    expect(readsA[3]).toEqual([0x1c]);
    expect(readsA[4]).toEqual([0x77]);
    expect([a.resets, b.resets]).toEqual([1, 1]);
    expect(b.irqs).toEqual(a.irqs.slice(irqA));
    expect(b.tx).toEqual(a.tx.slice(txA));
    expect(b.pc.device.saveState()).toEqual(a.pc.device.saveState());
  });

  it('should save and restore only the devices the stage has', () => {
    const a = legacyPc({ com1: false, cmos: false, pci: false });
    a.device.debug!.ioWrite(0x80, 1, 9);
    const state = a.device.saveState();
    expect(Object.keys(state)).toEqual(['version', 'i8042', 'debug']);
    const b = legacyPc({ com1: false, cmos: false, pci: false });
    b.device.restoreState(viaJson(state));
    expect(b.device.debug!.lastPostCode).toBe(9);
  });

  it('should refuse a state with another set of devices, naming the device', () => {
    const full = newPc().pc.device.saveState();
    const b = newPc();
    b.pc.device.com1!.writeRegister(SCR, 0x33);
    const { pci: _p, ...noPci } = full;
    expectRefused(
      b.pc.device,
      () => b.pc.device.restoreState(noPci),
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
      'state.pci',
    );
    const few = legacyPc({ pci: false, cmos: { clock: () => LEAP_EVE } });
    expectRefused(few.device, () => few.device.restoreState(full), 'TypeError', 'ERR_INVALID_ARG_VALUE', 'state.pci');
    expectRefused(
      b.pc.device,
      () => b.pc.device.restoreState({ ...full, com2: full.com1 }),
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
      'state.com2',
    );
    expectRefused(
      b.pc.device,
      () => b.pc.device.restoreState({ ...full, version: 2 }),
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
      'state.version',
    );
    expectRefused(b.pc.device, () => b.pc.device.restoreState('{}'), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'state');
  });

  it('should check every device before changing any: a bad CMOS part leaves COM1 as it was', () => {
    const a = newPc();
    a.pc.device.com1!.writeRegister(SCR, 0x44);
    const state = copy(a.pc.device.saveState()) as unknown as LegacyPcState;
    state.cmos!.ram[5] = 0x100;
    const b = newPc();
    b.pc.device.com1!.writeRegister(SCR, 0x11);
    expectRefused(
      b.pc.device,
      () => b.pc.device.restoreState(state),
      'RangeError',
      'ERR_OUT_OF_RANGE',
      'state.cmos.ram[5]',
    );
    expect(b.pc.device.com1!.readRegister(SCR)).toBe(0x11);
    const bad = { ...copy(a.pc.device.saveState()), debug: { version: 1 } };
    expectRefused(
      b.pc.device,
      () => b.pc.device.restoreState(bad),
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
      'state.debug.lastPostCode',
    );
  });

  it('should export the state types from the package', () => {
    const types: Array<
      api.Uart16550State | api.I8042State | api.CmosState | api.PciAbsentState | api.DebugPortsState | api.LegacyPcState
    > = [newPc().pc.device.saveState()];
    expect(types).toHaveLength(1);
  });
});

// ---------------------------------------------------------------------------------------------

const PORTS_OF_INTEREST = [0x3f8, 0x3ff, 0x60, 0x64, 0x70, 0x71, 0xcf8, 0xcfc, 0x80, 0x402];
const port = fc
  .constantFrom(...PORTS_OF_INTEREST)
  .chain((p) => fc.integer({ min: Math.max(0, p - 3), max: Math.min(0xffff, p + 3) }));
const size = fc.constantFrom<1 | 2 | 4>(1, 2, 4);
const access: fc.Arbitrary<Access> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ r: port, size }) },
  {
    weight: 5,
    arbitrary: fc
      .record({ w: port, size, v: fc.nat({ max: 0xffff_ffff }) })
      .map((a) => ({ ...a, v: a.v % 2 ** (8 * a.size) })),
  },
  { weight: 1, arbitrary: fc.record({ rx: fc.array(fc.nat({ max: 255 }), { maxLength: 70 }) }) },
);

/** Plays `seq` on a whole stage's devices. */
const playPc = (rig: PcRig, seq: readonly Access[]): number[] => play(rig.pc.device, seq, rig.pc.device.com1);

/** Odd values a hostile or damaged file could hold in place of any field. */
const oddValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(
    NaN,
    Infinity,
    -Infinity,
    -1,
    -0,
    0.5,
    256,
    0x10000,
    2 ** 32,
    2 ** 53,
    1e300,
    '',
    '1',
    true,
    false,
    null,
    undefined,
    [],
    {},
  ),
  fc.integer(),
  fc.double(),
  fc.jsonValue(),
  fc.array(fc.integer({ min: -2, max: 300 }), { maxLength: 140 }),
);

type Mutation =
  { pick: number; kind: 'delete' | 'add' | 'nudge'; delta: number } | { pick: number; kind: 'set'; value: unknown };
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ pick: fc.nat(), kind: fc.constantFrom('delete' as const, 'add' as const), delta: fc.constant(0) }),
  fc.record({ pick: fc.nat(), kind: fc.constant('nudge' as const), delta: fc.integer({ min: -3, max: 3 }) }),
  fc.record({ pick: fc.nat(), kind: fc.constant('set' as const), value: oddValue }),
);

/** The containers and keys of every field (recursively) of `root`. */
function slots(root: unknown): Array<[Record<string | number, unknown>, string | number]> {
  const out: Array<[Record<string | number, unknown>, string | number]> = [];
  const walk = (v: unknown): void => {
    if (typeof v !== 'object' || v === null) return;
    const o = v as Record<string | number, unknown>;
    for (const k of Object.keys(o)) {
      out.push([o, Array.isArray(o) ? Number(k) : k]);
      walk(o[k]);
    }
  };
  walk(root);
  return out;
}

function mutate(state: unknown, mutations: readonly Mutation[]): unknown {
  const root = { state: JSON.parse(JSON.stringify(state)) as unknown };
  for (const m of mutations) {
    const all = slots(root);
    if (all.length === 0) break; // the state itself was deleted
    const [holder, key] = all[m.pick % all.length];
    if (m.kind === 'delete') {
      if (Array.isArray(holder)) holder.splice(key as number, 1);
      else Reflect.deleteProperty(holder, key);
    } else if (m.kind === 'add') {
      if (Array.isArray(holder)) holder.push(m.delta);
      else holder[`extra${String(key)}`] = 1;
    } else if (m.kind === 'nudge') {
      const v = holder[key];
      holder[key] = typeof v === 'number' ? v + m.delta : typeof v === 'boolean' ? !v : v;
    } else if (m.kind === 'set') holder[key] = m.value;
  }
  return root.state;
}

/** fuzz: restoring device states */
describe('legacyPc state fuzz', () => {
  it('should give the same answers, IRQ edges and output after a restore as without it, from any reachable state', () => {
    fc.assert(
      fc.property(fc.array(access, { maxLength: 80 }), fc.array(access, { maxLength: 80 }), (before, after) => {
        const a = newPc();
        playPc(a, before);
        const b = newPc();
        b.pc.device.restoreState(viaJson(a.pc.device.saveState()));
        expect(b.irqs).toEqual([]);
        const [irqA, txA, resetsA] = [a.irqs.length, a.tx.length, a.resets];
        expect(playPc(b, after)).toEqual(playPc(a, after));
        expect(b.irqs).toEqual(a.irqs.slice(irqA));
        expect(b.tx).toEqual(a.tx.slice(txA));
        expect(b.resets).toBe(a.resets - resetsA);
        expect(b.pc.device.saveState()).toEqual(a.pc.device.saveState());
      }),
      { numRuns: count(200, 3000) },
    );
  });

  it('should refuse a mutated state with an ERR_ TypeError/RangeError and no change, or restore one that survives guest I/O', () => {
    let refused = 0;
    let restored = 0;
    fc.assert(
      fc.property(
        fc.array(access, { maxLength: 40 }),
        fc.array(mutation, { minLength: 1, maxLength: 3 }),
        fc.array(access, { maxLength: 60 }),
        (before, mutations, after) => {
          const a = newPc();
          playPc(a, before);
          const state = mutate(a.pc.device.saveState(), mutations);
          const b = newPc();
          playPc(b, [{ w: 0x3ff, v: 0x99 }, { rx: [1] }]);
          const unchanged = b.pc.device.saveState();
          const irqs = b.irqs.length;
          try {
            b.pc.device.restoreState(state);
          } catch (e) {
            refused++;
            expect(e instanceof TypeError || e instanceof RangeError).toBe(true);
            expect((e as { code?: unknown }).code).toMatch(/^ERR_(INVALID_ARG_VALUE|INVALID_ARG_TYPE|OUT_OF_RANGE)$/);
            expect((e as Error).message).toMatch(/"state(\.[a-z0-9]+|\[\d+\])*"/i);
            expect(b.pc.device.saveState()).toEqual(unchanged);
            return;
          }
          restored++;
          expect(b.irqs.length).toBe(irqs);
          for (const r of playPc(b, after)) {
            expect(Number.isInteger(r)).toBe(true);
            expect(r).toBeGreaterThanOrEqual(0);
            expect(r).toBeLessThan(2 ** 32);
          }
          // What a restored device saves is a state it accepts again.
          const again = newPc();
          again.pc.device.restoreState(viaJson(b.pc.device.saveState()));
          expect(again.pc.device.saveState()).toEqual(b.pc.device.saveState());
        },
      ),
      { numRuns: count(500, 10000) },
    );
    expect(refused).toBeGreaterThan(0);
    expect(restored).toBeGreaterThan(0);
  });

  it('should survive guest I/O after restoring any valid-looking UART or CMOS state', () => {
    // Arbitrary field values within the checked ranges: whatever passes the checks is safe.
    const uart = fc.record({
      version: fc.constant(1),
      ier: fc.integer({ min: 0, max: 15 }),
      fcr: fc.constantFrom(0, 0x01, 0x09, 0x41, 0x81, 0xc1, 0xc9),
      lcr: fc.nat({ max: 255 }),
      mcr: fc.integer({ min: 0, max: 0x1f }),
      lsr: fc.constantFrom(0x60, 0x61, 0x62, 0x63),
      msr: fc.nat({ max: 255 }),
      scr: fc.nat({ max: 255 }),
      divisor: fc.nat({ max: 0xffff }),
      rx: fc.array(fc.nat({ max: 255 }), { maxLength: 64 }),
      thrPending: fc.boolean(),
      irqLevel: fc.boolean(),
    });
    const cmosState = fc.record({
      version: fc.constant(1),
      index: fc.nat({ max: 127 }),
      nmiDisabled: fc.boolean(),
      ram: fc.array(fc.nat({ max: 255 }), { minLength: 128, maxLength: 128 }),
      clockOffsetMs: fc.integer({ min: -1.728e16, max: 1.728e16 }),
      timeMs: fc.integer({ min: -8.64e15, max: 8.64e15 }),
    });
    fc.assert(
      fc.property(uart, cmosState, fc.array(access, { maxLength: 80 }), (u, c, after) => {
        const b = newPc();
        const full = { ...b.pc.device.saveState(), com1: u, cmos: c };
        try {
          b.pc.device.restoreState(full);
        } catch (e) {
          expect((e as { code?: unknown }).code).toMatch(/^ERR_/);
          return;
        }
        for (const r of playPc(b, after)) expect(r).toBeGreaterThanOrEqual(0);
        b.pc.device.saveState();
      }),
      { numRuns: count(300, 5000) },
    );
  });
});
