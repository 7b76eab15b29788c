/**
 * What only the real kernel shows: an ioeventfd firing from a guest `out` (and waking
 * EventFd.readAsync through libuv), an irqfd consuming its eventfd, the kvmclock advancing.
 */
import { EventFd } from '../../src/wrappers/event-fd';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { IoEventAddress, NoDatamatch } from '../../src/wrappers/io-event';
import { Kvm } from '../../src/wrappers/kvm';
import type { VcpuFd } from '../../src/wrappers/vcpu-fd';
import type { VmFd } from '../../src/wrappers/vm-fd';
import { describeKvm, expectKvmError } from '../helpers/kvm';
import { enterRealMode } from '../../src/testing/real-mode';

describeKvm('VmFd interrupts and events', () => {
  let kvm: Kvm;
  let vm: VmFd;
  const owned: Array<{ close(): void }> = [];
  beforeEach(() => {
    kvm = new Kvm();
    vm = kvm.createVm();
  });
  afterEach(() => {
    kvm.close();
    for (const o of owned.splice(0).reverse()) o.close();
  });
  const evt = () => {
    const e = new EventFd();
    owned.push(e);
    return e;
  };

  /** A real-mode vCPU at 0x1000 running `code`. */
  function guest(code: number[]): VcpuFd {
    const mem = GuestMemory.anonymous(0x4000);
    owned.push(mem);
    mem.write(0, code);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x1000n, memory: mem });
    const vcpu = vm.createVcpu(0);
    return enterRealMode(vcpu, { rip: 0x1000n });
  }

  // mov al, 0x42 ; out 0xf4, al ; mov al, 0x43 ; out 0xf5, al ; hlt
  const OUT_F4_F5 = [0xb0, 0x42, 0xe6, 0xf4, 0xb0, 0x43, 0xe6, 0xf5, 0xf4];

  it('turns a guest write to a registered port into an eventfd signal instead of an IoOut exit', async () => {
    const e = evt();
    vm.registerIoevent(e, IoEventAddress.pio(0xf4), NoDatamatch);
    const woken = e.readAsync(); // nothing yet: waits on the event loop
    const vcpu = guest(OUT_F4_F5);
    const first = vcpu.run();
    expect(first).toMatchObject({ kind: 'IoOut', port: 0xf5 }); // 0xf4 did not exit
    await expect(woken).resolves.toBe(1n);
    expect(vcpu.run().kind).toBe('Hlt');
  });

  it('matches only the registered value with a datamatch', () => {
    const e = evt();
    vm.registerIoevent(e, IoEventAddress.pio(0xf4), { value: 0x41, length: 1 });
    const vcpu = guest(OUT_F4_F5);
    expect(vcpu.run()).toMatchObject({ kind: 'IoOut', port: 0xf4 }); // 0x42 != 0x41: a normal exit
    expectKvmError(() => e.read(), 'EAGAIN');
  });

  it('consumes the count written to a registered irqfd (the kernel injects the GSI)', () => {
    vm.createIrqChip();
    const e = evt();
    vm.registerIrqfd(e, 4);
    e.write(1n);
    expectKvmError(() => e.read(), 'EAGAIN'); // the irqfd's wakeup took it
    vm.unregisterIrqfd(e, 4);
    e.write(1n);
    expect(e.read()).toBe(1n);
  });

  it('keeps the kvmclock running after set_clock, in nanoseconds of the host clock', async () => {
    vm.setClock({ clock: 1_000_000n });
    const h0 = process.hrtime.bigint();
    const a = vm.getClock().clock;
    const h1 = process.hrtime.bigint();
    await new Promise((r) => setTimeout(r, 20)); // any time at all: the host clock is the measure
    const h2 = process.hrtime.bigint();
    const b = vm.getClock().clock;
    const h3 = process.hrtime.bigint();
    expect(a).toBeGreaterThanOrEqual(1_000_000n);
    // Between the two reads the kvmclock advanced as much as the host's monotonic clock did (h1..h2
    // lies inside, h0..h3 outside), within 1 % for the two clocks' rates (NTP slews by <= 0.05 %).
    expect(b - a).toBeGreaterThanOrEqual(((h2 - h1) * 99n) / 100n);
    expect(b - a).toBeLessThanOrEqual(((h3 - h0) * 101n) / 100n);
  });

  it('aborts a readAsync that is waiting on a real eventfd, leaving the fd usable', async () => {
    const e = evt();
    const ac = new AbortController();
    const p = e.readAsync(ac.signal);
    setTimeout(() => ac.abort(new Error('stop')), 10);
    await expect(p).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
    e.write(9n);
    await expect(e.readAsync()).resolves.toBe(9n);
  });
});
