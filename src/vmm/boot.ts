/**
 * Building a machine that boots Linux directly in 64-bit mode: guest RAM, the kernel (an ELF
 * vmlinux at its physical addresses, or a bzImage's protected-mode part at 1 MiB), the zero page
 * (`boot_params`) with the e820 map, command line and initrd, a GDT, identity-mapped page tables,
 * long-mode registers, CPUID, the local APIC in virtual-wire mode, and the in-kernel PIC/IOAPIC/PIT.
 *
 * The layout is the classic direct-boot one (as Firecracker's): GDT 0x500, zero page 0x7000,
 * stack below 0x9000, PML4 0x9000, PDPT 0xa000, four page directories 0xb000–0xefff (0–4 GiB in
 * 2 MiB pages), command line 0x20000.
 *
 * @module
 */
import type { KvmSegment, KvmSregs } from '../abi/layouts';
import { checkBool, checkInt, checkObject, invalidType, invalidValue, outOfRange } from '../abi/validate';
import { GuestMemory, type GuestMemoryOptions } from '../wrappers/guest-memory';
import type { CpuId } from '../wrappers/fam';
import { KVM_MAX_CPUID_ENTRIES } from '../wrappers/fam';
import { Kvm } from '../wrappers/kvm';
import type { VcpuFd } from '../wrappers/vcpu-fd';
import type { VmFd } from '../wrappers/vm-fd';
import {
  BOOT_FLAG,
  BZIMAGE_LOAD_ADDRESS,
  CAN_USE_HEAP,
  HDR,
  HDRS_MAGIC,
  LOADED_HIGH,
  bzImagePayload,
  compressedPayloadAdvice,
  isBzImage,
  parseBzImage,
  type BzImage,
  type PayloadFormat,
} from './bzimage';
import { HOST_DECOMPRESSIBLE, decompressPayload } from './decompress';
import { hex, badInitrd, badKernel, unsupportedKernel } from './errors';
import { isElf, loadElf, parseElf, type ElfKernel, type PhysWriter } from './elf';
import { zeroFilledRegs } from './regs';
import { MPTABLE_ADDR, MPTABLE_MAX_CPUS, buildMpTable } from './mptable';

/** Guest-physical addresses of the boot structures. */
export const BOOT_LAYOUT = {
  gdt: 0x500,
  zeroPage: 0x7000,
  stackTop: 0x8ff0,
  pml4: 0x9000,
  pdpt: 0xa000,
  /** Four page directories, 0xb000–0xefff. */
  pd: 0xb000,
  cmdline: 0x20000,
  /** End of conventional memory (start of the EBDA/BIOS area reserved in e820). */
  lowMemEnd: 0x9fc00,
  highMemStart: 0x100000,
  /** `KVM_SET_TSS_ADDR`: three pages just below the identity-map page, under 4 GiB. */
  tss: 0xfffb_d000,
  /** `KVM_SET_IDENTITY_MAP_ADDR`. */
  identityMap: 0xfffb_c000,
} as const;

/** Most guest RAM in one slot at 0 (the rest of the 32-bit space holds the TSS, LAPIC, IOAPIC). */
export const MAX_MEM_SIZE = 0xc000_0000;
/** Default guest RAM. */
export const DEFAULT_MEM_SIZE = 256 << 20;
/** `COMMAND_LINE_SIZE` of x86 Linux, used for a vmlinux (which has no setup header). */
export const ELF_CMDLINE_SIZE = 2048;
/** `initrd_addr_max` assumed for a vmlinux (the value 64-bit kernels put in their header). */
export const ELF_INITRD_ADDR_MAX = 0x7fff_ffff;

/** Zero-page offsets outside the setup header. */
const ZP = { e820Entries: 0x1e8, e820Table: 0x2d0, e820Max: 128 } as const;
/** e820 types. */
export const E820_RAM = 1;
export const E820_RESERVED = 2;

/** One e820 entry. */
export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

/** GDT entries: null, null, 64-bit code (0x10), data (0x18), TSS (0x20). */
export const GDT_ENTRIES: readonly bigint[] = [
  0n,
  0n,
  0x00af_9b00_0000_ffffn,
  0x00cf_9300_0000_ffffn,
  0x008f_8b00_0000_ffffn,
];
export const SELECTOR = { code: 0x10, data: 0x18, tss: 0x20 } as const;

/** CR0/CR4/EFER bits used for long mode. */
export const CR0_PE = 0x1n;
export const CR0_MP = 0x2n;
export const CR0_ET = 0x10n;
export const CR0_NE = 0x20n;
export const CR0_PG = 0x8000_0000n;
export const CR4_PAE = 0x20n;
export const EFER_LME = 0x100n;
export const EFER_LMA = 0x400n;

/** Local APIC register offsets and delivery modes. */
export const APIC_LVT0 = 0x350;
export const APIC_LVT1 = 0x360;
export const APIC_MODE_NMI = 4;
export const APIC_MODE_EXTINT = 7;

/** The memory map given to the kernel: RAM below 640 KiB, the BIOS hole reserved, RAM from 1 MiB. */
export function e820Map(memSize: number): E820Entry[] {
  checkMemSize(memSize);
  return [
    { addr: 0, size: BOOT_LAYOUT.lowMemEnd, type: E820_RAM },
    { addr: BOOT_LAYOUT.lowMemEnd, size: BOOT_LAYOUT.highMemStart - BOOT_LAYOUT.lowMemEnd, type: E820_RESERVED },
    { addr: BOOT_LAYOUT.highMemStart, size: memSize - BOOT_LAYOUT.highMemStart, type: E820_RAM },
  ];
}

function checkMemSize(memSize: number): number {
  checkInt('memSize', memSize, 16 << 20, MAX_MEM_SIZE);
  if (memSize % 0x200000 !== 0) outOfRange('memSize', 'a multiple of 2 MiB', memSize);
  return memSize;
}

/**
 * A kernel image ready to be loaded: what kind it is, where it enters, and its setup-header facts.
 */
export interface PreparedKernel {
  kind: 'elf' | 'bzimage';
  /**
   * A bzImage's payload format: `'elf'` (uncompressed), or the compression that was undone on
   * the host (`'lz4'`, `'gzip'`), or that the kernel's own decompressor undoes in the guest
   * (with `guestDecompresses`).
   */
  payload?: PayloadFormat;
  /** The bzImage boots through its own decompressor (`allowDecompressor`). */
  guestDecompresses?: boolean;
  /** 64-bit entry (guest physical). */
  entry: number;
  /** Lowest and one-past-highest guest-physical bytes the kernel occupies (bzImage: `init_size`). */
  low: number;
  high: number;
  cmdlineSize: number;
  initrdAddrMax: number;
  /** Setup header bytes to copy into the zero page at 0x1f1 (bzImage only). */
  setupHeader?: Uint8Array;
  /**
   * Writes the kernel into guest memory (`vm.guestMemory`, or anything with `write(gpa, bytes)`)
   * whose RAM ends at `memSize`.
   * @throws `TypeError` for a `memory` without `write`; `RangeError` for a bad `memSize`;
   *   {@link BootImageError} `ERR_KVM_BAD_KERNEL` when the kernel does not fit below `memSize`
   */
  load(memory: PhysWriter, memSize: number): void;
  /** The parsed ELF (a vmlinux, or the uncompressed ELF payload of a bzImage). */
  elf?: ElfKernel;
  bzImage?: BzImage;
}

/** Options of {@link prepareKernel}. */
export interface PrepareKernelOptions {
  /**
   * Decompress an LZ4 or gzip bzImage payload on the host and load the vmlinux inside it, as for
   * an uncompressed payload (default `true`): about half a second for a Debian kernel, where the kernel's own
   * decompressor takes minutes on an emulating (PVM) host. The boot then starts at the vmlinux's
   * entry, not at the bzImage's.
   */
  decompressOnHost?: boolean;
  /**
   * Boot a bzImage whose payload is not decompressed on the host (xz, zstd, …, or any with
   * `decompressOnHost: false`) through its own decompressor (64-bit entry at 0x100200).
   * Default `false`: such images are refused with advice, because the decompressor is extremely
   * slow where guest kernel code is emulated.
   */
  allowDecompressor?: boolean;
}

/**
 * Recognises a kernel image (ELF vmlinux or bzImage) and prepares it for loading. A bzImage whose
 * payload is an uncompressed ELF is loaded as that ELF (its setup header is kept for the zero page).
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * const k = prepareKernel(readFileSync('.guest/vmlinux'));
 * k.entry; // 0x1000000
 * ```
 * @throws {@link BootImageError} `ERR_KVM_BAD_KERNEL` / `ERR_KVM_UNSUPPORTED_KERNEL` with details
 */
export function prepareKernel(image: Uint8Array, options: PrepareKernelOptions = {}): PreparedKernel {
  const k = recogniseKernel(image, options);
  return {
    ...k,
    load(memory: PhysWriter, memSize: number): void {
      checkObject('memory', memory);
      const write: unknown = (memory as { write?: unknown }).write;
      if (typeof write !== 'function') invalidType('memory.write', 'a function', write);
      checkInt('memSize', memSize, 0, Number.MAX_SAFE_INTEGER);
      k.load(memory, memSize);
    },
  };
}

function recogniseKernel(image: Uint8Array, options: PrepareKernelOptions): PreparedKernel {
  checkObject('options', options);
  if (options.decompressOnHost !== undefined) checkBool('options.decompressOnHost', options.decompressOnHost);
  if (options.allowDecompressor !== undefined) checkBool('options.allowDecompressor', options.allowDecompressor);
  if (!(image instanceof Uint8Array)) invalidValue('kernel', 'must be a Uint8Array (the file contents)', image);
  if (image.length === 0) badKernel('the file is empty');
  if (isElf(image)) return fromElf(image, parseElf(image));
  if (!isBzImage(image)) {
    const head = Array.from(image.subarray(0, 4), (b) => b.toString(16).padStart(2, '0')).join(' ');
    badKernel(
      `neither an ELF vmlinux (magic 7f 45 4c 46) nor a bzImage (0xaa55 at 0x1fe and "HdrS" at 0x202); starts with ${head}`,
    );
  }
  const bz = parseBzImage(image);
  const onHost = options.decompressOnHost !== false && HOST_DECOMPRESSIBLE.includes(bz.payloadFormat);
  if (bz.payloadFormat === 'elf' || onHost) {
    const raw = bzImagePayload(bz);
    const payload = onHost ? decompressPayload(bz.payloadFormat, raw)! : raw;
    if (!isElf(payload)) {
      const head = Array.from(payload.subarray(0, 4), (b) => b.toString(16).padStart(2, '0')).join(' ');
      badKernel(
        `the ${bz.payloadFormat} payload decompressed to something that is not an ELF vmlinux (starts with ${head})`,
      );
    }
    const k = fromElf(payload, parseElf(payload));
    return {
      ...k,
      kind: 'bzimage',
      payload: onHost ? bz.payloadFormat : 'elf',
      setupHeader: bz.setupHeader,
      cmdlineSize: bz.cmdlineSize,
      initrdAddrMax: bz.initrdAddrMax,
      bzImage: bz,
    };
  }
  if (!options.allowDecompressor) unsupportedKernel(compressedPayloadAdvice(bz));
  if (!bz.has64BitEntry)
    unsupportedKernel(
      `boot protocol 0x${bz.protocol.toString(16)} kernel has no 64-bit entry point (XLF_KERNEL_64 not set)`,
    );
  const pm = bz.protectedMode;
  const size = Math.max(pm.length, bz.initSize);
  return {
    kind: 'bzimage',
    payload: bz.payloadFormat,
    guestDecompresses: true,
    entry: bz.entry64,
    low: BZIMAGE_LOAD_ADDRESS,
    high: BZIMAGE_LOAD_ADDRESS + size,
    cmdlineSize: bz.cmdlineSize,
    initrdAddrMax: bz.initrdAddrMax,
    setupHeader: bz.setupHeader,
    bzImage: bz,
    load(memory, memSize) {
      if (BZIMAGE_LOAD_ADDRESS + size > memSize) {
        badKernel(
          `the bzImage needs ${hex(size)} bytes (init_size) from 1 MiB, more than ${memSize >>> 20} MiB of guest RAM`,
        );
      }
      memory.write(BigInt(BZIMAGE_LOAD_ADDRESS), pm);
    },
  };
}

function fromElf(image: Uint8Array, elf: ElfKernel): PreparedKernel {
  return {
    kind: 'elf',
    entry: elf.entry,
    low: elf.lowAddress,
    high: elf.highAddress,
    cmdlineSize: ELF_CMDLINE_SIZE - 1,
    initrdAddrMax: ELF_INITRD_ADDR_MAX,
    elf,
    load: (memory, memSize) => loadElf(image, elf, memory, memSize),
  };
}

/**
 * Where the initrd goes: page aligned, as high as possible below both the end of RAM and
 * `initrd_addr_max`, and above the kernel.
 *
 * @example
 * ```ts
 * // @ts-setup: declare const kernel: PreparedKernel; // from prepareKernel()
 * // A 2 MB initrd in 256 MiB of RAM, above the kernel: 0xfe17000 for a vmlinux (limit 0x7fffffff)
 * const addr = placeInitrd(2_000_000, 256 << 20, kernel.initrdAddrMax, kernel.high);
 * ```
 * @throws {@link BootImageError} `ERR_KVM_BAD_INITRD` when it is empty or does not fit
 */
export function placeInitrd(size: number, memSize: number, initrdAddrMax: number, kernelEnd: number): number {
  if (size === 0) badInitrd('the initrd is empty');
  const top = Math.min(memSize, initrdAddrMax + 1);
  const addr = Math.floor((top - size) / 0x1000) * 0x1000;
  const floor = Math.ceil(Math.max(kernelEnd, BOOT_LAYOUT.highMemStart) / 0x1000) * 0x1000;
  if (addr < floor) {
    badInitrd(
      `${size} bytes do not fit between the kernel's end (${hex(kernelEnd)}) and ${hex(top)} (end of RAM or initrd_addr_max ${hex(initrdAddrMax)}); give the guest more memory`,
    );
  }
  return addr;
}

/** Inputs of {@link buildZeroPage}. */
export interface ZeroPageInput {
  memSize: number;
  cmdlineAddr: number;
  cmdlineSize: number;
  initrd?: { addr: number; size: number };
  /** The kernel's setup header (bytes from 0x1f1); a minimal one is synthesised when absent. */
  setupHeader?: Uint8Array;
}

/**
 * The 4 KiB zero page (`struct boot_params`): setup header (copied from a bzImage, or synthesised
 * for a vmlinux: boot flag, "HdrS", protocol 2.15), loader type 0xff, LOADED_HIGH | CAN_USE_HEAP,
 * command line pointer, ramdisk image/size, and the e820 table.
 *
 * @example
 * ```ts
 * const memSize = 256 << 20; // guest RAM, in bytes
 * const zeroPage = buildZeroPage({ memSize, cmdlineAddr: BOOT_LAYOUT.cmdline, cmdlineSize: 100 });
 * vm.guestMemory.write(BigInt(BOOT_LAYOUT.zeroPage), zeroPage); // at guest-physical 0x7000
 * ```
 */
export function buildZeroPage(input: ZeroPageInput): Uint8Array {
  checkObject('input', input);
  const zp = new Uint8Array(0x1000);
  const v = new DataView(zp.buffer);
  if (input.setupHeader !== undefined) {
    zp.set(input.setupHeader.subarray(0, 0x1000 - HDR.setupSects), HDR.setupSects);
  } else {
    v.setUint16(HDR.bootFlag, BOOT_FLAG, true);
    v.setUint32(HDR.header, HDRS_MAGIC, true);
    v.setUint16(HDR.version, 0x20f, true);
    v.setUint32(HDR.kernelAlignment, 0x100_0000, true);
    v.setUint32(HDR.cmdlineSize, ELF_CMDLINE_SIZE - 1, true);
    v.setUint32(HDR.initrdAddrMax, ELF_INITRD_ADDR_MAX, true);
  }
  zp[HDR.typeOfLoader] = 0xff;
  zp[HDR.loadflags] = zp[HDR.loadflags] | LOADED_HIGH | CAN_USE_HEAP;
  v.setUint16(HDR.heapEndPtr, 0xfe00, true);
  v.setUint32(HDR.cmdLinePtr, input.cmdlineAddr, true);
  v.setUint32(HDR.cmdlineSize, input.cmdlineSize, true);
  v.setUint32(HDR.ramdiskImage, input.initrd?.addr ?? 0, true);
  v.setUint32(HDR.ramdiskSize, input.initrd?.size ?? 0, true);
  const e820 = e820Map(input.memSize);
  zp[ZP.e820Entries] = e820.length;
  e820.forEach((e, i) => {
    const at = ZP.e820Table + 20 * i;
    v.setBigUint64(at, BigInt(e.addr), true);
    v.setBigUint64(at + 8, BigInt(e.size), true);
    v.setUint32(at + 16, e.type, true);
  });
  return zp;
}

/** Reads the e820 table back from a zero page. */
export function readE820(zeroPage: Uint8Array): E820Entry[] {
  const v = new DataView(zeroPage.buffer, zeroPage.byteOffset, zeroPage.byteLength);
  const n = Math.min(zeroPage[ZP.e820Entries], ZP.e820Max);
  const out: E820Entry[] = [];
  for (let i = 0; i < n; i++) {
    const at = ZP.e820Table + 20 * i;
    out.push({
      addr: Number(v.getBigUint64(at, true)),
      size: Number(v.getBigUint64(at + 8, true)),
      type: v.getUint32(at + 16, true),
    });
  }
  return out;
}

/** The GDT bytes ({@link GDT_ENTRIES}). */
export function gdtBytes(): Uint8Array {
  const b = new Uint8Array(8 * GDT_ENTRIES.length);
  const v = new DataView(b.buffer);
  GDT_ENTRIES.forEach((e, i) => v.setBigUint64(8 * i, e, true));
  return b;
}

/**
 * Identity page tables for 0–4 GiB with 2 MiB pages: PML4[0] → PDPT, PDPT[0..3] → four page
 * directories, each PDE = address | PS | RW | P.
 */
export function identityPageTables(): { pml4: Uint8Array; pdpt: Uint8Array; pd: Uint8Array } {
  const pml4 = new Uint8Array(0x1000);
  const pdpt = new Uint8Array(0x1000);
  const pd = new Uint8Array(0x4000);
  new DataView(pml4.buffer).setBigUint64(0, BigInt(BOOT_LAYOUT.pdpt | 0x3), true);
  const p = new DataView(pdpt.buffer);
  for (let i = 0; i < 4; i++) p.setBigUint64(8 * i, BigInt((BOOT_LAYOUT.pd + 0x1000 * i) | 0x3), true);
  const d = new DataView(pd.buffer);
  for (let i = 0; i < 2048; i++) d.setBigUint64(8 * i, (BigInt(i) << 21n) | 0x83n, true);
  return { pml4, pdpt, pd };
}

/**
 * Writes what {@link longModeSregs} points at: the GDT ({@link gdtBytes}) at `BOOT_LAYOUT.gdt` and
 * the identity page tables ({@link identityPageTables}) at `BOOT_LAYOUT.pml4`/`pdpt`/`pd`.
 */
export function writeLongModeTables(memory: PhysWriter): void {
  memory.write(BigInt(BOOT_LAYOUT.gdt), gdtBytes());
  const pt = identityPageTables();
  memory.write(BigInt(BOOT_LAYOUT.pml4), pt.pml4);
  memory.write(BigInt(BOOT_LAYOUT.pdpt), pt.pdpt);
  memory.write(BigInt(BOOT_LAYOUT.pd), pt.pd);
}

/** A `kvm_segment` from a GDT entry (limit scaled by the granularity bit). */
export function segmentFromGdt(entry: bigint, selector: number): KvmSegment {
  const base = ((entry >> 16n) & 0xff_ffffn) | (((entry >> 56n) & 0xffn) << 24n);
  let limit = Number((entry & 0xffffn) | ((entry >> 32n) & 0xf_0000n));
  const g = Number((entry >> 55n) & 1n);
  if (g) limit = ((limit << 12) | 0xfff) >>> 0;
  const type = Number((entry >> 40n) & 0xfn);
  return {
    base,
    limit,
    selector,
    type,
    present: Number((entry >> 47n) & 1n),
    dpl: Number((entry >> 45n) & 3n),
    db: Number((entry >> 54n) & 1n),
    s: Number((entry >> 44n) & 1n),
    l: Number((entry >> 53n) & 1n),
    g,
    avl: Number((entry >> 52n) & 1n),
    unusable: 0,
  };
}

/**
 * `sregs` switched to 64-bit long mode on the identity map: CS = 0x10 (L=1), DS/ES/FS/GS/SS = 0x18,
 * TR = 0x20, GDT at {@link BOOT_LAYOUT}.gdt, CR0 = PG|NE|ET|MP|PE, CR3 = PML4, CR4 = PAE,
 * EFER = LME|LMA. Other fields are kept.
 */
export function longModeSregs(sregs: KvmSregs): KvmSregs {
  const code = segmentFromGdt(GDT_ENTRIES[2], SELECTOR.code);
  const data = segmentFromGdt(GDT_ENTRIES[3], SELECTOR.data);
  const tss = segmentFromGdt(GDT_ENTRIES[4], SELECTOR.tss);
  return {
    ...sregs,
    cs: code,
    ds: { ...data },
    es: { ...data },
    fs: { ...data },
    gs: { ...data },
    ss: { ...data },
    tr: tss,
    gdt: { ...sregs.gdt, base: BigInt(BOOT_LAYOUT.gdt), limit: 8 * GDT_ENTRIES.length - 1 },
    idt: { ...sregs.idt, base: 0n, limit: 0 },
    cr0: (sregs.cr0 | CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG) & ~0x6000_0000n, // CD/NW off
    cr3: BigInt(BOOT_LAYOUT.pml4),
    cr4: CR4_PAE,
    efer: sregs.efer | EFER_LME | EFER_LMA,
  };
}

/** Sets the LAPIC's LVT0 to ExtINT and LVT1 to NMI (virtual-wire mode, needed without MP/ACPI tables). */
export function configureLapic(vcpu: VcpuFd): void {
  const lapic = vcpu.getLapic();
  const v = new DataView(lapic.regs.buffer, lapic.regs.byteOffset, lapic.regs.byteLength);
  const mode = (reg: number, m: number) => v.setUint32(reg, ((v.getUint32(reg, true) & ~0x700) | (m << 8)) >>> 0, true);
  mode(APIC_LVT0, APIC_MODE_EXTINT);
  mode(APIC_LVT1, APIC_MODE_NMI);
  vcpu.setLapic(lapic);
}

/** KVM's paravirtual features (CPUID 0x40000001 EAX) that send IPIs, yield or unhalt through `vmcall`. */
export const KVM_PV_IPI_FEATURES = (1 << 11) | (1 << 13) | (1 << 7); // PV_SEND_IPI, PV_SCHED_YIELD, PV_UNHALT

/**
 * The supported CPUID with the vCPU's APIC id in leaf 1 (EBX[31:24]) and leaf 0xb (EDX). With
 * `hidePvIpi`, KVM's PV_SEND_IPI, PV_SCHED_YIELD and PV_UNHALT are hidden: a guest with more than
 * one CPU uses them through `vmcall`, which never completes on PVM hosts (the guest's CPL-0 code is
 * emulated there), so an SMP guest would hang bringing up its second CPU.
 */
export function vcpuCpuid(kvm: Kvm, vcpuId: number, hidePvIpi = false): CpuId {
  const cpuid = kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES);
  for (const e of cpuid.entries) {
    if (e.function === 1) e.ebx = ((e.ebx & 0x00ff_ffff) | (vcpuId << 24)) >>> 0;
    if (e.function === 0xb || e.function === 0x1f) e.edx = vcpuId;
    if (hidePvIpi && e.function === 0x4000_0001) e.eax = (e.eax & ~KVM_PV_IPI_FEATURES) >>> 0;
  }
  return cpuid;
}

/** Options of {@link createLinuxMachine}. */
export interface LinuxMachineConfig extends PrepareKernelOptions {
  /** The kernel file's bytes: an ELF vmlinux or a bzImage. */
  kernel: Uint8Array;
  /** The initrd/initramfs bytes. */
  initrd?: Uint8Array;
  /** The kernel command line (default empty). */
  cmdline?: string;
  /** Guest RAM in bytes (default 256 MiB; a multiple of 2 MiB, at most 3 GiB). */
  memSize?: number;
  /**
   * Create the in-kernel PIC/IOAPIC/LAPIC and PIT (default `true`, what Linux needs). Without
   * them `hlt` exits to userspace (`Hlt`), which tiny test kernels use to stop.
   */
  irqchip?: boolean;
  /**
   * How guest RAM is mapped (`GuestMemory.anonymous` options; default: shared, no huge pages).
   * `{ shared: false, hugePages: 'madvise' }` asks for transparent huge pages.
   */
  memory?: Omit<GuestMemoryOptions, 'backend'>;
  /**
   * Virtual CPUs (default 1; at most 64). With more than one, the machine gets an MP table (at
   * 0x9fc00: the CPUs, the IOAPIC, ISA IRQ i on pin i) and KVM's PV IPI features are hidden; the
   * other vCPUs wait in the in-kernel LAPIC for the guest's INIT/SIPI. Needs the irqchip.
   */
  cpus?: number;
  /**
   * Log the guest's writes to RAM (`KVM_MEM_LOG_DIRTY_PAGES` on its slot), which diff snapshots
   * need (default `false`: logging costs a little on every first write to a page).
   */
  trackDirtyPages?: boolean;
}

/** Where things were put. */
export interface BootInfo {
  kind: 'elf' | 'bzimage';
  /** A bzImage's payload: `'elf'`, or the compression undone on the host (see `PreparedKernel`). */
  payload?: PayloadFormat;
  entry: number;
  zeroPage: number;
  cmdline: { addr: number; size: number };
  initrd?: { addr: number; size: number };
  kernel: { low: number; high: number };
  e820: E820Entry[];
}

/** A VM ready to run Linux on vCPU 0. `close()` closes the vCPU, the VM and the guest memory. */
export interface LinuxMachine extends Disposable {
  vm: VmFd;
  /** vCPU 0, the one that enters the kernel. */
  vcpu: VcpuFd;
  /** Every vCPU, in APIC-id order (`vcpus[0] === vcpu`). */
  vcpus: VcpuFd[];
  memory: GuestMemory;
  memSize: number;
  boot: BootInfo;
  /** Whether it has the in-kernel irqchip and PIT. */
  irqchip: boolean;
  close(): void;
}

/**
 * Lays out guest memory for a direct 64-bit Linux boot (no pure function here touches KVM):
 * kernel, zero page, command line, initrd, GDT and page tables.
 *
 * @throws {@link BootImageError} for a bad kernel or initrd; `RangeError` for a command line
 *   longer than the kernel's `cmdline_size`; `TypeError` (`ERR_INVALID_ARG_VALUE`) for a command line
 *   with a NUL or a character beyond U+00FF
 */
export function layoutGuest(
  memory: PhysWriter,
  memSize: number,
  kernel: PreparedKernel,
  cmdline: string,
  initrd?: Uint8Array,
): BootInfo {
  if (kernel.high > memSize) {
    badKernel(`the kernel occupies ${hex(kernel.low)}–${hex(kernel.high)}, beyond ${memSize >>> 20} MiB of guest RAM`);
  }
  if (kernel.low < BOOT_LAYOUT.highMemStart)
    badKernel(`the kernel loads at ${hex(kernel.low)}, below 1 MiB where the boot structures live`);
  if (typeof cmdline !== 'string') invalidValue('cmdline', 'must be a string', cmdline);
  // The kernel reads bytes up to a NUL: a NUL inside would cut the line short, and a character
  // beyond Latin-1 would be written as some other byte.
  const bad = /[\0\u0100-\uffff]/.exec(cmdline);
  if (bad) {
    invalidValue(
      'cmdline',
      `must contain only characters U+0001–U+00FF (it has U+${bad[0].charCodeAt(0).toString(16).padStart(4, '0').toUpperCase()} at ${bad.index})`,
    );
  }
  const cmd = Buffer.from(cmdline + '\0', 'latin1');
  if (cmd.length - 1 > kernel.cmdlineSize)
    outOfRange('cmdline.length', `<= ${kernel.cmdlineSize} (the kernel's cmdline_size)`, cmd.length - 1);
  kernel.load(memory, memSize);
  let initrdAt: { addr: number; size: number } | undefined;
  if (initrd !== undefined) {
    if (!(initrd instanceof Uint8Array)) invalidValue('initrd', 'must be a Uint8Array (the file contents)', initrd);
    const addr = placeInitrd(initrd.length, memSize, kernel.initrdAddrMax, kernel.high);
    memory.write(BigInt(addr), initrd);
    initrdAt = { addr, size: initrd.length };
  }
  memory.write(BigInt(BOOT_LAYOUT.cmdline), cmd);
  const zp = buildZeroPage({
    memSize,
    cmdlineAddr: BOOT_LAYOUT.cmdline,
    cmdlineSize: cmd.length - 1,
    ...(initrdAt ? { initrd: initrdAt } : {}),
    ...(kernel.setupHeader ? { setupHeader: kernel.setupHeader } : {}),
  });
  memory.write(BigInt(BOOT_LAYOUT.zeroPage), zp);
  writeLongModeTables(memory);
  return {
    kind: kernel.kind,
    ...(kernel.payload !== undefined ? { payload: kernel.payload } : {}),
    entry: kernel.entry,
    zeroPage: BOOT_LAYOUT.zeroPage,
    cmdline: { addr: BOOT_LAYOUT.cmdline, size: cmd.length - 1 },
    ...(initrdAt ? { initrd: initrdAt } : {}),
    kernel: { low: kernel.low, high: kernel.high },
    e820: e820Map(memSize),
  };
}

/**
 * Sets a vCPU up to enter the kernel: CPUID (supported, with its APIC id), LAPIC virtual wire
 * (when `lapic`, i.e. with the in-kernel irqchip),
 * long-mode sregs, FPU defaults, and RIP = entry, RSI = zero page, RSP = stack, RFLAGS = 2.
 */
export function setupBootVcpu(kvm: Kvm, vcpu: VcpuFd, entry: number, lapic = true, hidePvIpi = false): void {
  vcpu.setCpuid2(vcpuCpuid(kvm, Math.max(vcpu.id, 0), hidePvIpi));
  if (lapic) configureLapic(vcpu);
  vcpu.setSregs(longModeSregs(vcpu.getSregs()));
  vcpu.setFpu({ fcw: 0x37f, mxcsr: 0x1f80 });
  vcpu.setRegs(
    zeroFilledRegs({
      rip: BigInt(entry),
      rsi: BigInt(BOOT_LAYOUT.zeroPage),
      rsp: BigInt(BOOT_LAYOUT.stackTop),
      rbp: BigInt(BOOT_LAYOUT.stackTop),
      rflags: 2n,
    }),
  );
}

/** `KVM_MEM_LOG_DIRTY_PAGES`. */
const KVM_MEM_LOG_DIRTY_PAGES = 1;

/**
 * @internal The VM of a Linux machine before its vCPUs: RAM in slot 0 (`memory`, its writes
 * logged with `trackDirtyPages`), the TSS and identity-map pages and, with `irqchip`, the
 * in-kernel PIC/IOAPIC and PIT (which must exist before any vCPU). The same for a booted machine
 * and one restored from a snapshot. On failure the VM is closed; `memory` stays the caller's.
 */
export function createLinuxVmShell(
  kvm: Kvm,
  irqchip: boolean,
  ram: { memory: GuestMemory; trackDirtyPages: boolean },
): VmFd {
  const vm = kvm.createVm();
  try {
    // The RAM slot goes in before the irqchip: on the PVM hosts measured, a memory slot added
    // after KVM_CREATE_IRQCHIP took 4-12 ms (2 GiB or 128 MiB alike), and 1.3-1.6 ms before it,
    // in C as from here (KVM allows slots in any order before the vCPUs). Restores pay it.
    vm.setUserMemoryRegion({
      slot: 0,
      guestPhysAddr: 0n,
      memory: ram.memory,
      flags: ram.trackDirtyPages ? KVM_MEM_LOG_DIRTY_PAGES : 0,
    });
    vm.setTssAddress(BOOT_LAYOUT.tss);
    vm.setIdentityMapAddress(BOOT_LAYOUT.identityMap);
    if (irqchip) {
      vm.createIrqChip();
      vm.createPit2({ flags: 0 });
    }
    return vm;
  } catch (e) {
    vm.close();
    throw e;
  }
}

/**
 * Builds a one-vCPU VM that boots Linux in 64-bit mode: `KVM_SET_TSS_ADDR`,
 * `KVM_SET_IDENTITY_MAP_ADDR`, `KVM_CREATE_IRQCHIP`, `KVM_CREATE_PIT2`, one RAM slot at 0, the guest
 * layout (kernel, zero page, command line, initrd, GDT and page tables: `layoutGuest` in
 * `src/vmm/boot.ts`) and vCPU 0 in long mode at the kernel's entry (`setupBootVcpu`). Run
 * `machine.vcpu` afterwards; the guest's port I/O (serial console, i8042 reset) is the caller's to
 * handle, e.g. with the {@link legacyPc} stage.
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * import { takeWhile } from 'rxjs';
 * using m = createLinuxMachine(kvm, { kernel: readFileSync('vmlinux'), cmdline: 'console=ttyS0 panic=-1 reboot=k' });
 * const pc = legacyPc({ com1: { onTx: (b) => process.stdout.write(b), irq: (l) => m.vm.setIrqLine(4, l) } });
 * const openBus = (e: VcpuExit) => (/^(Io|Mmio)/.test(e.kind) ? 'ignore' : 'error'); // probes of absent devices
 * // Runs until the guest resets through the i8042 (the stage completes) or triple-faults.
 * const outcome = await runInThread(m.vcpu, (exits$) =>
 *   exits$.pipe(pc, takeWhile((e) => e.kind !== 'Shutdown'), failOnUnhandled({ policy: openBus })),
 * );
 * ```
 * @throws {@link BootImageError} `ERR_KVM_BAD_KERNEL`/`ERR_KVM_UNSUPPORTED_KERNEL`/`ERR_KVM_BAD_INITRD`
 *   (checked before any VM is created); {@link KvmError} from the ioctls; `RangeError` for bad sizes
 */
export function createLinuxMachine(kvm: Kvm, config: LinuxMachineConfig): LinuxMachine {
  if (!(kvm instanceof Kvm)) invalidType('kvm', 'an instance of Kvm', kvm);
  checkObject('config', config);
  if (config.irqchip !== undefined) checkBool('config.irqchip', config.irqchip);
  if (config.memory !== undefined) checkObject('config.memory', config.memory);
  const memSize = checkMemSize(config.memSize ?? DEFAULT_MEM_SIZE);
  const cpus = config.cpus === undefined ? 1 : checkInt('config.cpus', config.cpus, 1, MPTABLE_MAX_CPUS);
  if (cpus > 1 && config.irqchip === false)
    invalidValue(
      'config.irqchip',
      'must not be false with more than one CPU (the APs start through the in-kernel LAPIC)',
      false,
    );
  const kernel = prepareKernel(config.kernel, config);
  const cmdline = config.cmdline ?? '';
  if (typeof cmdline !== 'string') invalidValue('config.cmdline', 'must be a string', cmdline);
  if (config.trackDirtyPages !== undefined) checkBool('config.trackDirtyPages', config.trackDirtyPages);
  const irqchip = config.irqchip ?? true;
  const memory = GuestMemory.anonymous(memSize, { ...(config.memory ?? {}), backend: kvm.backend });
  let vm: VmFd;
  try {
    vm = createLinuxVmShell(kvm, irqchip, { memory, trackDirtyPages: config.trackDirtyPages === true });
  } catch (e) {
    memory.close();
    throw e;
  }
  try {
    const boot = layoutGuest(vm.guestMemory, memSize, kernel, cmdline, config.initrd);
    const smp = cpus > 1;
    if (smp) vm.guestMemory.write(BigInt(MPTABLE_ADDR), buildMpTable(cpus));
    const vcpu = vm.createVcpu(0);
    setupBootVcpu(kvm, vcpu, kernel.entry, irqchip, smp);
    const vcpus = [vcpu];
    for (let id = 1; id < cpus; id++) {
      // An AP: its own APIC id, the same features; it starts when the guest sends INIT/SIPI.
      const ap = vm.createVcpu(id);
      ap.setCpuid2(vcpuCpuid(kvm, id, true));
      vcpus.push(ap);
    }
    const mem = memory;
    const close = () => {
      vm.close();
      mem.close();
    };
    return { vm, vcpu, vcpus, memory: mem, memSize, boot, irqchip, close, [Symbol.dispose]: close };
  } catch (e) {
    vm.close();
    memory.close();
    throw e;
  }
}
