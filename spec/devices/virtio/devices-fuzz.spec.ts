/**
 * What a hostile guest can put in the queues of virtio-blk, virtio-net and virtio-vsock, fuzzed
 * (fast-check) on the mock kernel: random request bytes, lengths, descriptor splits and buffer
 * placement. Whatever comes, no exception escapes the device, every chain is returned or the
 * device goes to DEVICE_NEEDS_RESET with a reason, and guest memory changes only in the used
 * rings and the device-writable buffers.
 */
import fc from 'fast-check';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { virtioBlk } from '../../../src/devices/virtio/blk';
import type { VirtioDevice } from '../../../src/devices/virtio/mmio-device';
import { virtioNet } from '../../../src/devices/virtio/net';
import { virtioVsock } from '../../../src/devices/virtio/vsock';
import { RAM, mockVirtio, until } from './mock-machine';

const READABLE = 0x20_0000; // where request bytes go (the guest's, read-only to the device)
const WRITABLE = 0x30_0000; // where device-writable buffers go
const RINGS = 0x10_0000; // mock-machine puts queue i's rings at RINGS + i * 0x1_0000

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kvmrx-devfuzz-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** One chain: readable segments (bytes), then writable segment lengths. */
const chainArb = fc.record({
  readable: fc.array(fc.uint8Array({ minLength: 0, maxLength: 96 }), { maxLength: 3 }),
  writable: fc.array(fc.integer({ min: 0, max: 1200 }), { maxLength: 2 }),
});
/** Request bytes biased toward the devices' real headers, so parsing goes deep. */
const blkHeader = fc
  .tuple(fc.constantFrom(0, 1, 4, 8, 11, 99, 0xffff_ffff), fc.bigInt({ min: 0n, max: 200n }))
  .map(([type, sector]) => {
    const b = new Uint8Array(16);
    const v = new DataView(b.buffer);
    v.setUint32(0, type, true);
    v.setBigUint64(8, sector, true);
    return b;
  });
const vsockHeader = fc
  .record({
    srcCid: fc.constantFrom(3n, 2n, 0n),
    dstCid: fc.constantFrom(2n, 3n),
    op: fc.integer({ min: 0, max: 9 }),
    len: fc.constantFrom(0, 5, 44, 70000),
    type: fc.constantFrom(1, 2),
  })
  .map((h) => {
    const b = new Uint8Array(44);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, h.srcCid, true);
    v.setBigUint64(8, h.dstCid, true);
    v.setUint32(16, 1000, true);
    v.setUint32(20, 7777, true);
    v.setUint32(24, h.len, true);
    v.setUint16(28, h.type, true);
    v.setUint16(30, h.op, true);
    v.setUint32(36, 65536, true);
    return b;
  });

async function fuzzDevice(make: () => VirtioDevice, header: fc.Arbitrary<Uint8Array>, queue: number): Promise<void> {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.tuple(header, chainArb, fc.boolean()), { minLength: 1, maxLength: 6 }),
      async (chains) => {
        const m = mockVirtio(make(), 16);
        try {
          const queues = m.setUp();
          const q = queues[queue];
          let r = READABLE;
          let w = WRITABLE;
          const writable: Array<[number, number]> = [];
          let added = 0;
          for (const [hdr, c, withHeader] of chains) {
            const out = [];
            for (const bytes of withHeader ? [hdr, ...c.readable] : c.readable) {
              m.memory.write(BigInt(r), bytes);
              out.push({ addr: BigInt(r), len: bytes.length });
              r += bytes.length + 16;
            }
            const inn = c.writable.map((len) => {
              writable.push([w, len]);
              const d = { addr: BigInt(w), len };
              w += len + 16;
              return d;
            });
            if (out.length + inn.length === 0 || out.length + inn.length > q.freeList.length) continue;
            q.add(out, inn);
            added++;
          }
          const before = m.memory.read(0n, RAM); // the requests are in place; now the device runs
          await m.notify(queue);
          // Each chain comes back, or the device gives up on the guest (NEEDS_RESET, with a reason).
          await until(() => q.usedIdx() >= added || m.dev.failures > 0, 'the chains or a failure', 5000);
          if (m.dev.failures > 0) expect(m.logged.length).toBeGreaterThan(0);
          const after = m.memory.read(0n, RAM);
          const allowed = (at: number) =>
            (at >= RINGS && at < RINGS + 0x4_0000) || writable.some(([s, len]) => at >= s && at < s + len);
          // The device wrote nothing but the used rings and the writable buffers (not the requests).
          for (let i = 0; i < RAM; i++)
            if (before[i] !== after[i] && !allowed(i)) throw new Error(`byte 0x${i.toString(16)} changed`);
        } finally {
          m.kvm.close();
        }
      },
    ),
    { numRuns: 40 },
  );
}

describe('virtio devices under hostile queues (fast-check, mock kernel)', () => {
  it('virtio-blk', async () => {
    const image = join(dir, 'disk.img');
    writeFileSync(image, new Uint8Array(64 * 512));
    await fuzzDevice(() => virtioBlk({ path: image }), blkHeader, 0);
  });

  it('virtio-vsock (transmit queue)', async () => {
    await fuzzDevice(() => virtioVsock({ guestCid: 3, uds: join(dir, 'v.sock') }), vsockHeader, 1);
  });

  it('virtio-net (transmit queue)', async () => {
    const sent: number[] = [];
    const backend = {
      write: (p: Uint8Array) => (sent.push(p.length), true),
      read: () => 0,
      watchReadable: () => () => undefined,
    };
    await fuzzDevice(() => virtioNet({ backend }), fc.uint8Array({ minLength: 12, maxLength: 60 }), 1);
  });
});
