/**
 * `fromIoEvent` on the real kernel: 100 doorbell writes (`out 0xf4`) never exit to userspace
 * while subscribed; the Observable counts all of them. Unsubscribed, the same write exits.
 */
import { lastValueFrom, reduce } from 'rxjs';
import { join } from 'node:path';
import { fromIoEvent } from '../../src/runtime/from-io-event';
import { VcpuRuntime } from '../../src/runtime/pool';
import { IoEventAddress } from '../../src/wrappers/io-event';
import { Kvm } from '../../src/wrappers/kvm';
import { describeKvm } from '../helpers/kvm';
import { realModeGuest, type RealModeGuest } from '../helpers/real-mode-guest';

const DOORBELLS = 100;

/** mov $DOORBELLS,%ecx ; 1: out %al,$0xf4 ; dec %ecx ; jnz 1b ; out %al,$0x80 ; hlt */
const GUEST = [0x66, 0xb9, DOORBELLS, 0, 0, 0, 0xe6, 0xf4, 0x66, 0x49, 0x75, 0xfa, 0xe6, 0x80, 0xf4];

/** A VM running GUEST in real mode from 0, its last `out` to `lastPort`; disposing closes it all. */
function doorbellGuest(lastPort = 0x80): RealModeGuest {
  const code = [...GUEST];
  code[GUEST.length - 2] = lastPort;
  return realModeGuest(code, { guestPhysAddr: 0n, memSize: 0x1000 });
}

describeKvm('fromIoEvent', () => {
  it(`takes ${DOORBELLS} doorbell writes without a single exit and counts them all`, async () => {
    using guest = doorbellGuest();
    const { vm, vcpu } = guest;
    let total = 0n;
    const counted = new Promise<void>((resolve) => {
      const sub = fromIoEvent(vm, IoEventAddress.pio(0xf4)).subscribe((n) => {
        total += n;
        if (total >= BigInt(DOORBELLS)) {
          sub.unsubscribe();
          resolve();
        }
      });
    });
    expect(vcpu.run()).toMatchObject({ kind: 'IoOut', port: 0x80 }); // the first exit is the last out
    expect(vcpu.run().kind).toBe('Hlt');
    await counted;
    expect(total).toBe(BigInt(DOORBELLS));
  });

  it('unsubscribed, the doorbell exits again', () => {
    using guest = doorbellGuest();
    const { vm, vcpu } = guest;
    fromIoEvent(vm, IoEventAddress.pio(0xf4)).subscribe().unsubscribe();
    expect(vcpu.run()).toMatchObject({ kind: 'IoOut', port: 0xf4 });
  });

  it('completes when the VM is closed', async () => {
    using kvm = new Kvm();
    const vm = kvm.createVm();
    const done = lastValueFrom(fromIoEvent(vm, IoEventAddress.pio(0xf4)).pipe(reduce((a, n) => a + n, 0n)), {
      defaultValue: 0n,
    });
    vm.close();
    await expect(done).resolves.toBe(0n);
  });

  it('a vCPU on the worker runtime reaches its pipeline only for the non-doorbell exits', async () => {
    using guest = doorbellGuest(0x10); // the count pipeline handles out 0x10
    const { vm, vcpu } = guest;
    await using runtime = new VcpuRuntime({ maxVcpus: 1 });
    let total = 0n;
    const counted = new Promise<void>((resolve) => {
      const sub = fromIoEvent(vm, IoEventAddress.pio(0xf4)).subscribe((n) => {
        total += n;
        if (total >= BigInt(DOORBELLS)) {
          sub.unsubscribe();
          resolve();
        }
      });
    });
    const outcome = await runtime.start(vcpu, { pipeline: join(__dirname, '../fixtures/count-pipeline.ts') }).done;
    expect(outcome).toEqual({ reason: 'completed', exits: 2, lastExit: 'Hlt' }); // out 0x10, hlt
    await counted; // the last counts may still be on their way through the event loop
    expect(total).toBe(BigInt(DOORBELLS));
  });
});
