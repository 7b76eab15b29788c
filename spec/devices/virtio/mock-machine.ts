/**
 * A VirtioMmioDevice on the mock kernel with a test driver for its queues: the registers are
 * written as the vCPU thread's `virtioMmio` would serve them, the rings as Linux would fill them
 * (`SplitDriver`), and QueueNotify goes through the mock's ioeventfd, as on KVM.
 */
import { MockBackend, hlt, mmioWrite } from '../../../src/backend/mock/index';
import { VirtioMmioDevice, type VirtioDevice } from '../../../src/devices/virtio/mmio-device';
import { VirtioMmioReg as R, VirtioMmioRegisters, VirtioStatus as S } from '../../../src/devices/virtio/mmio-transport';
import { GuestMemory } from '../../../src/wrappers/guest-memory';
import { Kvm } from '../../../src/wrappers/kvm';
import { SplitDriver } from './split-driver';

export const BASE = 0xd000_0000n;
export const RAM = 0x40_0000;
const RINGS = 0x10_0000; // queue i's rings at RINGS + i * 0x1_0000

export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Waits (event-loop turns, at most `ms`) until `cond()` holds; throws naming `what` if it never does. */
export async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

export function mockVirtio(device: VirtioDevice, queueSize = 8) {
  const backend = new MockBackend();
  const kvm = new Kvm({ backend });
  const vm = kvm.createVm();
  vm.createIrqChip(); // an irqfd needs one, as on KVM
  const memory = GuestMemory.anonymous(RAM, { backend });
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory });
  const vcpu = vm.createVcpu(0);
  const logged: string[] = [];
  const dev = new VirtioMmioDevice(vm, device, { base: BASE, gsi: 5, log: (m) => logged.push(m) });
  const regs = new VirtioMmioRegisters(dev.shared.state);
  const queues: SplitDriver[] = [];
  /** Linux's probe: reset, negotiate `features` (the device's own by default), set up every queue, DRIVER_OK. */
  const setUp = (features?: bigint): SplitDriver[] => {
    regs.write(R.status, 4, 0);
    regs.write(R.status, 4, S.acknowledge);
    regs.write(R.status, 4, S.acknowledge | S.driver);
    const offered = (() => {
      regs.write(R.deviceFeaturesSel, 4, 1);
      const hi = BigInt(regs.read(R.deviceFeatures, 4));
      regs.write(R.deviceFeaturesSel, 4, 0);
      return (hi << 32n) | BigInt(regs.read(R.deviceFeatures, 4));
    })();
    const acked = features ?? offered;
    regs.write(R.driverFeaturesSel, 4, 1);
    regs.write(R.driverFeatures, 4, Number(acked >> 32n));
    regs.write(R.driverFeaturesSel, 4, 0);
    regs.write(R.driverFeatures, 4, Number(acked & 0xffff_ffffn));
    regs.write(R.status, 4, S.acknowledge | S.driver | S.featuresOk);
    queues.length = 0;
    for (let i = 0; i < device.queueSizes.length; i++) {
      const base = RINGS + i * 0x1_0000;
      const config = {
        size: queueSize,
        descTable: BigInt(base),
        availRing: BigInt(base + 0x4000),
        usedRing: BigInt(base + 0x8000),
        eventIdx: (acked & (1n << 29n)) !== 0n,
      };
      vm.guestMemory.write(BigInt(base), new Uint8Array(0x1_0000));
      regs.write(R.queueSel, 4, i);
      regs.write(R.queueNum, 4, queueSize);
      regs.write(R.queueDescLow, 4, base);
      regs.write(R.queueDriverLow, 4, base + 0x4000);
      regs.write(R.queueDeviceLow, 4, base + 0x8000);
      regs.write(R.queueReady, 4, 1);
      queues.push(new SplitDriver(vm.guestMemory, config));
    }
    regs.write(R.status, 4, S.acknowledge | S.driver | S.featuresOk | S.driverOk);
    return queues;
  };
  /** The guest writes `queue` to QueueNotify: the ioeventfd takes it (no exit). */
  const notify = async (queue = 0): Promise<void> => {
    backend.vcpu(0).script([mmioWrite(BASE + 0x50n, [queue, 0, 0, 0]), hlt()]);
    if (vcpu.run().kind !== 'Hlt') throw new Error('the notify exited');
    await tick();
  };
  return { backend, kvm, vm, dev, regs, setUp, notify, logged, memory: vm.guestMemory };
}
