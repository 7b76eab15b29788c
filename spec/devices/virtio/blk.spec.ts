/**
 * virtio-blk on the mock kernel, over a real image file: requests as Linux's virtio_blk builds
 * them (header, data, status), written by the test driver; the file is checked directly.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioMmioReg as R } from '../../../src/devices/virtio/mmio-transport';
import {
  VirtioBlkRequest as T,
  VirtioBlkStatus,
  virtioBlk,
  type VirtioBlkOptions,
} from '../../../src/devices/virtio/blk';
import { mockVirtio, until } from './mock-machine';
import type { SplitDriver } from './split-driver';

const SECTORS = 64;
const HDR = 0x20_0000n;
const DATA = 0x21_0000n;
const STATUS = 0x2f_0000n;

let dir: string;
let image: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kvmrx-blk-'));
  image = join(dir, 'disk.img');
  const bytes = new Uint8Array(SECTORS * 512);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + (i >> 9)) & 0xff;
  writeFileSync(image, bytes);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function machine(options: Partial<VirtioBlkOptions> = {}) {
  const errors: string[] = [];
  const m = mockVirtio(virtioBlk({ path: image, onError: (e) => errors.push(e), ...options }), 16);
  const [q] = m.setUp();
  let slot = 0;
  /** Queues one request; returns its head and where its data and status live. */
  const request = (type: number, sector: bigint, opts: { out?: Uint8Array; inLen?: number; status?: boolean } = {}) => {
    const n = slot++;
    const hdr = HDR + BigInt(n * 16);
    const data = DATA + BigInt(n * 0x2000);
    const status = STATUS + BigInt(n);
    const h = new DataView(new ArrayBuffer(16));
    h.setUint32(0, type, true);
    h.setBigUint64(8, sector, true);
    m.memory.write(hdr, new Uint8Array(h.buffer));
    m.memory.write(status, Uint8Array.of(0xff));
    const out = [{ addr: hdr, len: 16 }];
    const in_ = [];
    if (opts.out) {
      m.memory.write(data, opts.out);
      out.push({ addr: data, len: opts.out.length });
    }
    if (opts.inLen) in_.push({ addr: data, len: opts.inLen });
    if (opts.status !== false) in_.push({ addr: status, len: 1 });
    const head = q.add(out, in_);
    return { head, status: () => m.memory.read(status, 1)[0], data: (len: number) => m.memory.read(data, len) };
  };
  const used = collect(q);
  return { ...m, q, request, used, errors };
}

/** Every used element the device returned so far, in ring order. */
function collect(q: SplitDriver) {
  const all: Array<{ id: number; len: number }> = [];
  return (count: number) =>
    until(() => (all.push(...q.getUsed()), all.length >= count), `${count} used`).then(() => all);
}

describe('virtio-blk (mock kernel, real file)', () => {
  it('offers FLUSH and the capacity in 512-byte sectors', () => {
    const { regs, kvm } = machine();
    regs.write(R.deviceFeaturesSel, 4, 0);
    expect(regs.read(R.deviceFeatures, 4) & ((1 << 9) | (1 << 5))).toBe(1 << 9);
    expect([regs.read(R.config, 4), regs.read(R.config + 4, 4)]).toEqual([SECTORS, 0]);
    expect(regs.read(R.deviceId, 4)).toBe(2);
    kvm.close();
  });

  it('READ copies the sectors into the buffer; the used length counts data and status', async () => {
    const m = machine();
    const r = m.request(T.in, 2n, { inLen: 1024 });
    await m.notify();
    expect(await m.used(1)).toEqual([{ id: r.head, len: 1025 }]);
    expect(r.status()).toBe(VirtioBlkStatus.ok);
    expect(Buffer.from(r.data(1024)).equals(readFileSync(image).subarray(1024, 2048))).toBe(true);
    m.kvm.close();
  });

  it('WRITE reaches the file, and a FLUSH sent with it completes after it', async () => {
    const m = machine();
    const data = new Uint8Array(512).fill(0xc3);
    const w = m.request(T.out, 5n, { out: data });
    const f = m.request(T.flush, 0n);
    await m.notify();
    expect(await m.used(2)).toEqual([
      { id: w.head, len: 1 },
      { id: f.head, len: 1 },
    ]);
    expect([w.status(), f.status()]).toEqual([0, 0]);
    expect(
      readFileSync(image)
        .subarray(5 * 512, 6 * 512)
        .every((b) => b === 0xc3),
    ).toBe(true);
    m.kvm.close();
  });

  it('GET_ID answers the serial, zero-padded to 20 bytes', async () => {
    const m = machine({ serial: 'disk-0' });
    const r = m.request(T.getId, 0n, { inLen: 20 });
    await m.notify();
    expect(await m.used(1)).toEqual([{ id: r.head, len: 21 }]);
    expect(Buffer.from(r.data(20)).toString('latin1')).toBe('disk-0'.padEnd(20, '\0'));
    m.kvm.close();
  });

  it('fails bad requests with the status byte and goes on: past the end, partial sectors, unknown types', async () => {
    const m = machine();
    const before = readFileSync(image);
    const past = m.request(T.in, BigInt(SECTORS - 1), { inLen: 1024 });
    const partial = m.request(T.out, 0n, { out: new Uint8Array(100) });
    const unknown = m.request(99, 0n);
    const ok = m.request(T.in, 0n, { inLen: 512 });
    await m.notify();
    await m.used(4);
    expect([past.status(), partial.status(), unknown.status(), ok.status()]).toEqual([
      VirtioBlkStatus.ioerr,
      VirtioBlkStatus.ioerr,
      VirtioBlkStatus.unsupp,
      VirtioBlkStatus.ok,
    ]);
    expect(readFileSync(image).equals(before)).toBe(true);
    expect(m.errors).toHaveLength(3);
    expect(m.errors[0]).toMatch(/past the end \(64 sectors\)/);
    expect([m.dev.status, m.dev.failures]).toEqual([15, 0]);
    m.kvm.close();
  });

  it('a request with no status byte is returned with nothing written', async () => {
    const m = machine();
    const r = m.request(T.in, 0n, { status: false });
    await m.notify();
    expect(await m.used(1)).toEqual([{ id: r.head, len: 0 }]);
    expect(m.errors[0]).toMatch(/without a header or a status byte/);
    m.kvm.close();
  });

  it('read-only: offers RO, refuses writes with IOERR, leaves the file as it was', async () => {
    const m = machine({ readOnly: true });
    m.regs.write(R.deviceFeaturesSel, 4, 0);
    expect(m.regs.read(R.deviceFeatures, 4) & ((1 << 9) | (1 << 5))).toBe(1 << 5);
    const before = readFileSync(image);
    const w = m.request(T.out, 0n, { out: new Uint8Array(512).fill(1) });
    const r = m.request(T.in, 0n, { inLen: 512 });
    await m.notify();
    await m.used(2);
    expect([w.status(), r.status()]).toEqual([VirtioBlkStatus.ioerr, VirtioBlkStatus.ok]);
    expect(readFileSync(image).equals(before)).toBe(true);
    m.kvm.close();
  });

  it('checks its options', () => {
    expect(() => virtioBlk({ path: '' })).toThrow(TypeError);
    expect(() => virtioBlk({ path: join(dir, 'missing.img') })).toThrow(/ENOENT/);
    expect(() => virtioBlk({ path: dir })).toThrow(/regular file/);
    writeFileSync(join(dir, 'odd.img'), new Uint8Array(1000));
    expect(() => virtioBlk({ path: join(dir, 'odd.img') })).toThrow(/multiple of 512/);
    expect(() => virtioBlk({ path: image, serial: 'x'.repeat(21) })).toThrow(/20 printable/);
    expect(() => virtioBlk({ path: image, concurrency: 0 })).toThrow(RangeError);
  });
});
