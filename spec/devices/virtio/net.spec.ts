/**
 * virtio-net on the mock kernel over an in-memory packet backend: what the guest sends reaches the
 * backend whole, what arrives goes into the guest's posted buffers (num_buffers = 1), and the
 * backend is read only while the guest has room.
 */
import { VirtioMmioReg as R } from '../../../src/devices/virtio/mmio-transport';
import { virtioNet, type VirtioNetBackend } from '../../../src/devices/virtio/net';
import { mockVirtio, tick, until } from './mock-machine';

const BUF = 0x20_0000n;

/** Packets waiting on the host side, what the guest sent, and whether anyone watches. */
function memoryBackend() {
  const inbox: Uint8Array[] = [];
  const sent: Uint8Array[] = [];
  let watcher: (() => void) | undefined;
  const backend: VirtioNetBackend = {
    write: (p) => (sent.push(p.slice()), true),
    read: (buffer) => {
      const p = inbox.shift();
      if (p === undefined) return 0;
      const n = Math.min(p.length, buffer.length);
      buffer.set(p.subarray(0, n));
      return n;
    },
    watchReadable: (fn) => {
      watcher = fn;
      return () => (watcher = undefined);
    },
  };
  return {
    backend,
    sent,
    inbox,
    watching: () => watcher !== undefined,
    arrive: (p: Uint8Array) => {
      inbox.push(p);
      watcher?.();
    },
  };
}

const packet = (len: number, fill: number) => {
  const p = new Uint8Array(len).fill(fill);
  p.fill(0, 0, 12); // a header with no flags and no GSO
  return p;
};

describe('virtio-net (mock kernel)', () => {
  it('offers the MAC in the config space when given one', () => {
    const host = memoryBackend();
    const m = mockVirtio(virtioNet({ backend: host.backend, mac: '52:54:00:12:34:56' }));
    m.regs.write(R.deviceFeaturesSel, 4, 0);
    expect(m.regs.read(R.deviceFeatures, 4) & (1 << 5)).toBe(1 << 5);
    expect([0, 1, 2, 3, 4, 5].map((i) => m.regs.read(R.config + i, 1))).toEqual([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    expect(m.regs.read(R.deviceId, 4)).toBe(1);
    m.kvm.close();
  });

  it('transmit: each chain reaches the backend as one packet, header included, across descriptors', async () => {
    const host = memoryBackend();
    const dev = virtioNet({ backend: host.backend });
    const m = mockVirtio(dev);
    const [, txq] = m.setUp();
    const p = packet(74, 0xab);
    m.memory.write(BUF, p.subarray(0, 12));
    m.memory.write(BUF + 0x1000n, p.subarray(12));
    txq.add(
      [
        { addr: BUF, len: 12 },
        { addr: BUF + 0x1000n, len: 62 },
      ],
      [],
    );
    await m.notify(1);
    await until(() => host.sent.length === 1, 'the packet');
    expect(Buffer.from(host.sent[0]).equals(Buffer.from(p))).toBe(true);
    expect(txq.getUsed()).toEqual([{ id: 0, len: 0 }]);
    expect(dev.stats).toMatchObject({ txPackets: 1, txDropped: 0 });
    m.kvm.close();
  });

  it('receive: packets fill the posted buffers with num_buffers 1; the backend is read only while there is room', async () => {
    const host = memoryBackend();
    const dev = virtioNet({ backend: host.backend });
    const m = mockVirtio(dev);
    const [rxq] = m.setUp();
    await tick();
    host.inbox.push(packet(60, 1)); // arrived before any buffer: stays on the host side
    expect(host.watching()).toBe(false);
    rxq.add([], [{ addr: BUF, len: 1526 }]);
    await m.notify(0);
    await until(() => rxq.usedIdx() === 1, 'the first packet');
    expect(rxq.getUsed()).toEqual([{ id: 0, len: 60 }]);
    const got = m.memory.read(BUF, 60);
    expect([got[10], got[11], got[12], got[59]]).toEqual([1, 0, 1, 1]);
    expect(host.watching()).toBe(false); // no buffer left: not reading
    host.arrive(packet(80, 2));
    expect(host.inbox).toHaveLength(1);
    rxq.add([], [{ addr: BUF + 0x1000n, len: 1526 }]);
    await m.notify(0);
    await until(() => rxq.usedIdx() === 2, 'the second packet');
    expect(m.memory.read(BUF + 0x1000n + 79n, 1)[0]).toBe(2);
    expect(dev.stats).toMatchObject({ rxPackets: 2, rxDropped: 0 });
    m.kvm.close();
  });

  it('a packet larger than the buffer is dropped, not truncated; the buffer takes the next one', async () => {
    const host = memoryBackend();
    const dev = virtioNet({ backend: host.backend });
    const m = mockVirtio(dev);
    const [rxq] = m.setUp();
    host.inbox.push(packet(2000, 3), packet(100, 4));
    rxq.add([], [{ addr: BUF, len: 1526 }]);
    await m.notify(0);
    await until(() => rxq.usedIdx() === 1, 'the packet that fits');
    expect(rxq.getUsed()).toEqual([{ id: 0, len: 100 }]);
    expect(dev.stats).toMatchObject({ rxPackets: 1, rxDropped: 1 });
    m.kvm.close();
  });

  it('a backend that throws puts the device into DEVICE_NEEDS_RESET, nothing else', async () => {
    const host = memoryBackend();
    host.backend.write = () => {
      throw new Error('tap is gone');
    };
    const m = mockVirtio(virtioNet({ backend: host.backend }));
    const [, txq] = m.setUp();
    m.memory.write(BUF, packet(60, 5));
    txq.add([{ addr: BUF, len: 60 }], []);
    await m.notify(1);
    await until(() => m.dev.failures === 1, 'the failure');
    expect(m.logged).toEqual(['virtio-net at 0xd0000000: tap is gone; the device needs a reset']);
    m.kvm.close();
  });

  it('checks its options', () => {
    const host = memoryBackend();
    expect(() => virtioNet({ backend: {} as never })).toThrow(TypeError);
    expect(() => virtioNet({ backend: host.backend, mac: '52:54:00:12:34' })).toThrow(/52:54:00:12:34:56/);
    expect(() => virtioNet({ backend: host.backend, mac: '01:00:5e:00:00:01' })).toThrow(/unicast/);
  });
});
