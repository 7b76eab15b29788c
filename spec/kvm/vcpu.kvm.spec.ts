/**
 * vCPU features that need a running guest, on the real kernel: single-step debug exits,
 * userspace MSR exits, hypercalls, coalesced PIO/MMIO, sync regs through a run, immediate_exit,
 * triple fault → Shutdown, emulation failure → InternalError, and state round trips. Where the
 * vendor module decides (PVM, SVM, VMX), `kvmVendor` says which answer to expect.
 * Every guest is a few bytes of real-mode code at 0x1000 (assembly in comments).
 */
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { errnoOf } from '../../src/abi/errors';
import { ioctls, kvm as K } from '../../src/abi/kvm-constants';
import { nativeBackend } from '../../src/backend/native';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import { SyncReg, type VcpuFd } from '../../src/wrappers/vcpu-fd';
import type { VmFd } from '../../src/wrappers/vm-fd';
import { describeKvm, expectKvmError, kvmVendor } from '../helpers/kvm';
import { realModeGuest } from '../helpers/real-mode-guest';

describeKvm('VcpuFd x86 (guests)', () => {
  let kvm: Kvm;
  let vm: VmFd;
  let mem: GuestMemory;
  let vcpu: VcpuFd;
  afterEach(() => {
    vm?.close();
    mem?.close();
    kvm?.close();
  });

  /** A real-mode guest at 0x1000 (slot 0x1000–0x5000), cs = 0, rax = 2, rbx = 3, rsp = 0x4000. */
  function guest(code: number[], beforeVcpu?: (vm: VmFd) => void): VcpuFd {
    ({ kvm, vm, mem, vcpu } = realModeGuest(code, { regs: { rax: 2n, rbx: 3n, rsp: 0x4000n }, beforeVcpu }));
    return vcpu;
  }

  it('single-steps: Debug exits at 0x1003, 0x1005, 0x1007 with exception 1, then IoOut', () => {
    guest([
      0xba,
      0xf8,
      0x03, // mov $0x3f8, %dx
      0x00,
      0xd8, //       add %bl, %al
      0x04,
      0x30, //       add $'0', %al
      0xee, //             out %al, (%dx)
      0xf4, //             hlt
    ]);
    vcpu.setGuestDebug({ control: K.KVM_GUESTDBG_ENABLE | K.KVM_GUESTDBG_SINGLESTEP });
    const pcs: bigint[] = [];
    for (let i = 0; i < 3; i++) {
      const e = vcpu.run();
      if (e.kind !== 'Debug') throw new Error(`expected Debug, got ${e.kind}`);
      expect(e.exception).toBe(1);
      expect(e.dr6 & 0x4000n).toBe(0x4000n); // BS: single step (the rest of DR6/DR7 varies by host)
      pcs.push(e.pc);
    }
    expect(pcs).toEqual([0x1003n, 0x1005n, 0x1007n]);
    const out = vcpu.run();
    expect(out).toMatchObject({ kind: 'IoOut', port: 0x3f8 });
    expect(Array.from((out as { data: Uint8Array }).data)).toEqual([0x35]);
    vcpu.setGuestDebug({ control: 0 });
    expect(vcpu.run().kind).toBe('Hlt');
  });

  it('exits to userspace on rdmsr/wrmsr of an unknown MSR; the rdmsr answer reaches EDX:EAX', () => {
    guest(
      [
        0x66,
        0xb9,
        0x00,
        0x4f,
        0x4f,
        0x47, // mov $0x474f4f00, %ecx
        0x0f,
        0x32, //                         rdmsr
        0x66,
        0x89,
        0xc6, //                   mov %eax, %esi
        0x66,
        0x89,
        0xd7, //                   mov %edx, %edi
        0x66,
        0xb8,
        0xef,
        0xbe,
        0xad,
        0xde, // mov $0xdeadbeef, %eax
        0x66,
        0xba,
        0xee,
        0xff,
        0xc0,
        0xd0, // mov $0xd0c0ffee, %edx
        0x0f,
        0x30, //                         wrmsr
        0xf4, //                               hlt
      ],
      (v) => v.enableCap({ cap: K.KVM_CAP_X86_USER_SPACE_MSR, args: [BigInt(K.KVM_MSR_EXIT_REASON_UNKNOWN)] }),
    );
    const rd = vcpu.run();
    expect(rd).toMatchObject({ kind: 'X86Rdmsr', reason: K.KVM_MSR_EXIT_REASON_UNKNOWN, index: 0x474f4f00 });
    if (rd.kind !== 'X86Rdmsr') return;
    rd.data = 0x1122334455667788n;
    const wr = vcpu.run();
    expect(wr).toMatchObject({
      kind: 'X86Wrmsr',
      reason: K.KVM_MSR_EXIT_REASON_UNKNOWN,
      index: 0x474f4f00,
      data: 0xd0c0ffeedeadbeefn,
    });
    const regs = vcpu.getRegs();
    expect({ esi: regs.rsi & 0xffff_ffffn, edi: regs.rdi & 0xffff_ffffn }).toEqual({
      esi: 0x55667788n,
      edi: 0x11223344n,
    });
    expect(vcpu.run().kind).toBe('Hlt');
  });

  it('vmcall with KVM_CAP_EXIT_HYPERCALL: a Hypercall exit with VMX/SVM; on PVM none comes, a kick ends KVM_RUN at the vmcall', async () => {
    guest(
      // prettier-ignore
      [
        0x66, 0xb8, 0x0c, 0x00, 0x00, 0x00, // mov $12, %eax        (KVM_HC_MAP_GPA_RANGE)
        0x66, 0xbb, 0x00, 0x40, 0x23, 0x01, // mov $0x1234000, %ebx
        0x66, 0xb9, 0x01, 0x00, 0x00, 0x00, // mov $1, %ecx
        0x66, 0x31, 0xd2, //                   xor %edx, %edx
        0xc6, 0x06, 0x00, 0x20, 0x01, //       movb $1, (0x2000)    (reached the vmcall)
        0x0f, 0x01, 0xc1, //                   vmcall               @ 0x101a
        0xf4, //                               hlt
      ],
      (v) => v.enableCap({ cap: K.KVM_CAP_EXIT_HYPERCALL, args: [1n << 12n] }),
    );
    if (kvmVendor !== 'pvm') {
      // KVM's documented behaviour: the hypercall exits to userspace with its number and arguments
      const e = vcpu.run();
      expect(e).toMatchObject({ kind: 'Hypercall', nr: 12n });
      expect((e as { args: bigint[] }).args.slice(0, 3)).toEqual([0x1234000n, 1n, 0n]);
      return;
    }
    // PVM: run KVM_RUN on a worker thread and kick it (the guest would otherwise never come back).
    const run = vcpu.getKvmRun();
    const worker = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const addon = require('node-gyp-build')(workerData.root);
       class E extends Error { constructor(errno) { super(String(errno)); this.errno = -Math.abs(errno); } }
       addon.setErrorClass(E);
       addon.kickSignal();
       parentPort.postMessage({ thread: addon.threadSelf() });
       let errno = 0;
       try { addon.ioctl(workerData.fd, workerData.KVM_RUN); } catch (e) { errno = e.errno; }
       parentPort.postMessage({ errno });`,
      { eval: true, workerData: { root: join(__dirname, '../..'), fd: vcpu.asRawFd(), KVM_RUN: ioctls.KVM_RUN } },
    );
    const messages: Array<{ thread?: bigint; errno?: number }> = [];
    const done = new Promise<void>((resolve, reject) => {
      worker.on('message', (m: { thread?: bigint; errno?: number }) => {
        messages.push(m);
        if (m.errno !== undefined) resolve();
      });
      worker.on('error', reject);
    });
    // the guest's store before the vmcall: from here on it is at the vmcall, inside KVM_RUN
    while (messages.length === 0 || mem.bytes[0x1000] !== 1) await new Promise((r) => setTimeout(r, 2));
    nativeBackend().kick(messages[0].thread!, run.address);
    await done;
    await worker.terminate();
    run.immediateExit = 0;
    expect(messages[1].errno).toBe(-errnoOf('EINTR')); // the kick ended KVM_RUN, no Hypercall exit did
    const regs = vcpu.getRegs();
    expect({ rip: regs.rip, rax: regs.rax }).toEqual({ rip: 0x101an, rax: 12n }); // stuck on the vmcall
  });

  it('coalesces PIO: Hlt instead of IoOut, the ring holds the write; after unregister IoOut returns', () => {
    guest([
      0xb0,
      0x39, // mov $0x39, %al
      0xe6,
      0x2c, // out %al, $0x2c
      0xf4, //       hlt
      0xb0,
      0x39, // mov $0x39, %al
      0xe6,
      0x2c, // out %al, $0x2c
      0xf4, //       hlt
    ]);
    vm.registerCoalescedMmio({ kind: 'pio', addr: 0x2cn }, 1);
    vcpu.mapCoalescedMmioRing();
    expect(vcpu.run().kind).toBe('Hlt');
    const e = vcpu.coalescedMmioRead();
    expect(e).toMatchObject({ physAddr: 0x2cn, len: 1, pio: 1 });
    expect(e!.data[0]).toBe(0x39);
    expect(vcpu.coalescedMmioRead()).toBeUndefined();
    vm.unregisterCoalescedMmio({ kind: 'pio', addr: 0x2cn }, 1);
    const out = vcpu.run();
    expect(out).toMatchObject({ kind: 'IoOut', port: 0x2c });
    expect(Array.from((out as { data: Uint8Array }).data)).toEqual([0x39]);
  });

  it('coalesces MMIO: a 16-bit store lands in the ring; after unregister MmioWrite returns', () => {
    guest([
      0xc7,
      0x06,
      0x24,
      0x01,
      0x39,
      0x00, // movw $0x39, 0x124
      0xf4, //                               hlt
      0xc7,
      0x06,
      0x24,
      0x01,
      0x39,
      0x00, // movw $0x39, 0x124
      0xf4, //                               hlt
    ]);
    vm.registerCoalescedMmio({ kind: 'mmio', addr: 0x124n }, 2);
    vcpu.mapCoalescedMmioRing();
    expect(vcpu.run().kind).toBe('Hlt');
    const e = vcpu.coalescedMmioRead();
    expect(e).toMatchObject({ physAddr: 0x124n, len: 2, pio: 0 });
    expect(Array.from(e!.data.subarray(0, 2))).toEqual([0x39, 0]);
    expect(vcpu.coalescedMmioRead()).toBeUndefined();
    vm.unregisterCoalescedMmio({ kind: 'mmio', addr: 0x124n }, 2);
    const w = vcpu.run();
    expect(w).toMatchObject({ kind: 'MmioWrite', addr: 0x124n });
    expect(Array.from((w as { data: Uint8Array }).data)).toEqual([0x39, 0]);
  });

  it('runs with sync regs: rax from s.regs, `inc eax; hlt` → 0x8001 in s.regs and getRegs; bad bits are EINVAL', () => {
    guest([
      0x66,
      0x40, // inc %eax
      0xf4, //       hlt
    ]);
    vcpu.getKvmRun().kvmValidRegs = 8n;
    expectKvmError(() => vcpu.run(), 'EINVAL', 'KVM_RUN');
    vcpu.getKvmRun().kvmValidRegs = 0n;
    // Start from the real register sets, so loading all three is a no-op except rax.
    vcpu.setSyncRegs({ regs: vcpu.getRegs(), sregs: vcpu.getSregs(), events: vcpu.getVcpuEvents() });
    vcpu.syncRegsMut((s) => {
      s.regs.rax = 0x8000n;
    });
    for (const r of [SyncReg.Register, SyncReg.SystemRegister, SyncReg.VcpuEvents]) {
      vcpu.setSyncValidReg(r);
      vcpu.setSyncDirtyReg(r);
    }
    expect(vcpu.run().kind).toBe('Hlt');
    const run = vcpu.getKvmRun();
    expect({ valid: run.kvmValidRegs, dirty: run.kvmDirtyRegs }).toEqual({ valid: 7n, dirty: 0n }); // the kernel cleared dirty
    expect(vcpu.syncRegs().regs.rax).toBe(0x8001n);
    expect(vcpu.getRegs().rax).toBe(0x8001n);
    expect(vcpu.syncRegs().regs.rip).toBe(vcpu.getRegs().rip);
    expect(vcpu.syncRegs().sregs.cs.base).toBe(0n);
  });

  it('immediate_exit: KVM_RUN fails with EINTR and the kernel leaves the flag set', () => {
    guest([0xf4]); // hlt
    expect(vcpu.getKvmRun().immediateExit).toBe(0);
    vcpu.setKvmImmediateExit(1);
    expectKvmError(() => vcpu.run(), 'EINTR', 'KVM_RUN');
    expect(vcpu.getKvmRun().immediateExit).toBe(1);
    expectKvmError(() => vcpu.run(), 'EINTR', 'KVM_RUN');
    vcpu.setKvmImmediateExit(0);
    expect(vcpu.run().kind).toBe('Hlt');
  });

  it('a triple fault (zero-limit IDT, then ud2) is a Shutdown exit', () => {
    guest([
      0x0f,
      0x01,
      0x1e,
      0x10,
      0x10, // lidt (0x1010)   -> limit 0, base 0
      0x0f,
      0x0b, //                   ud2             -> #UD -> #GP -> #DF -> triple fault
      0xf4, //                         hlt
    ]);
    expect(vcpu.run()).toEqual({ kind: 'Shutdown' });
    // VMX and PVM keep the state the vCPU stopped in; SVM INITs the vCPU after a shutdown (IDT limit 0xffff)
    expect(vcpu.getSregs().idt.limit).toBe(kvmVendor === 'svm' ? 0xffff : 0);
  });

  it('fetching code from unmapped memory is InternalError (emulation failure, suberror 1)', () => {
    guest([0xea, 0x00, 0x00, 0x00, 0x10]); // ljmp $0x1000, $0 -> 0x10000, outside every slot
    const e = vcpu.run();
    expect(e).toMatchObject({ kind: 'InternalError', suberror: K.KVM_INTERNAL_ERROR_EMULATION });
  });

  it('translateGva: identity with paging off; round trips of FPU, LAPIC 0x300, XCRs, debug regs, events, MP state, XSAVE, TSC', () => {
    kvm = new Kvm();
    vm = kvm.createVm();
    mem = GuestMemory.anonymous(0x1000);
    vm.backend.ioctl(vm.asRawFd(), ioctls.KVM_CREATE_IRQCHIP);
    vcpu = vm.createVcpu(0);
    expect(vcpu.translateGva(0x10000n)).toMatchObject({ physicalAddress: 0x10000n, valid: 1 });
    expect(vcpu.translateGva(0xffff_ffff_ffff_ffffn).valid).toBe(0);
    const fpu = { ...vcpu.getFpu(), fcw: 0x37f };
    vcpu.setFpu(fpu);
    expect(vcpu.getFpu()).toEqual(fpu);
    const lapic = vcpu.getLapic();
    new DataView(lapic.regs.buffer).setUint32(0x300, 2, true);
    vcpu.setLapic(lapic);
    expect(new DataView(vcpu.getLapic().regs.buffer).getUint32(0x300, true)).toBe(2);
    for (const [get, set] of [
      [() => vcpu.getXcrs(), (v: never) => vcpu.setXcrs(v)],
      [() => vcpu.getDebugRegs(), (v: never) => vcpu.setDebugRegs(v)],
      [() => vcpu.getVcpuEvents(), (v: never) => vcpu.setVcpuEvents(v)],
      [() => vcpu.getMpState(), (v: never) => vcpu.setMpState(v)],
      [() => vcpu.getXsave(), (v: never) => vcpu.setXsave(v)],
    ] as Array<[() => unknown, (v: never) => void]>) {
      const v = get();
      set(v as never);
      expect(get()).toEqual(v);
    }
    vcpu.setMpState({ mpState: K.KVM_MP_STATE_HALTED }); // allowed with the in-kernel LAPIC
    expect(vcpu.getMpState().mpState).toBe(K.KVM_MP_STATE_HALTED);
    const khz = vcpu.getTscKhz();
    vcpu.setTscKhz(khz);
    expect(vcpu.getTscKhz()).toBe(khz);
  });
});
