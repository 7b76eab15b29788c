/**
 * Random guest port I/O into legacyPc: nothing throws, every read is answered in full (the same
 * bytes whatever junk the exit buffer held), exits outside the devices pass through in order, and
 * each device's ioRead stays within its access size.
 */
import fc from 'fast-check';
import { from, of } from 'rxjs';
import { legacyPc } from '../../src/devices/legacy-pc';
import type { LegacyPcDevices } from '../../src/devices/legacy-pc';
import { inRanges } from '../../src/devices/port-device';
import type { DeviceStage, PortDevice } from '../../src/devices/port-device';
import type { VcpuExit } from '../../src/wrappers/vcpu-exit';
import { ioIn, ioOut } from '../helpers/exits';
import { count } from '../helpers/stress';

const PORTS_OF_INTEREST = [0x3f8, 0x3ff, 0x60, 0x64, 0x70, 0x71, 0xcf8, 0xcfc, 0x80, 0x402];

/** A port near the devices (most of the time) or anywhere. */
const port = fc.oneof(
  {
    weight: 4,
    arbitrary: fc
      .constantFrom(...PORTS_OF_INTEREST)
      .chain((p) => fc.integer({ min: Math.max(0, p - 4), max: Math.min(0xffff, p + 4) })),
  },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
);

type Op =
  | { kind: 'in'; port: number; size: 1 | 2 | 4; count: number }
  | { kind: 'out'; port: number; size: 1 | 2 | 4; bytes: number[] }
  | { kind: 'rx'; bytes: number[] };

const size = fc.constantFrom<1 | 2 | 4>(1, 2, 4);
const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({ kind: fc.constant('in' as const), port, size, count: fc.integer({ min: 1, max: 3 }) }),
  },
  {
    weight: 5,
    arbitrary: fc
      .record({ port, size, count: fc.integer({ min: 1, max: 3 }) })
      .chain(({ port: p, size: sz, count }) =>
        fc
          .array(fc.integer({ min: 0, max: 255 }), { minLength: sz * count, maxLength: sz * count })
          .map((bytes): Op => ({ kind: 'out', port: p, size: sz, bytes })),
      ),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('rx' as const),
      bytes: fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 80 }),
    }),
  },
);

const FIXED_CLOCK = new Date('2031-07-04T12:34:56Z');

function newPc(stopOnReset: boolean, irqs: boolean[]): DeviceStage<LegacyPcDevices> {
  return legacyPc({
    com1: { irq: (l) => irqs.push(l), onTx: () => undefined },
    i8042: { stopOnReset },
    cmos: { clock: () => FIXED_CLOCK, memorySize: 5n * 2n ** 30n },
    debug: { onPostCode: () => undefined },
  });
}

interface Run {
  reads: number[][];
  passed: VcpuExit[];
  exits: VcpuExit[];
  irqs: boolean[];
  error: unknown;
  completed: boolean;
  pc: DeviceStage<LegacyPcDevices>;
}

function run(ops: Op[], junk: number, stopOnReset: boolean): Run {
  const irqs: boolean[] = [];
  const pc = newPc(stopOnReset, irqs);
  const exits: VcpuExit[] = [];
  const reads: number[][] = [];
  const passed: VcpuExit[] = [];
  let error: unknown;
  let completed = false;
  function* exitsOf(): Generator<VcpuExit> {
    for (const o of ops) {
      if (o.kind === 'rx') {
        pc.device.com1!.input(o.bytes);
        continue;
      }
      const exit =
        o.kind === 'in' ? ioIn(o.port, o.size, o.count, junk) : ioOut(o.port, o.bytes, o.bytes.length / o.size);
      exits.push(exit);
      yield exit;
    }
  }
  // from() pulls one exit at a time, like a vCPU, and stops pulling when the stage completes.
  from(exitsOf())
    .pipe(pc)
    .subscribe({ next: (e) => passed.push(e), error: (e: unknown) => (error = e), complete: () => (completed = true) });
  for (const e of exits) if (e.kind === 'IoIn') reads.push(Array.from(e.data));
  return { reads, passed, exits, irqs, error, completed, pc };
}

/** fuzz: legacyPc */
describe('legacyPc fuzz', () => {
  it('should never throw, answer every read in full and pass foreign exits through in order', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 120 }), fc.boolean(), (ops, stopOnReset) => {
        const a = run(ops, 0x00, stopOnReset);
        const b = run(ops, 0xff, stopOnReset);
        expect(a.error).toBeUndefined();
        expect(b.error).toBeUndefined();
        expect(a.completed).toBe(true);
        // Every read has size * count bytes, and the same ones whatever the buffer held before:
        // the devices wrote every byte (or the exit was passed on, then it keeps its junk in both).
        const ranges = a.pc.device.ports;
        a.exits.forEach((e, i) => {
          if (e.kind !== 'IoIn') return;
          const o = e;
          expect(o.data.length).toBe(o.size * o.count);
          const handled = inRanges(ranges, o.port);
          const other = b.exits[i] as VcpuExit & { kind: 'IoIn' };
          if (handled) expect(Array.from(o.data)).toEqual(Array.from(other.data));
        });
        // Foreign exits (not on a device port) pass through in order, up to a reset.
        const foreign = a.exits.filter((e) => (e.kind === 'IoIn' || e.kind === 'IoOut') && !inRanges(ranges, e.port));
        expect(a.passed).toEqual(foreign);
        if (stopOnReset && a.pc.device.i8042!.resetRequested) {
          // the stage completed at the reset: the exits after it were never pulled
          const last = a.exits[a.exits.length - 1];
          expect(last.kind === 'IoOut' && inRanges([[0x60, 0x64]], last.port)).toBe(true);
        }
        // The IRQ line only reports changes.
        a.irqs.forEach((l, i) => expect(l).toBe(i % 2 === 0));
      }),
      { numRuns: count(300, 5000) },
    );
  });

  it("should keep every device's ioRead within the access size for any port in its ranges", () => {
    const pc = newPc(false, []);
    const d = pc.device;
    const devices: PortDevice[] = [d.com1!, d.i8042!, d.cmos!, d.pci!, d.debug!, d];
    fc.assert(
      fc.property(
        fc.constantFrom(...devices),
        size,
        fc.array(fc.tuple(fc.nat(), size, fc.integer({ min: 0, max: 0xffff_ffff })), { maxLength: 20 }),
        (dev, sz, writes) => {
          const ports = dev.ports.flatMap(([from, to]) => Array.from({ length: to - from + 1 }, (_, i) => from + i));
          for (const [pick, wsz, value] of writes) dev.ioWrite(ports[pick % ports.length], wsz, value % 2 ** (8 * wsz));
          for (const p of ports) {
            const v = dev.ioRead(p, sz);
            expect(Number.isInteger(v)).toBe(true);
            expect(v).toBeGreaterThanOrEqual(0);
            expect(v).toBeLessThan(2 ** (8 * sz));
          }
        },
      ),
      { numRuns: count(300, 5000) },
    );
  });

  it('should write all ones for access sizes the kernel never produces', () => {
    const pc = newPc(false, []);
    const odd = ioIn(0x3f8, 1, 3);
    Object.defineProperty(odd, 'size', { value: 3 }); // a 3-byte access
    let error: unknown;
    of(odd as VcpuExit, ioOut(0x3f8, [1, 2, 3], 1))
      .pipe(pc)
      .subscribe({ error: (e: unknown) => (error = e) });
    expect(error).toBeUndefined();
    expect(Array.from(odd.data)).toEqual([0xff, 0xff, 0xff]);
  });
});
