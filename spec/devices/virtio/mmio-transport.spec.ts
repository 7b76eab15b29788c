/**
 * The virtio-mmio register file: what a driver reads and writes, as Linux's virtio_mmio.c does
 * it, and what a hostile guest gets for everything else.
 */
import fc from 'fast-check';
import {
  VIRTIO_MMIO_MAGIC,
  VirtioFeature,
  VirtioInterrupt,
  VirtioMmioDeviceState,
  VirtioMmioReg as R,
  VirtioMmioRegisters,
  VirtioStatus as S,
  createVirtioMmioState,
} from '../../../src/devices/virtio/mmio-transport';

const FEATURES = VirtioFeature.version1 | VirtioFeature.ringEventIdx | (1n << 5n);

function transport(config = Uint8Array.of(0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88)) {
  const sab = createVirtioMmioState({ deviceId: 2, features: FEATURES, queueSizes: [256, 128], config });
  return { regs: new VirtioMmioRegisters(sab), device: new VirtioMmioDeviceState(sab) };
}

/** Linux's probe and set-up (vm_get_features, vm_finalize_features, vm_setup_vq), up to DRIVER_OK. */
function linuxSetUp(regs: VirtioMmioRegisters, acked = FEATURES): void {
  regs.write(R.status, 4, 0);
  regs.write(R.status, 4, S.acknowledge);
  regs.write(R.status, 4, S.acknowledge | S.driver);
  regs.write(R.driverFeaturesSel, 4, 1);
  regs.write(R.driverFeatures, 4, Number(acked >> 32n));
  regs.write(R.driverFeaturesSel, 4, 0);
  regs.write(R.driverFeatures, 4, Number(acked & 0xffff_ffffn));
  regs.write(R.status, 4, S.acknowledge | S.driver | S.featuresOk);
  for (const [q, base] of [
    [0, 0x10_0000],
    [1, 0x20_0000],
  ]) {
    regs.write(R.queueSel, 4, q);
    regs.write(R.queueNum, 4, 64);
    regs.write(R.queueDescLow, 4, base);
    regs.write(R.queueDescHigh, 4, 1);
    regs.write(R.queueDriverLow, 4, base + 0x1000);
    regs.write(R.queueDriverHigh, 4, 0);
    regs.write(R.queueDeviceLow, 4, base + 0x2000);
    regs.write(R.queueDeviceHigh, 4, 0);
    regs.write(R.queueReady, 4, 1);
  }
  regs.write(R.status, 4, S.acknowledge | S.driver | S.featuresOk | S.driverOk);
}

describe('virtio-mmio transport registers', () => {
  it('identifies itself as a version-2 device: magic, version, device ID, vendor 0, feature pages', () => {
    const { regs } = transport();
    expect([R.magicValue, R.version, R.deviceId, R.vendorId].map((o) => regs.read(o, 4))).toEqual([
      VIRTIO_MMIO_MAGIC,
      2,
      2,
      0,
    ]);
    regs.write(R.deviceFeaturesSel, 4, 1);
    expect(regs.read(R.deviceFeatures, 4)).toBe(1); // VERSION_1 is bit 32
    regs.write(R.deviceFeaturesSel, 4, 0);
    expect(regs.read(R.deviceFeatures, 4)).toBe((1 << 29) | (1 << 5));
    regs.write(R.deviceFeaturesSel, 4, 7);
    expect(regs.read(R.deviceFeatures, 4)).toBe(0);
    regs.write(R.queueSel, 4, 1);
    expect(regs.read(R.queueNumMax, 4)).toBe(128);
    regs.write(R.queueSel, 4, 2); // no such queue
    expect(regs.read(R.queueNumMax, 4)).toBe(0);
    expect(regs.read(R.shmLenLow, 4)).toBe(0xffff_ffff);
  });

  it("Linux's handshake ends in DRIVER_OK with the acked features and the queues as written", () => {
    const { regs, device } = transport();
    const epoch = device.epoch;
    linuxSetUp(regs);
    expect(regs.read(R.status, 4)).toBe(15);
    expect(device.driverOk).toBe(true);
    expect(device.driverFeatures).toBe(FEATURES);
    expect(device.epoch).toBe(epoch + 2); // the reset, then DRIVER_OK
    expect(device.queue(0)).toEqual({
      size: 64,
      ready: true,
      descTable: 0x1_0010_0000n,
      availRing: 0x10_1000n,
      usedRing: 0x10_2000n,
    });
    expect(device.queue(1).descTable).toBe(0x1_0020_0000n);
    expect(() => device.queue(2)).toThrow(RangeError);
  });

  it('refuses a feature set without VERSION_1 or with a bit it did not offer: FEATURES_OK stays clear', () => {
    for (const acked of [FEATURES & ~VirtioFeature.version1, FEATURES | (1n << 7n)]) {
      const { regs, device } = transport();
      linuxSetUp(regs, acked);
      expect(regs.read(R.status, 4)).toBe(S.acknowledge | S.driver);
      expect(device.driverOk).toBe(false);
    }
  });

  it('takes queue fields only between FEATURES_OK and DRIVER_OK, features only while negotiating', () => {
    const { regs, device } = transport();
    regs.write(R.queueSel, 4, 0);
    regs.write(R.queueNum, 4, 32); // status 0: ignored
    regs.write(R.driverFeatures, 4, 0xffff_ffff); // not in DRIVER: ignored
    expect(device.queue(0).size).toBe(0);
    expect(device.driverFeatures).toBe(0n);
    linuxSetUp(regs);
    regs.write(R.queueSel, 4, 0);
    regs.write(R.queueNum, 4, 8); // after DRIVER_OK: ignored
    regs.write(R.queueDescLow, 4, 0x1234);
    regs.write(R.driverFeatures, 4, 0);
    expect(device.queue(0)).toMatchObject({ size: 64, descTable: 0x1_0010_0000n });
    expect(device.driverFeatures).toBe(FEATURES);
  });

  it('ignores transitions out of order, and FAILED only adds itself', () => {
    const { regs } = transport();
    regs.write(R.status, 4, S.acknowledge | S.driver | S.featuresOk | S.driverOk); // from 0
    expect(regs.read(R.status, 4)).toBe(0);
    regs.write(R.status, 4, S.acknowledge);
    regs.write(R.status, 4, S.acknowledge | S.driverOk);
    expect(regs.read(R.status, 4)).toBe(S.acknowledge);
    regs.write(R.status, 4, S.failed);
    expect(regs.read(R.status, 4)).toBe(S.acknowledge | S.failed);
  });

  it('a reset (status 0) clears status, features, queues and interrupts and moves the epoch', () => {
    const { regs, device } = transport();
    linuxSetUp(regs);
    device.setInterrupt(VirtioInterrupt.usedBuffer);
    const epoch = device.epoch;
    regs.write(R.status, 4, 0);
    expect(device.epoch).toBe(epoch + 1);
    expect(regs.read(R.status, 4)).toBe(0);
    expect(regs.read(R.interruptStatus, 4)).toBe(0);
    expect(device.driverFeatures).toBe(0n);
    regs.write(R.queueSel, 4, 0);
    expect(regs.read(R.queueReady, 4)).toBe(0);
    expect(device.queue(0)).toEqual({ size: 0, ready: false, descTable: 0n, availRing: 0n, usedRing: 0n });
    expect(regs.read(R.queueNumMax, 4)).toBe(256); // the device's own limits stay
  });

  it('InterruptStatus keeps a bit until the driver ACKs it; DEVICE_NEEDS_RESET raises a config change', () => {
    const { regs, device } = transport();
    linuxSetUp(regs);
    device.setInterrupt(VirtioInterrupt.usedBuffer);
    expect(regs.read(R.interruptStatus, 4)).toBe(1);
    regs.write(R.interruptAck, 4, 2);
    expect(regs.read(R.interruptStatus, 4)).toBe(1);
    regs.write(R.interruptAck, 4, 1);
    expect(regs.read(R.interruptStatus, 4)).toBe(0);
    device.setNeedsReset();
    expect(regs.read(R.status, 4)).toBe(15 | S.deviceNeedsReset);
    expect(regs.read(R.interruptStatus, 4)).toBe(VirtioInterrupt.configChange);
    expect(device.driverOk).toBe(false);
  });

  it('config space: any width inside it, 0 outside; the generation moves around a device update', () => {
    const { regs, device } = transport();
    expect(regs.read(R.config, 1)).toBe(0x11);
    expect(regs.read(R.config + 2, 2)).toBe(0x4433);
    expect(regs.read(R.config + 4, 4)).toBe(0x88776655);
    expect(regs.read(R.config + 6, 4)).toBe(0); // runs past the 8 bytes
    expect(regs.read(R.config + 0x100, 4)).toBe(0);
    const gen = regs.read(R.configGeneration, 4);
    device.writeConfig(0, Uint8Array.of(0xaa));
    expect(regs.read(R.config, 1)).toBe(0xaa);
    expect(regs.read(R.configGeneration, 4)).not.toBe(gen);
    expect(() => device.writeConfig(7, Uint8Array.of(1, 2))).toThrow(RangeError);
  });

  it('registers answer 32-bit aligned accesses only; other widths read 0 and writes are dropped', () => {
    const { regs } = transport();
    expect(regs.read(R.magicValue, 1)).toBe(0);
    expect(regs.read(R.magicValue + 1, 4)).toBe(0);
    regs.write(R.status, 2, S.acknowledge);
    regs.write(R.status, 1, S.acknowledge);
    expect(regs.read(R.status, 4)).toBe(0);
  });

  it('a QueueNotify that exits (no ioeventfd took it) rings the doorbell for a valid queue after DRIVER_OK only', () => {
    const { regs, device } = transport();
    regs.write(R.queueNotify, 4, 0);
    expect(device.takePendingNotify()).toBe(0);
    linuxSetUp(regs);
    const bell = device.doorbell;
    regs.write(R.queueNotify, 4, 1);
    regs.write(R.queueNotify, 4, 9); // no such queue
    expect(device.takePendingNotify()).toBe(0b10);
    expect(device.takePendingNotify()).toBe(0);
    expect(device.doorbell).toBe(bell + 1);
  });

  it('checks what it is created from', () => {
    const ok = { deviceId: 4, features: VirtioFeature.version1, queueSizes: [256] };
    expect(() => createVirtioMmioState({ ...ok, features: 0n })).toThrow(/VERSION_1/);
    expect(() => createVirtioMmioState({ ...ok, queueSizes: [] })).toThrow(RangeError);
    expect(() => createVirtioMmioState({ ...ok, queueSizes: [100] })).toThrow(/power of two/);
    expect(() => createVirtioMmioState({ ...ok, deviceId: 0 })).toThrow(RangeError);
    expect(() => createVirtioMmioState({ ...ok, config: new Uint8Array(4096) })).toThrow(RangeError);
    expect(() => new VirtioMmioRegisters(new SharedArrayBuffer(16))).toThrow(TypeError);
  });

  it('fuzz: any sequence of guest accesses never throws and keeps the state in range', () => {
    const access = fc.record({
      write: fc.boolean(),
      offset: fc.oneof(fc.constantFrom(...Object.values(R)), fc.integer({ min: 0, max: 0xfff })),
      size: fc.constantFrom(1, 2, 4, 8),
      value: fc.oneof(fc.constantFrom(0, 1, 3, 11, 15, 0x80, 0xffff_ffff), fc.nat()),
    });
    fc.assert(
      fc.property(fc.array(access, { maxLength: 200 }), fc.boolean(), (ops, setUpFirst) => {
        const { regs, device } = transport();
        if (setUpFirst) linuxSetUp(regs);
        for (const op of ops) {
          if (op.write) regs.write(op.offset, op.size, op.value);
          else {
            const v = regs.read(op.offset, op.size);
            expect(Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff).toBe(true);
          }
        }
        // DRIVER_OK only with an accepted feature set; queue fields of real queues only.
        if (device.driverOk) {
          expect(device.driverFeatures & ~FEATURES).toBe(0n);
          expect(device.driverFeatures & VirtioFeature.version1).toBe(VirtioFeature.version1);
        }
        expect(device.status & ~0xff).toBe(0);
        expect(device.numQueues).toBe(2);
      }),
      { numRuns: 300 },
    );
  });
});
