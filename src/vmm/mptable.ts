/**
 * The Intel MultiProcessor Specification 1.4 tables (the MP floating pointer and the MP
 * configuration table) that tell a kernel without ACPI how many CPUs there are and where the
 * IOAPIC is: what Firecracker writes for its no-ACPI guests, and what Linux's `X86_MPPARSE` reads.
 * Layouts from the MP spec 1.4 (Linux: `arch/x86/include/asm/mpspec_def.h`).
 *
 * @module
 */
import { KvmRangeError } from '../abi/errors';

/** Where {@link buildMpTable} puts the floating pointer: the start of the reserved EBDA area, which Linux scans. */
export const MPTABLE_ADDR = 0x9fc00;
/** The LAPIC's and IOAPIC's guest-physical addresses (the PC's, and KVM's in-kernel irqchip's). */
export const LAPIC_ADDR = 0xfee0_0000;
export const IOAPIC_ADDR = 0xfec0_0000;
/** The most CPUs one table describes here (the guest kernel's NR_CPUS is 64). */
export const MPTABLE_MAX_CPUS = 64;
/** ISA interrupts routed identically to IOAPIC pins (KVM's default GSI routing does the same). */
const ISA_IRQS = 16;

const APIC_VERSION = 0x14;
const IOAPIC_VERSION = 0x11;
const CPU_ENABLED = 1;
const CPU_BSP = 2;
const MP_INT = 0;
const MP_NMI = 1;
const MP_EXTINT = 3;

/** Sizes of the structures, in bytes. */
export const MP_SIZES = { floating: 16, header: 44, processor: 20, bus: 8, ioapic: 8, intsrc: 8, lintsrc: 8 } as const;

function checksum(b: Uint8Array, from: number, to: number): number {
  let sum = 0;
  for (let i = from; i < to; i++) sum = (sum + b[i]) & 0xff;
  return (0x100 - sum) & 0xff;
}

/**
 * The floating pointer and the configuration table for `cpus` CPUs (APIC IDs 0 … cpus − 1, CPU 0
 * the BSP), one ISA bus, one IOAPIC (ID `cpus`) with ISA IRQ i on pin i, LINT0 as ExtINT and LINT1
 * as NMI on every LAPIC. The bytes are to be written at {@link MPTABLE_ADDR}; the floating pointer
 * points at the configuration table right after it.
 *
 * @example
 * ```ts
 * vm.guestMemory.write(BigInt(MPTABLE_ADDR), buildMpTable(2));
 * ```
 * @throws `RangeError` `ERR_OUT_OF_RANGE` for `cpus` outside 1..64
 */
export function buildMpTable(cpus: number, at = MPTABLE_ADDR): Uint8Array {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MPTABLE_MAX_CPUS)
    throw new KvmRangeError(
      'ERR_OUT_OF_RANGE',
      `cpus must be an integer in 1..${MPTABLE_MAX_CPUS}; got ${String(cpus)}`,
    );
  if (!Number.isInteger(at) || at < 0 || at % 16 !== 0 || at > 0xfffff)
    throw new KvmRangeError('ERR_OUT_OF_RANGE', `at must be 16-byte aligned below 1 MiB; got ${String(at)}`);
  const entries = cpus + 1 + 1 + ISA_IRQS + 2;
  const tableLength =
    MP_SIZES.header + cpus * MP_SIZES.processor + MP_SIZES.bus + MP_SIZES.ioapic + (ISA_IRQS + 2) * MP_SIZES.intsrc;
  const b = new Uint8Array(MP_SIZES.floating + tableLength);
  const v = new DataView(b.buffer);
  const ascii = (off: number, s: string) => b.set(Buffer.from(s, 'latin1'), off);

  // Floating pointer: "_MP_", the table's address, length in 16-byte units, spec 1.4, no
  // default configuration (feature1 0), no IMCR (feature2 0: virtual-wire mode).
  ascii(0, '_MP_');
  v.setUint32(4, at + MP_SIZES.floating, true);
  b[8] = 1;
  b[9] = 4;
  b[10] = checksum(b, 0, MP_SIZES.floating);

  const t = MP_SIZES.floating;
  ascii(t, 'PCMP');
  v.setUint16(t + 4, tableLength, true);
  b[t + 6] = 4; // spec 1.4
  ascii(t + 8, 'KVM-RX  '); // OEM ID, 8 bytes
  ascii(t + 16, '0.1         '); // product ID, 12 bytes
  v.setUint16(t + 34, entries, true);
  v.setUint32(t + 36, LAPIC_ADDR, true);
  let o = t + MP_SIZES.header;
  for (let id = 0; id < cpus; id++) {
    b[o] = 0; // processor
    b[o + 1] = id;
    b[o + 2] = APIC_VERSION;
    b[o + 3] = CPU_ENABLED | (id === 0 ? CPU_BSP : 0);
    v.setUint32(o + 4, 0x600, true); // CPU signature: family 6
    v.setUint32(o + 8, 0x201, true); // feature flags: FPU, APIC
    o += MP_SIZES.processor;
  }
  b[o] = 1; // bus
  b[o + 1] = 0;
  ascii(o + 2, 'ISA   ');
  o += MP_SIZES.bus;
  const ioapicId = cpus;
  b[o] = 2; // IOAPIC
  b[o + 1] = ioapicId;
  b[o + 2] = IOAPIC_VERSION;
  b[o + 3] = 1; // enabled
  v.setUint32(o + 4, IOAPIC_ADDR, true);
  o += MP_SIZES.ioapic;
  for (let irq = 0; irq < ISA_IRQS; irq++) {
    b[o] = 3; // I/O interrupt
    b[o + 1] = MP_INT;
    v.setUint16(o + 2, 0, true); // polarity and trigger: as the bus says (ISA: edge, high)
    b[o + 4] = 0; // source bus
    b[o + 5] = irq;
    b[o + 6] = ioapicId;
    b[o + 7] = irq; // pin
    o += MP_SIZES.intsrc;
  }
  for (const [type, lint] of [
    [MP_EXTINT, 0],
    [MP_NMI, 1],
  ]) {
    b[o] = 4; // local interrupt
    b[o + 1] = type;
    v.setUint16(o + 2, 0, true);
    b[o + 4] = 0;
    b[o + 5] = 0;
    b[o + 6] = 0xff; // every LAPIC
    b[o + 7] = lint;
    o += MP_SIZES.lintsrc;
  }
  b[t + 7] = checksum(b, t, t + tableLength);
  return b;
}
