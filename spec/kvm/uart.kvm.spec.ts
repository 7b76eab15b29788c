/**
 * The 16550A model under a real vCPU: a real-mode guest polls LSR.THRE, writes "Hi" to THR, then
 * polls LSR.DR and reads the byte the test puts on the line, all through runInThread.
 */
import { Observable } from 'rxjs';
import { runInThread } from '../../src/observables/run-in-thread';
import { legacyPc } from '../../src/devices/legacy-pc';
import { uart16550 } from '../../src/devices/uart16550';
import { untilHalt } from '../../src/operators/untilHalt';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import type { VcpuExit } from '../../src/wrappers/vcpu-exit';
import type { VcpuFd } from '../../src/wrappers/vcpu-fd';
import type { VmFd } from '../../src/wrappers/vm-fd';
import { describeKvm } from '../helpers/kvm';

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

describeKvm('16550A UART model', () => {
  let kvm: Kvm;
  let vm: VmFd;
  let mem: GuestMemory;
  afterEach(() => {
    vm?.close();
    mem?.close();
    kvm?.close();
  });

  /** A real-mode guest at 0x1000 (slot 0x1000–0x5000), cs = 0. */
  function guest(code: number[]): VcpuFd {
    kvm = new Kvm();
    vm = kvm.createVm();
    mem = GuestMemory.anonymous(0x4000);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x1000n, memory: mem });
    mem.bytes.set(code);
    const vcpu = vm.createVcpu(0);
    const sregs = vcpu.getSregs();
    sregs.cs.base = 0n;
    sregs.cs.selector = 0;
    vcpu.setSregs(sregs);
    vcpu.setRegs({ ...vcpu.getRegs(), rip: 0x1000n, rax: 0n, rbx: 0n, rflags: 2n, rsp: 0x4000n });
    return vcpu;
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
            if (tx.join('') === 'Hi' && e.kind === 'IoIn' && e.port === 0x3fd && ++drPolls === 3) com1.device.input('Z');
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
});
