/**
 * The runtime under concurrency and at process exit, on the real kernel.
 */
import { spawnSync } from 'node:child_process';
import { firstValueFrom } from 'rxjs';
import { join } from 'node:path';
import { VcpuRuntime, type StartOptions } from '../../src/runtime/pool';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import type { VcpuFd } from '../../src/wrappers/vcpu-fd';
import type { VmFd } from '../../src/wrappers/vm-fd';
import { describeKvm } from '../helpers/kvm';
import { realModeGuest } from '../helpers/real-mode-guest';
import { enterRealMode } from '../../src/testing/real-mode';

function realMode(vcpu: VcpuFd, rip: bigint): VcpuFd {
  return enterRealMode(vcpu, { rip });
}

// Each vCPU writes its id (from BL) to port 0x10 `count` times, then halts:
//   mov $count, %cx ; 1: mov %bl, %al ; out %al, $0x10 ; loop 1b ; hlt
function counterGuest(count: number): Uint8Array {
  return Uint8Array.of(0xb9, count & 0xff, count >> 8, 0x88, 0xd8, 0xe6, 0x10, 0xe2, 0xfa, 0xf4);
}

// 1000 x (out %bl,$0x10) then `in $0x11,%al` (the count so far, answered by the pipeline), hlt
const COUNT_GUEST = [0xb9, 0xe8, 0x03, 0x88, 0xd8, 0xe6, 0x10, 0xe2, 0xfa, 0xe4, 0x11, 0xf4];

/** Runs COUNT_GUEST (BL = `value`) through count-pipeline.ts with `options`, then cleans up. */
async function countRun(value: bigint, options: StartOptions, setup: (vm: VmFd) => void = () => undefined) {
  const runtime = new VcpuRuntime({ maxVcpus: 1 });
  const guest = realModeGuest(COUNT_GUEST, {
    guestPhysAddr: 0n,
    memSize: 0x1000,
    regs: { rbx: value },
    beforeVcpu: setup,
  });
  try {
    const { vcpu } = guest;
    const run = runtime.start(vcpu, { pipeline: join(__dirname, '../fixtures/count-pipeline.ts'), ...options });
    const counted = firstValueFrom(run.events$);
    const outcome = await run.done;
    return { outcome, counted: await counted, al: vcpu.getRegs().rax & 0xffn };
  } finally {
    guest.close();
    await runtime.close();
  }
}

describeKvm('VcpuRuntime under load', () => {
  it('runs 2 VMs x 2 vCPUs at once, each exit stream in its own order', async () => {
    const runtime = new VcpuRuntime({ maxVcpus: 4 });
    const kvm = new Kvm();
    const mems: GuestMemory[] = [];
    const vms: VmFd[] = [];
    try {
      const runs = [];
      for (let v = 0; v < 2; v++) {
        const vm = kvm.createVm();
        vms.push(vm);
        const mem = GuestMemory.anonymous(0x1000);
        mems.push(mem);
        mem.bytes.set(counterGuest(300), 0);
        vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x0n, memory: mem });
        for (let c = 0; c < 2; c++) {
          const vcpu = realMode(vm.createVcpu(c), 0n);
          vcpu.setRegs({ ...vcpu.getRegs(), rbx: BigInt(v * 2 + c + 1) });
          const run = runtime.start(vcpu, { posted: [{ port: 0x10 }] });
          const seen: number[] = [];
          run.exits$.subscribe((e) => {
            if (e.kind === 'IoOut') seen.push(e.data[0]);
            if (e.kind === 'Hlt') void run.stop();
          });
          runs.push({ run, seen, id: v * 2 + c + 1 });
        }
      }
      await Promise.all(runs.map((r) => r.run.done));
      for (const r of runs) {
        expect(r.seen.length).toBe(300);
        expect(r.seen.every((x) => x === r.id)).toBe(true);
      }
    } finally {
      kvm.close();
      for (const m of mems) m.close();
      await runtime.close();
    }
  });

  it('reports every exit on monitor$ with where it was handled, and posts writes in order', async () => {
    const runtime = new VcpuRuntime({ maxVcpus: 1 });
    // out %al,$0x10 ; in $0x11,%al ; out %al,$0x10 ; hlt  (al = 7 at start)
    const guest = realModeGuest([0xe6, 0x10, 0xe4, 0x11, 0xe6, 0x10, 0xf4], {
      guestPhysAddr: 0n,
      memSize: 0x1000,
      regs: { rax: 7n },
    });
    try {
      const { vcpu } = guest;
      const run = runtime.start(vcpu, { posted: [{ port: 0x10 }] });
      const monitored: string[] = [];
      const handled: string[] = [];
      run.monitor$.subscribe((r) => monitored.push(`${r.kind}@${r.where}`));
      run.exits$.subscribe((e) => {
        handled.push(e.kind === 'IoOut' ? `out ${e.data[0]}` : e.kind);
        if (e.kind === 'IoIn') e.data[0] = 9;
        if (e.kind === 'Hlt') void run.stop();
      });
      await run.done;
      expect(handled).toEqual(['out 7', 'IoIn', 'out 9', 'Hlt']);
      expect(monitored).toEqual(['IoOut@posted', 'IoIn@main', 'IoOut@posted', 'Hlt@main']);
    } finally {
      guest.close();
      await runtime.close();
    }
  });

  it("delivers posted writes to the worker pipeline in batches, in order, with postedTo: 'worker'", async () => {
    const r = await countRun(0x5an, { posted: [{ port: 0x10 }], postedTo: 'worker' });
    expect(r.outcome).toEqual({ reason: 'completed', exits: 1002, lastExit: 'Hlt' });
    expect(r.counted).toEqual({ channel: 'count', data: { count: 1000, values: [0x5a] } });
    expect(r.al).toBe(BigInt(1000 & 0xff)); // the IN saw every earlier write
  });

  it('hands the writes KVM coalesced into its ring to the worker pipeline, in order, with coalescedRing', async () => {
    const r = await countRun(0x33n, { coalescedRing: true }, (vm) =>
      vm.registerCoalescedMmio({ kind: 'pio', addr: 0x10n }, 1),
    );
    expect(r.outcome.reason).toBe('completed');
    expect(r.outcome.exits).toBeLessThan(1002); // most OUTs never left the kernel
    expect(r.counted).toEqual({ channel: 'count', data: { count: 1000, values: [0x33] } });
    expect(r.al).toBe(BigInt(1000 & 0xff));
  });

  it('exits when the process exits with a vCPU inside KVM_RUN', () => {
    const r = spawnSync(
      process.execPath,
      ['-r', 'ts-node/register/transpile-only', join(__dirname, '../fixtures/exit-with-running-vcpu.ts')],
      {
        cwd: join(__dirname, '../..'),
        timeout: 20_000, // a hang guard (the exit hangs without the exit-time kick), not a speed bound
        encoding: 'utf8',
      },
    );
    expect(r.signal).toBeNull(); // not killed by the hang guard
    expect(r.stdout).toContain('exiting');
    expect(r.status).toBe(0);
  });
});
