/**
 * `fromIoEvent` on the mock: the mock kernel, like KVM, takes a guest write that matches an
 * ioeventfd without an exit and signals the eventfd; the Observable emits the counts, and
 * unsubscribing (or closing the VM) leaves nothing registered and no fd open.
 */
import { firstValueFrom, take, toArray } from 'rxjs';
import { MockBackend, hlt, ioOut, mmioWrite } from '../../src/backend/mock/index';
import { mockVmEvents } from '../../src/backend/mock/vm-irq';
import { fromIoEvent } from '../../src/runtime/from-io-event';
import { IoEventAddress } from '../../src/wrappers/io-event';
import { Kvm } from '../../src/wrappers/kvm';
import { expectCode } from '../helpers/kvm';

function setup() {
  const backend = new MockBackend();
  const kvm = new Kvm({ backend });
  const vm = kvm.createVm();
  const vcpu = vm.createVcpu(0);
  const fdsBefore = backend.openFds.length;
  const ioeventfds = () => mockVmEvents(backend.vms[0]).ioeventfds;
  return { backend, kvm, vm, vcpu, fdsBefore, ioeventfds };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('fromIoEvent (mock)', () => {
  it('takes matching writes without an exit and emits how many there were', async () => {
    const { backend, kvm, vm, vcpu, fdsBefore, ioeventfds } = setup();
    backend.vcpu(0).script([ioOut(0xf4, [1]), ioOut(0xf4, [2]), ioOut(0x80, [3]), ioOut(0xf4, [4]), hlt()]);
    const counts: bigint[] = [];
    const sub = fromIoEvent(vm, IoEventAddress.pio(0xf4)).subscribe((n) => counts.push(n));
    expect(ioeventfds()).toBe(1);
    expect(backend.openFds.length).toBe(fdsBefore + 1); // the eventfd
    expect(vcpu.run()).toMatchObject({ kind: 'IoOut', port: 0x80 });
    await tick();
    expect(counts).toEqual([2n]);
    expect(vcpu.run().kind).toBe('Hlt');
    await tick();
    expect(counts).toEqual([2n, 1n]);
    sub.unsubscribe();
    expect(ioeventfds()).toBe(0);
    expect(backend.openFds.length).toBe(fdsBefore);
    kvm.close();
  });

  it('after unsubscribe the same writes exit again', () => {
    const { backend, kvm, vm, vcpu } = setup();
    backend.vcpu(0).script([ioOut(0xf4, [1]), hlt()]);
    fromIoEvent(vm, IoEventAddress.pio(0xf4)).subscribe().unsubscribe();
    expect(vcpu.run()).toMatchObject({ kind: 'IoOut', port: 0xf4 });
    kvm.close();
  });

  it('with a datamatch takes only the matching value; MMIO writes too', async () => {
    const { backend, kvm, vm, vcpu } = setup();
    backend
      .vcpu(0)
      .script([
        ioOut(0xf4, [2]),
        ioOut(0xf4, [1]),
        mmioWrite(0xd000_0050n, [1, 0, 0, 0]),
        mmioWrite(0xd000_0050n, [1, 0]),
        hlt(),
      ]);
    const pio = firstValueFrom(fromIoEvent(vm, IoEventAddress.pio(0xf4), { value: 1, length: 1 }));
    const mmio = firstValueFrom(fromIoEvent(vm, IoEventAddress.mmio(0xd000_0050n), { value: 1, length: 4 }));
    expect(vcpu.run()).toMatchObject({ kind: 'IoOut', port: 0xf4, data: Uint8Array.of(2) });
    // out 0xf4 = 1 and the 4-byte MMIO write of 1 are taken; the 2-byte MMIO write is not.
    expect(vcpu.run()).toMatchObject({ kind: 'MmioWrite', addr: 0xd000_0050n, data: Uint8Array.of(1, 0) });
    await expect(pio).resolves.toBe(1n);
    await expect(mmio).resolves.toBe(1n);
    expect(vcpu.run().kind).toBe('Hlt');
    kvm.close();
  });

  it('an overlapping registration errors the second subscriber with EEXIST and leaves the first working', async () => {
    const { backend, kvm, vm, vcpu, fdsBefore, ioeventfds } = setup();
    backend.vcpu(0).script([ioOut(0xf4, [1]), hlt()]);
    const first = firstValueFrom(fromIoEvent(vm, IoEventAddress.pio(0xf4)));
    await expect(firstValueFrom(fromIoEvent(vm, IoEventAddress.pio(0xf4)))).rejects.toMatchObject({
      code: 'EEXIST',
      syscall: 'ioctl',
      request: 'KVM_IOEVENTFD',
    });
    expect(ioeventfds()).toBe(1);
    expect(backend.openFds.length).toBe(fdsBefore + 1);
    expect(vcpu.run().kind).toBe('Hlt');
    await expect(first).resolves.toBe(1n);
    expect(ioeventfds()).toBe(0); // firstValueFrom unsubscribed
    kvm.close();
  });

  it('completes when the VM closes, closing its eventfd', async () => {
    const { backend, kvm, vm, fdsBefore } = setup();
    const all = firstValueFrom(fromIoEvent(vm, IoEventAddress.pio(0xf4)).pipe(take(5), toArray()));
    vm.close();
    await expect(all).resolves.toEqual([]);
    expect(backend.openFds.length).toBe(fdsBefore - 2); // the VM's, the vCPU's and the eventfd's fds are gone
    kvm.close();
  });

  it('checks its arguments when called, and refuses a closed VM on subscribe', async () => {
    const { kvm, vm } = setup();
    expectCode(() => fromIoEvent({} as never, IoEventAddress.pio(1)), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(() => fromIoEvent(vm, 0xf4 as never), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(() => fromIoEvent(vm, IoEventAddress.pio(1), null as never), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    await expect(
      firstValueFrom(fromIoEvent(vm, IoEventAddress.pio(0xf4), { value: 0x100, length: 1 })),
    ).rejects.toMatchObject({ name: 'RangeError' });
    vm.close();
    await expect(firstValueFrom(fromIoEvent(vm, IoEventAddress.pio(1)))).rejects.toMatchObject({
      code: 'ERR_KVM_CLOSED',
    });
    kvm.close();
  });
});
