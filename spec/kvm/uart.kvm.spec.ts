/**
 * The 16550A model under a real vCPU: a real-mode guest polls LSR.THRE, writes "Hi" to THR, then
 * polls LSR.DR and reads the byte the test puts on the line, all through runInThread.
 */
import { Observable } from 'rxjs';
import { runInThread } from '../../src/runtime/in-thread';
import { legacyPc } from '../../src/devices/legacy-pc';
import { uart16550 } from '../../src/devices/uart16550';
import { untilHalt } from '../../src/runtime/operators/untilHalt';
import type { VcpuExit } from '../../src/wrappers/vcpu-exit';
import type { VcpuFd } from '../../src/wrappers/vcpu-fd';
import { describeKvm } from '../helpers/kvm';
import { realModeGuest, type RealModeGuest } from '../helpers/real-mode-guest';

// prettier-ignore
const HI_THEN_READ = [
  0xba, 0xfd, 0x03, //  0: mov $0x3fd, %dx      (LSR)
  0xec, //              3: in (%dx), %al
  0xa8, 0x20, //        4: test $0x20, %al      (THRE)
  0x74, 0xfb, //        6: jz 3
  0xba, 0xf8, 0x03, //  8: mov $0x3f8, %dx      (THR)
  0xb0, 0x48, //        b: mov $'H', %al
  0xee, //              d: out %al, (%dx)
  0xba, 0xfd, 0x03, //  e: mov $0x3fd, %dx
  0xec, //             11: in (%dx), %al
  0xa8, 0x20, //       12: test $0x20, %al
  0x74, 0xfb, //       14: jz 11
  0xba, 0xf8, 0x03, // 16: mov $0x3f8, %dx
  0xb0, 0x69, //       19: mov $'i', %al
  0xee, //             1b: out %al, (%dx)
  0xba, 0xfd, 0x03, // 1c: mov $0x3fd, %dx
  0xec, //             1f: in (%dx), %al
  0xa8, 0x01, //       20: test $0x01, %al      (DR)
  0x74, 0xfb, //       22: jz 1f
  0xba, 0xf8, 0x03, // 24: mov $0x3f8, %dx      (RBR)
  0xec, //             27: in (%dx), %al
  0x88, 0xc3, //       28: mov %al, %bl
  0xf4, //             2a: hlt
];

// prettier-ignore
/** At 0x1000: programs the in-kernel 8259 (IRQ 0-7 -> vectors 8-15, only IRQ 4 unmasked), enables
 * the UART's received-data interrupt and OUT2, then halts until the ISR has run; echoes the byte
 * the ISR read and resets the machine through the i8042. */
const IRQ_MAIN = [
  0xfa, //             0: cli
  0xb0, 0x11, 0xe6, 0x20, // mov $0x11, %al; out %al, $0x20   (ICW1)
  0xb0, 0x08, 0xe6, 0x21, // mov $0x08, %al; out %al, $0x21   (ICW2: vector base 8)
  0xb0, 0x04, 0xe6, 0x21, // mov $0x04, %al; out %al, $0x21   (ICW3)
  0xb0, 0x01, 0xe6, 0x21, // mov $0x01, %al; out %al, $0x21   (ICW4: 8086 mode)
  0xb0, 0xef, 0xe6, 0x21, // mov $0xef, %al; out %al, $0x21   (OCW1: unmask IRQ 4)
  0xba, 0xf9, 0x03, 0xb0, 0x01, 0xee, // mov $0x3f9, %dx; mov $1, %al; out %al, (%dx)   (IER = RDI)
  0xba, 0xfc, 0x03, 0xb0, 0x08, 0xee, // mov $0x3fc, %dx; mov $8, %al; out %al, (%dx)   (MCR = OUT2)
  0xfb, //            21: sti
  0xf4, //            22: hlt                    (in-kernel: no Hlt exit)
  0x80, 0x3e, 0x00, 0x20, 0x00, // 23: cmpb $0, 0x2000
  0x74, 0xf8, //      28: je 22
  0xa0, 0x01, 0x20, // 2a: mov 0x2001, %al
  0xba, 0xf8, 0x03, // 2d: mov $0x3f8, %dx
  0xee, //            30: out %al, (%dx)         (echo)
  0xb0, 0xfe, 0xe6, 0x64, // 31: mov $0xfe, %al; out %al, $0x64   (i8042 reset)
  0xeb, 0xfe, //      35: jmp .
];

// prettier-ignore
/** At 0x1100: the IRQ 4 handler (vector 12). */
const IRQ_ISR = [
  0x50, 0x52, //            push %ax; push %dx
  0xba, 0xfa, 0x03, 0xec, // mov $0x3fa, %dx; in (%dx), %al   (IIR)
  0xa2, 0x02, 0x20, //      mov %al, 0x2002
  0xba, 0xf8, 0x03, 0xec, // mov $0x3f8, %dx; in (%dx), %al   (RBR)
  0xa2, 0x01, 0x20, //      mov %al, 0x2001
  0xc6, 0x06, 0x00, 0x20, 0x01, // movb $1, 0x2000
  0xb0, 0x20, 0xe6, 0x20, // mov $0x20, %al; out %al, $0x20   (EOI)
  0x5a, 0x58, //            pop %dx; pop %ax
  0xcf, //                  iret
];

describeKvm('16550A UART model', () => {
  let machine: RealModeGuest | undefined;
  afterEach(() => {
    machine?.close();
    machine = undefined;
  });

  /** A real-mode guest at 0x1000 (slot 0x1000–0x5000), cs = 0, rsp = 0x4000. */
  function guest(code: number[]): VcpuFd {
    machine = realModeGuest(code, { regs: { rsp: 0x4000n } });
    return machine.vcpu;
  }

  it('transmits "Hi" after polling THRE and receives a byte injected once the guest polls DR', async () => {
    const vcpu = guest(HI_THEN_READ);
    const com1 = uart16550();
    const tx: string[] = [];
    const kinds: string[] = [];
    let drPolls = 0;
    com1.device.output$.subscribe((b) => tx.push(Buffer.from(b).toString('latin1')));
    const outcome = await runInThread(vcpu, (exits$) =>
      new Observable<VcpuExit>((sub) =>
        exits$.subscribe({
          next: (e) => {
            kinds.push(e.kind);
            // After "Hi", let the guest poll DR a few times, then put 'Z' on the line.
            if (tx.join('') === 'Hi' && e.kind === 'IoIn' && e.port === 0x3fd && ++drPolls === 3)
              com1.device.input('Z');
            sub.next(e);
          },
          error: (err: unknown) => sub.error(err),
          complete: () => sub.complete(),
        }),
      ).pipe(com1, untilHalt()),
    );
    expect(outcome).toMatchObject({ reason: 'completed', lastExit: 'Hlt' });
    expect(tx).toEqual(['H', 'i']);
    expect(vcpu.getRegs().rbx & 0xffn).toBe(0x5an); // 'Z'
    // LSR reads THRE at once: one poll before each THR write. The DR loop spun until the third
    // poll, which found the byte injected just before the UART answered it.
    expect(kinds).toEqual(['IoIn', 'IoOut', 'IoIn', 'IoOut', 'IoIn', 'IoIn', 'IoIn', 'IoIn', 'Hlt']);
    expect(drPolls).toBe(3);
    expect(com1.device.rxCount).toBe(0);
  });

  it('runs the same guest through legacyPc, with the byte queued before the run and TX forwarded like ctx.emit', async () => {
    const vcpu = guest(HI_THEN_READ);
    const emitted: Array<[string, unknown]> = [];
    const outcome = await runInThread(
      vcpu,
      (exits$, ctx) => {
        const pc = legacyPc({ com1: { onTx: (bytes) => ctx.emit('com1', bytes) } });
        pc.device.com1!.input([0x7e]);
        return exits$.pipe(pc, untilHalt());
      },
      { onEmit: (channel, data) => emitted.push([channel, data]) },
    );
    expect(outcome).toEqual({ reason: 'completed', exits: 7, lastExit: 'Hlt' }); // LSR, THR, LSR, THR, LSR (DR set), RBR, HLT
    expect(emitted).toEqual([
      ['com1', Uint8Array.of(0x48)],
      ['com1', Uint8Array.of(0x69)],
    ]);
    expect(vcpu.getRegs().rbx & 0xffn).toBe(0x7en);
  });
  it('interrupts the guest through the in-kernel PIC (IRQ 4) when a byte arrives, then ends at an i8042 reset', async () => {
    machine = realModeGuest(IRQ_MAIN, {
      guestPhysAddr: 0n,
      codeAt: 0x1000n,
      memSize: 0x5000,
      regs: { rsp: 0x4000n },
      beforeVcpu: (v) => v.createIrqChip(),
    });
    const { vm, mem, vcpu } = machine;
    mem.write(0x1100, IRQ_ISR);
    mem.write(12 * 4, [0x00, 0x11, 0x00, 0x00]); // IVT[12] = 0000:1100

    const levels: boolean[] = [];
    const tx: number[] = [];
    const pc = legacyPc({
      com1: { irq: (level) => (levels.push(level), vm.setIrqLine(4, level)), onTx: (b) => tx.push(...b) },
    });
    const outcome = await runInThread(vcpu, (exits$) =>
      new Observable<VcpuExit>((sub) =>
        exits$.subscribe({
          next: (e) => {
            // The byte arrives as the guest sets MCR, before it enables interrupts.
            if (e.kind === 'IoOut' && e.port === 0x3fc) pc.device.com1!.input('Q');
            sub.next(e);
          },
          error: (err: unknown) => sub.error(err),
          complete: () => sub.complete(),
        }),
      ).pipe(pc),
    );
    expect(outcome).toMatchObject({ reason: 'completed', lastExit: 'IoOut' });
    expect(pc.device.i8042!.resetRequested).toBe(true);
    expect(levels).toEqual([true, false]); // raised by the byte, lowered by the ISR's RBR read
    expect(mem.bytes[0x2002]).toBe(0x04); // IIR in the ISR: received data available, FIFO off
    expect(mem.bytes[0x2001]).toBe(0x51); // 'Q'
    expect(tx).toEqual([0x51]); // echoed
  });
});
