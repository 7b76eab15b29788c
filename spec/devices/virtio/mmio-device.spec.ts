/**
 * VirtioMmioDevice on the mock kernel: the guest side is played by a test driver that writes
 * the registers (as the vCPU thread's `virtioMmio` would) and the rings in guest memory (as
 * Linux's virtio_ring.c would); notifications go through the mock's ioeventfds, like on KVM.
 */
import { MockBackend } from '../../../src/backend/mock/index';
import { mockVmEvents } from '../../../src/backend/mock/vm-irq';
import { VirtioMmioDevice, type VirtioDevice } from '../../../src/devices/virtio/mmio-device';
import { VirtioMmioReg as R, VirtioStatus as S } from '../../../src/devices/virtio/mmio-transport';
import { virtioRng } from '../../../src/devices/virtio/rng';
import { Kvm } from '../../../src/wrappers/kvm';
import { BASE, RAM, mockVirtio, tick } from './mock-machine';
import type { SplitDriver } from './split-driver';

const QSIZE = 8;

function setup(device: VirtioDevice = virtioRng({ fill: (b) => b.fill(0x42) })) {
  const m = mockVirtio(device, QSIZE);
  let q: SplitDriver | undefined;
  const queue = () => {
    if (q === undefined) throw new Error('driver.setUp() first');
    return q;
  };
  const driver = {
    /** Linux's probe, acking only VERSION_1 (no EVENT_IDX): every completion interrupts. */
    setUp(features = 1n << 32n) {
      [q] = m.setUp(features);
    },
    /** Descriptor `i`: a buffer at `addr` of `len` bytes; `flags` 2 = device-writable, 1 = NEXT. */
    desc(i: number, addr: number, len: number, flags = 2, next = 0) {
      queue().writeDesc(i, { addr: BigInt(addr), len, flags, next });
    },
    /** Puts head `head` on the available ring and publishes it. */
    offer(head: number) {
      const d = queue();
      d.writeAvailEntry(d.availIdx % QSIZE, head);
      d.setAvailIdx(d.availIdx + 1);
    },
    usedIdx: () => queue().usedIdx(),
    used: (i: number) => queue().usedElem(i),
  };
  /** The guest writes queue 0's index to QueueNotify: the ioeventfd takes it, no exit. */
  const notify = () => m.notify(0);
  return { ...m, bytes: m.memory.regions[0].memory.bytes, driver, notify };
}

describe('VirtioMmioDevice (mock kernel)', () => {
  it('registers one ioeventfd per queue and an irqfd on its GSI; closing the VM releases them', () => {
    const { backend, kvm, vm, dev } = setup();
    expect(mockVmEvents(backend.vms[0])).toEqual({ ioeventfds: 1, irqfds: [{ gsi: 5 }] });
    expect(dev.cmdline).toBe('virtio_mmio.device=4K@0xd0000000:5');
    vm.close();
    expect(dev.closed).toBe(true);
    kvm.close();
  });

  it('a notified chain is filled, returned on the used ring with InterruptStatus set; ACK clears it', async () => {
    const { kvm, regs, bytes, driver, notify, dev } = setup();
    driver.setUp();
    await tick(); // the device sees DRIVER_OK
    driver.desc(0, 0x8000, 16);
    driver.desc(1, 0x9000, 32);
    driver.offer(0);
    driver.offer(1);
    await notify();
    expect(driver.usedIdx()).toBe(2);
    expect([driver.used(0), driver.used(1)]).toEqual([
      { id: 0, len: 16 },
      { id: 1, len: 32 },
    ]);
    expect(Array.from(bytes.subarray(0x8000, 0x8011))).toEqual([...Array<number>(16).fill(0x42), 0]);
    expect(regs.read(R.interruptStatus, 4)).toBe(1);
    regs.write(R.interruptAck, 4, 1);
    expect(regs.read(R.interruptStatus, 4)).toBe(0);
    expect([dev.status, dev.failures]).toEqual([15, 0]);
    kvm.close();
  });

  it('a chain the guest offered before DRIVER_OK reached the device is taken at activation', async () => {
    const { kvm, driver } = setup();
    driver.setUp();
    driver.desc(0, 0x8000, 8);
    driver.offer(0);
    await tick();
    expect(driver.usedIdx()).toBe(1);
    kvm.close();
  });

  it('a malformed chain puts the device into DEVICE_NEEDS_RESET and logs why; a reset brings it back', async () => {
    const { kvm, regs, driver, notify, dev, logged } = setup();
    driver.setUp();
    await tick();
    driver.desc(0, 0x8000, 8, 2 | 1, 99); // NEXT to descriptor 99 of an 8-entry queue
    driver.offer(0);
    await notify();
    expect(regs.read(R.status, 4) & S.deviceNeedsReset).toBe(S.deviceNeedsReset);
    expect(regs.read(R.interruptStatus, 4) & 2).toBe(2); // config change
    expect(driver.usedIdx()).toBe(0);
    expect(dev.failures).toBe(1);
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatch(/^virtio-rng at 0xd0000000: .*99.*; the device needs a reset$/);
    // The driver resets and sets the device up again: it works.
    driver.setUp();
    await tick();
    driver.desc(0, 0x8000, 8);
    driver.offer(0);
    await notify();
    expect(driver.usedIdx()).toBe(1);
    expect(dev.status).toBe(15);
    kvm.close();
  });

  it('a buffer outside guest RAM fails that device, not the process', async () => {
    const { kvm, driver, notify, dev } = setup();
    driver.setUp();
    await tick();
    driver.desc(0, RAM - 4, 16); // runs past the end of RAM
    driver.offer(0);
    await notify();
    expect(dev.failures).toBe(1);
    expect(driver.usedIdx()).toBe(0);
    kvm.close();
  });

  it('a queue larger than QueueNumMax or rings outside RAM are refused at DRIVER_OK', async () => {
    const { kvm, regs, dev, logged } = setup(virtioRng({ queueSize: 4 }));
    regs.write(R.status, 4, S.acknowledge);
    regs.write(R.status, 4, S.acknowledge | S.driver);
    regs.write(R.driverFeaturesSel, 4, 1);
    regs.write(R.driverFeatures, 4, 1);
    regs.write(R.status, 4, S.acknowledge | S.driver | S.featuresOk);
    regs.write(R.queueNum, 4, 8);
    regs.write(R.queueDescLow, 4, 0x1_0000);
    regs.write(R.queueDriverLow, 4, 0x2_0000);
    regs.write(R.queueDeviceLow, 4, 0x7fff_0000); // not RAM
    regs.write(R.queueReady, 4, 1);
    regs.write(R.status, 4, S.acknowledge | S.driver | S.featuresOk | S.driverOk);
    await tick();
    expect(dev.failures).toBe(1);
    expect(logged[0]).toMatch(/QueueNum 8 is larger than QueueNumMax 4/);
    kvm.close();
  });

  it('checks its arguments before making any fd', () => {
    const backend = new MockBackend();
    const kvm = new Kvm({ backend });
    const vm = kvm.createVm();
    vm.createIrqChip();
    const fds = backend.openFds.length;
    const rng = virtioRng();
    expect(() => new VirtioMmioDevice(vm, rng, { base: 0xd000_0001n, gsi: 5 })).toThrow(/4 KiB-aligned/);
    expect(() => new VirtioMmioDevice(vm, rng, { base: BASE, gsi: -1 })).toThrow(RangeError);
    expect(() => new VirtioMmioDevice(vm, { ...rng, activate: 1 } as never, { base: BASE, gsi: 5 })).toThrow(TypeError);
    expect(() => new VirtioMmioDevice({} as never, rng, { base: BASE, gsi: 5 })).toThrow(TypeError);
    expect(backend.openFds.length).toBe(fds);
    kvm.close();
  });
});
