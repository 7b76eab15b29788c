/**
 * The direct-boot machine: zero page, e820, initrd placement, GDT, page tables and long-mode
 * registers on the mock; a tiny crafted 64-bit ELF "kernel" booted through the same loader on the
 * real kernel.
 */
import { MockBackend } from '../../src/backend/mock/index';
import { Kvm } from '../../src/wrappers/kvm';
import {
  BOOT_LAYOUT,
  E820_RAM,
  E820_RESERVED,
  GDT_ENTRIES,
  buildZeroPage,
  createLinuxMachine,
  e820Map,
  identityPageTables,
  longModeSregs,
  placeInitrd,
  prepareKernel,
  readE820,
  segmentFromGdt,
  type LinuxMachine,
} from '../../src/vmm/boot';
import { HDR } from '../../src/vmm/bzimage';
import { emulationFallbackStats, handleEmulationFailure } from '../../src/vmm/emulation-fallback';
import { describeKvm, expectCode, kvmVendor } from '../helpers/kvm';
import { buildBzImage, buildElf, tinyKernel } from './images';
import { bootError } from '../helpers/boot-image';

const MiB = 1 << 20;
/** A PVM host (no VMX/SVM): guest kernel code goes through KVM's emulator. */
const emulatingHost = kvmVendor === 'pvm';

describe('boot layout (pure)', () => {
  it('e820: RAM below 0x9fc00, the BIOS hole reserved, RAM from 1 MiB to the end', () => {
    expect(e820Map(256 * MiB)).toEqual([
      { addr: 0, size: 0x9fc00, type: E820_RAM },
      { addr: 0x9fc00, size: 0x100000 - 0x9fc00, type: E820_RESERVED },
      { addr: 0x100000, size: 255 * MiB, type: E820_RAM },
    ]);
    expectCode(() => e820Map(3 * MiB), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => e820Map(33 * MiB), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => e820Map(4096 * MiB), 'RangeError', 'ERR_OUT_OF_RANGE');
  });

  it('zero page for a vmlinux: synthetic header, loader type, flags, cmdline, ramdisk, e820', () => {
    const zp = buildZeroPage({
      memSize: 64 * MiB,
      cmdlineAddr: 0x20000,
      cmdlineSize: 13,
      initrd: { addr: 0x3e00000, size: 12345 },
    });
    const v = new DataView(zp.buffer);
    expect(zp.length).toBe(4096);
    expect(v.getUint16(HDR.bootFlag, true)).toBe(0xaa55);
    expect(v.getUint32(HDR.header, true)).toBe(0x53726448);
    expect(v.getUint16(HDR.version, true)).toBe(0x20f);
    expect(zp[HDR.typeOfLoader]).toBe(0xff);
    expect(zp[HDR.loadflags] & 0x81).toBe(0x81); // LOADED_HIGH | CAN_USE_HEAP
    expect(v.getUint16(HDR.heapEndPtr, true)).toBe(0xfe00);
    expect(v.getUint32(HDR.cmdLinePtr, true)).toBe(0x20000);
    expect(v.getUint32(HDR.cmdlineSize, true)).toBe(13);
    expect(v.getUint32(HDR.ramdiskImage, true)).toBe(0x3e00000);
    expect(v.getUint32(HDR.ramdiskSize, true)).toBe(12345);
    expect(zp[0x1e8]).toBe(3);
    expect(readE820(zp)).toEqual(e820Map(64 * MiB));
  });

  it("zero page for a bzImage: the file's setup header is copied, then patched", () => {
    const img = buildBzImage({ payload: Uint8Array.of(0x02, 0x21, 0x4c, 0x18), cmdlineSize: 511 });
    const hdr = img.subarray(0x1f1, 0x26c);
    const zp = buildZeroPage({ memSize: 64 * MiB, cmdlineAddr: 0x20000, cmdlineSize: 5, setupHeader: hdr });
    const v = new DataView(zp.buffer);
    expect(zp[HDR.setupSects]).toBe(4);
    expect(v.getUint32(HDR.payloadLength, true)).toBe(4);
    expect(v.getUint16(HDR.xloadflags, true)).toBe(0x7f);
    expect(zp[HDR.typeOfLoader]).toBe(0xff);
    expect(v.getUint32(HDR.ramdiskImage, true)).toBe(0);
  });

  it('initrd: page aligned at the top of RAM, below initrd_addr_max, above the kernel', () => {
    expect(placeInitrd(5000, 256 * MiB, 0x7fffffff, 0x3e00000)).toBe(256 * MiB - 0x2000);
    expect(placeInitrd(0x1000, 256 * MiB, 0x37ffffff, 0x3e00000)).toBe(256 * MiB - 0x1000);
    expect(placeInitrd(100, 256 * MiB, 0x07ffffff, 0x3e00000)).toBe(128 * MiB - 0x1000);
    const tooBig = bootError(() => placeInitrd(60 * MiB, 64 * MiB, 0x7fffffff, 0x1000000));
    expect(tooBig.code).toBe('ERR_KVM_BAD_INITRD');
    expect(tooBig.detail).toMatch(/62914560 bytes do not fit between the kernel's end \(0x1000000\) and 0x4000000/);
    expect(bootError(() => placeInitrd(0, 64 * MiB, 0x7fffffff, 0x1000000)).detail).toBe('the initrd is empty');
  });

  it('page tables identity-map 0–4 GiB with 2 MiB pages', () => {
    const pt = identityPageTables();
    expect(new DataView(pt.pml4.buffer).getBigUint64(0, true)).toBe(0xa003n);
    const pdpt = new DataView(pt.pdpt.buffer);
    expect([0, 1, 2, 3, 4].map((i) => pdpt.getBigUint64(8 * i, true))).toEqual([
      0xb003n,
      0xc003n,
      0xd003n,
      0xe003n,
      0n,
    ]);
    const pd = new DataView(pt.pd.buffer);
    expect(pd.getBigUint64(0, true)).toBe(0x83n);
    expect(pd.getBigUint64(8, true)).toBe(0x200083n);
    expect(pd.getBigUint64(8 * 2047, true)).toBe(0xffe00083n);
  });

  it('segments decoded from the GDT, and long-mode sregs', () => {
    expect(segmentFromGdt(GDT_ENTRIES[2], 0x10)).toEqual({
      base: 0n,
      limit: 0xffffffff,
      selector: 0x10,
      type: 0xb,
      present: 1,
      dpl: 0,
      db: 0,
      s: 1,
      l: 1,
      g: 1,
      avl: 0,
      unusable: 0,
    });
    expect(segmentFromGdt(GDT_ENTRIES[3], 0x18)).toMatchObject({ type: 3, db: 1, l: 0, s: 1 });
    expect(segmentFromGdt(GDT_ENTRIES[4], 0x20)).toMatchObject({ type: 0xb, s: 0, present: 1 });
  });
});

describe('createLinuxMachine on the mock', () => {
  let m: LinuxMachine | undefined;
  let kvm: Kvm;
  beforeEach(() => {
    kvm = new Kvm({ backend: new MockBackend() });
  });
  afterEach(() => {
    m?.close();
    m = undefined;
    kvm.close();
  });

  const kernel = () =>
    buildElf({
      entry: 0xffffffff81000000n,
      segments: [{ paddr: 0x1000000, vaddr: 0xffffffff81000000n, data: Uint8Array.of(0xf4, 1, 2, 3), memsz: 0x3000 }],
    });

  it('lays out kernel, zero page, cmdline, initrd, GDT and page tables in guest memory', () => {
    const initrd = new Uint8Array(10_000).fill(7);
    m = createLinuxMachine(kvm, { kernel: kernel(), initrd, cmdline: 'console=ttyS0 panic=-1', memSize: 64 * MiB });
    const mem = m.vm.guestMemory;
    expect(m.boot).toEqual({
      kind: 'elf',
      entry: 0x1000000,
      zeroPage: 0x7000,
      cmdline: { addr: 0x20000, size: 22 },
      initrd: { addr: 64 * MiB - 0x3000, size: 10_000 },
      kernel: { low: 0x1000000, high: 0x1003000 },
      e820: e820Map(64 * MiB),
    });
    expect(Array.from(mem.read(0x1000000n, 4))).toEqual([0xf4, 1, 2, 3]);
    expect(Buffer.from(mem.read(0x20000n, 23)).toString('latin1')).toBe('console=ttyS0 panic=-1\0');
    expect(mem.read(BigInt(64 * MiB - 0x3000), 10_000).every((b) => b === 7)).toBe(true);
    const zp = mem.read(0x7000n, 4096);
    const v = new DataView(zp.buffer);
    expect(v.getUint32(HDR.cmdLinePtr, true)).toBe(0x20000);
    expect(v.getUint32(HDR.ramdiskImage, true)).toBe(64 * MiB - 0x3000);
    expect(v.getUint32(HDR.ramdiskSize, true)).toBe(10_000);
    expect(readE820(zp)).toEqual(e820Map(64 * MiB));
    expect(new DataView(mem.read(0x500n, 40).buffer).getBigUint64(16, true)).toBe(0x00af9b000000ffffn);
    expect(new DataView(mem.read(0x9000n, 8).buffer).getBigUint64(0, true)).toBe(0xa003n);
  });

  it('vCPU 0 enters in long mode: sregs, RIP = entry, RSI = zero page, CPUID set, LAPIC virtual wire', () => {
    m = createLinuxMachine(kvm, { kernel: kernel(), cmdline: '', memSize: 32 * MiB });
    const s = m.vcpu.getSregs();
    expect({ cr0: s.cr0 & 0x8000_0033n, cr3: s.cr3, cr4: s.cr4, efer: s.efer & 0x500n }).toEqual({
      cr0: 0x8000_0033n,
      cr3: 0x9000n,
      cr4: 0x20n,
      efer: 0x500n,
    });
    expect(s.cs).toMatchObject({ selector: 0x10, l: 1, db: 0, type: 0xb, present: 1, s: 1 });
    for (const seg of [s.ds, s.es, s.fs, s.gs, s.ss])
      expect(seg).toMatchObject({ selector: 0x18, type: 3, present: 1 });
    expect(s.tr).toMatchObject({ selector: 0x20, type: 0xb, s: 0 });
    expect(s.gdt).toEqual({ base: 0x500n, limit: 39 });
    const r = m.vcpu.getRegs();
    expect({ rip: r.rip, rsi: r.rsi, rsp: r.rsp, rflags: r.rflags }).toEqual({
      rip: 0x1000000n,
      rsi: 0x7000n,
      rsp: 0x8ff0n,
      rflags: 2n,
    });
    const cpuid = m.vcpu.getCpuid2(256);
    expect(cpuid.length).toBe(kvm.getSupportedCpuid(256).length);
    expect(cpuid.entries.find((e) => e.function === 1)!.ebx >>> 24).toBe(0);
    const lapic = new DataView(m.vcpu.getLapic().regs.buffer);
    expect((lapic.getUint32(0x350, true) >> 8) & 7).toBe(7); // LVT0 ExtINT
    expect((lapic.getUint32(0x360, true) >> 8) & 7).toBe(4); // LVT1 NMI
    expect(m.vm.getPit2().channels).toHaveLength(3);
  });

  it('longModeSregs keeps unrelated fields', () => {
    m = createLinuxMachine(kvm, { kernel: kernel(), memSize: 32 * MiB });
    const before = m.vcpu.getSregs();
    const after = longModeSregs({ ...before, apicBase: 0xfee00900n });
    expect(after.apicBase).toBe(0xfee00900n);
    expect(after.cr3).toBe(BigInt(BOOT_LAYOUT.pml4));
  });

  it('bad kernel, bad initrd, long cmdline: clear errors and no VM left behind', () => {
    const backend = new MockBackend();
    const k2 = new Kvm({ backend });
    const bad = bootError(() => createLinuxMachine(k2, { kernel: Uint8Array.of(1, 2, 3, 4) }));
    expect(bad.code).toBe('ERR_KVM_BAD_KERNEL');
    const tooBig = bootError(() =>
      createLinuxMachine(k2, { kernel: kernel(), initrd: new Uint8Array(40 * MiB), memSize: 32 * MiB }),
    );
    expect(tooBig.code).toBe('ERR_KVM_BAD_INITRD');
    expect(tooBig.message).toMatch(/^bad initrd image: /);
    expect(bootError(() => createLinuxMachine(k2, { kernel: kernel(), initrd: new Uint8Array(0) })).detail).toBe(
      'the initrd is empty',
    );
    const high = buildElf({
      entry: 0x1000000n,
      segments: [{ paddr: 0x1000000, data: Uint8Array.of(0xf4), memsz: 40 * MiB }],
    });
    expect(bootError(() => createLinuxMachine(k2, { kernel: high, memSize: 32 * MiB })).detail).toMatch(
      /beyond 32 MiB of guest RAM/,
    );
    expectCode(
      () => createLinuxMachine(k2, { kernel: kernel(), cmdline: 'x'.repeat(2048) }),
      'RangeError',
      'ERR_OUT_OF_RANGE',
    );
    expectCode(() => createLinuxMachine(k2, { kernel: 'vmlinux' as never }), 'TypeError', 'ERR_INVALID_ARG_VALUE');
    expectCode(() => createLinuxMachine({} as never, { kernel: kernel() }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(
      () => createLinuxMachine(k2, { kernel: kernel(), irqchip: 'yes' as never }),
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
    );
    expectCode(() => prepareKernel(kernel(), { allowDecompressor: 1 as never }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(() => prepareKernel(kernel(), null as never), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    // a NUL would cut the kernel's line short; a character beyond Latin-1 would become another byte
    for (const cmdline of ['console=ttyS0\0 init=/bin/sh', 'console=ttyS0 \u2603']) {
      expectCode(() => createLinuxMachine(k2, { kernel: kernel(), cmdline }), 'TypeError', 'ERR_INVALID_ARG_VALUE');
    }
    // every VM created on the way was closed again: only the /dev/kvm fd remains open
    expect(backend.openFds).toHaveLength(1);
    k2.close();
  });
});

describeKvm('createLinuxMachine boots a crafted 64-bit ELF kernel', () => {
  let m: LinuxMachine | undefined;
  let kvm: Kvm;
  afterEach(() => {
    m?.close();
    m = undefined;
    kvm?.close();
  });

  function runToHlt(machine: LinuxMachine, max = 50) {
    const out: number[] = [];
    const kinds: string[] = [];
    const stats = emulationFallbackStats();
    for (let i = 0; i < max; i++) {
      const e = machine.vcpu.run();
      kinds.push(e.kind);
      if (e.kind === 'IoOut' && e.port === 0x3f8) out.push(...e.data);
      else if (e.kind === 'InternalError') handleEmulationFailure(machine.vcpu, e, stats);
      else if (e.kind === 'Hlt') return { out, kinds, stats };
      else throw new Error(`unexpected exit ${e.kind}`);
    }
    throw new Error(`no Hlt after ${max} exits: ${kinds.join(' ')}`);
  }

  it("prints 'K', reads \"HdrS\" through RSI, survives fwait and int3 (#BP handler prints 'B'), then Hlt", () => {
    kvm = new Kvm();
    m = createLinuxMachine(kvm, { kernel: tinyKernel(), cmdline: 'tiny', memSize: 32 * MiB, irqchip: false });
    const { out, stats } = runToHlt(m);
    expect(Buffer.from(out).toString('latin1')).toBe('KHdrSB!');
    const r = m.vcpu.getRegs();
    expect(r.rip).toBe(0x20001bn); // after the hlt
    expect(r.rsi).toBe(0x7000n);
    // On an emulating host (PVM) fwait and int3 come back as emulation failures, each fallback once;
    // with VMX/SVM they run natively and no fallback runs.
    expect(stats).toEqual(
      emulatingHost ? { fwait: 1, int3: 1, clac: 0, stac: 0 } : { fwait: 0, int3: 0, clac: 0, stac: 0 },
    );
  });

  it('with the in-kernel irqchip, PIT and LAPIC (the Linux configuration) the same kernel runs to its last output', () => {
    kvm = new Kvm();
    m = createLinuxMachine(kvm, { kernel: tinyKernel(), cmdline: 'tiny', memSize: 32 * MiB });
    const lapic = new DataView(m.vcpu.getLapic().regs.buffer);
    expect((lapic.getUint32(0x350, true) >> 8) & 7).toBe(7);
    expect((lapic.getUint32(0x360, true) >> 8) & 7).toBe(4);
    const out: number[] = [];
    while (out.at(-1) !== 0x21) {
      const e = m.vcpu.run();
      if (e.kind === 'IoOut') out.push(...e.data);
      else if (e.kind === 'InternalError') handleEmulationFailure(m.vcpu, e);
      else throw new Error(`unexpected exit ${e.kind}`);
    }
    // (the final hlt now waits for an interrupt inside KVM instead of exiting: not run here)
    expect(Buffer.from(out).toString('latin1')).toBe('KHdrSB!');
    expect(m.vm.getPit2().channels).toHaveLength(3);
  });
});

describe('prepareKernel as a building block (your own layout)', () => {
  const image = () =>
    buildElf({
      entry: 0x200000n,
      segments: [{ paddr: 0x200000, data: Uint8Array.of(0xf4, 0xeb, 0xfd), memsz: 0x2000 }],
    });

  it('loads an ELF kernel into any memory with write(gpa, bytes), BSS zeroed, and tells its entry and extent', () => {
    const k = prepareKernel(image());
    expect(k).toMatchObject({ kind: 'elf', entry: 0x200000, low: 0x200000, high: 0x202000 });
    const writes = new Map<bigint, Uint8Array>();
    k.load({ write: (gpa, data) => writes.set(gpa, Uint8Array.from(data)) }, 16 << 20);
    const bytes = [...writes.entries()].sort(([a], [b]) => Number(a - b));
    expect(bytes[0]).toEqual([0x200000n, Uint8Array.of(0xf4, 0xeb, 0xfd)]);
    // the rest of the segment (BSS) is written as zeros
    const zeroed = bytes.slice(1).reduce((n, [, d]) => n + d.length, 0);
    expect(zeroed).toBe(0x2000 - 3);
    expect(bytes.slice(1).every(([, d]) => d.every((b) => b === 0))).toBe(true);
  });

  it('load() checks its arguments and refuses a kernel that does not fit', () => {
    const k = prepareKernel(image());
    expectCode(() => k.load(null as never, 16 << 20), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(() => k.load({} as never, 16 << 20), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(() => k.load({ write: () => undefined }, -1), 'RangeError', 'ERR_OUT_OF_RANGE');
    expect(() => k.load({ write: () => undefined }, 0x201000)).toThrow(
      expect.objectContaining({ code: 'ERR_KVM_BAD_KERNEL', message: expect.stringMatching(/does not fit/) }),
    );
  });
});
