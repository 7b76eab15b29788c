/**
 * Pausing a vCPU that runs in a worker: it leaves KVM_RUN between two exits, this thread may use
 * its ioctls directly while it is paused (state read, changed, saved), and it resumes where it
 * stopped, with what was changed (issue 11's pause and resume, one vCPU).
 */
import { join } from 'node:path';
import { firstValueFrom, filter } from 'rxjs';
import { VcpuRuntime } from '../../src/runtime/pool';
import { saveVcpuState } from '../../src/vmm/vcpu-state';
import { describeKvm } from '../helpers/kvm';
import { realModeGuest } from '../helpers/real-mode-guest';

// inc ax; out 0x10, al; jmp back to the inc: an OUT per iteration, AX counting.
const COUNTER = [0x40, 0xe6, 0x10, 0xeb, 0xfb];
const PIPELINE = join(__dirname, '../fixtures/count-pipeline.ts');

describeKvm('VcpuRun.pause() and resume()', () => {
  let runtime: VcpuRuntime;
  beforeAll(() => {
    runtime = new VcpuRuntime({ maxVcpus: 1 });
  });
  afterAll(async () => {
    await runtime.close();
  });

  it('pauses between exits; the paused vCPU is this thread’s to read and change; it resumes with the change', async () => {
    const guest = realModeGuest(COUNTER);
    const run = runtime.start(guest.vcpu, { pipeline: PIPELINE });
    try {
      const counted = firstValueFrom(run.events$.pipe(filter((e) => e.channel === 'count')));
      await run.call('getRegs'); // the worker is in its run loop
      expect(() => guest.vcpu.getRegs()).toThrow(/ERR_KVM_VCPU_RUNNING|is running in/);
      await run.pause();
      expect(run.paused).toBe(true);
      const regs = guest.vcpu.getRegs(); // direct: the vCPU is out of KVM_RUN
      expect(regs.rip >= 0x1000n && regs.rip < 0x1005n).toBe(true);
      const state = saveVcpuState(guest.kvm, guest.vcpu);
      expect(state.regs).toEqual(regs);
      // Still paused after the event loop has turned: the guest does not run.
      await new Promise((r) => setImmediate(r));
      expect(guest.vcpu.getRegs()).toEqual(regs);
      guest.vcpu.setRegs({ ...regs, rax: 0x3e8n }); // 1000: the next OUT carries 1001 & 0xff = 0xe9
      run.resume();
      expect(run.paused).toBe(false);
      // A call runs between exits, possibly before the guest's next instruction: ask until the guest
      // has gone round its loop (bounded; each call kicks it out of KVM_RUN and lets it go on).
      let rax = 0x3e8n;
      for (let i = 0; i < 10_000 && rax <= 0x3e8n; i++) rax = (await run.call('getRegs')).rax;
      expect(rax > 0x3e8n).toBe(true); // it went on counting from the value set while paused
      await run.pause(); // a second pause works too
      run.resume();
      await run.stop();
      const { data } = await counted;
      expect((data as { values: number[] }).values).toContain(0xe9);
      await expect(run.pause()).rejects.toMatchObject({ code: 'ERR_KVM_CLOSED' });
    } finally {
      await run.stop();
      guest.close();
    }
  });
});
