/**
 * virtio-vsock on the mock kernel with real Unix sockets on the host side: the test plays the
 * guest's driver (packets on the transmit queue, buffers on the receive queue) and the host's
 * programs (a listener on `<uds>_<port>`, a client writing `CONNECT <port>`).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioMmioReg as R } from '../../../src/devices/virtio/mmio-transport';
import { VSOCK_HDR_SIZE, VsockOp, virtioVsock } from '../../../src/devices/virtio/vsock';
import { mockVirtio, until } from './mock-machine';

const GUEST = 3n;
const RXBUF = 0x20_0000n;
const TXBUF = 0x28_0000n;

interface Packet {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
  payload: string;
}

let dir: string;
let uds: string;
const servers: Server[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kvmrx-vsock-'));
  uds = join(dir, 'v.sock');
});
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  rmSync(dir, { recursive: true, force: true });
});

function machine() {
  const vsock = virtioVsock({ guestCid: 3, uds });
  const m = mockVirtio(vsock, 32);
  const [rxq, txq] = m.setUp();
  let txSlot = 0;
  let rxSlot = 0;
  const received: Packet[] = [];
  /** The guest driver sends one packet. */
  const send = async (p: Partial<Packet> & { op: number }) => {
    const payload = Buffer.from(p.payload ?? '', 'latin1');
    const b = new Uint8Array(VSOCK_HDR_SIZE + payload.length);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, p.srcCid ?? GUEST, true);
    v.setBigUint64(8, p.dstCid ?? 2n, true);
    v.setUint32(16, p.srcPort ?? 1000, true);
    v.setUint32(20, p.dstPort ?? 5000, true);
    v.setUint32(24, payload.length, true);
    v.setUint16(28, 1, true);
    v.setUint16(30, p.op, true);
    v.setUint32(32, p.flags ?? 0, true);
    v.setUint32(36, p.bufAlloc ?? 65536, true);
    v.setUint32(40, p.fwdCnt ?? 0, true);
    b.set(payload, VSOCK_HDR_SIZE);
    const at = TXBUF + BigInt((txSlot++ % 16) * 0x1000);
    m.memory.write(at, b);
    txq.add([{ addr: at, len: b.length }], []);
    txq.getUsed();
    await m.notify(1);
  };
  /** The guest driver posts receive buffers. */
  const post = async (n: number) => {
    for (let i = 0; i < n; i++) rxq.add([], [{ addr: RXBUF + BigInt((rxSlot++ % 16) * 0x1000), len: 4096 }]);
    await m.notify(0);
  };
  /** The packets the device put in the receive buffers so far. */
  const take = () => {
    for (const u of rxq.getUsed()) {
      // Buffers are reused in order: the used id's descriptor tells where it was.
      const addr = rxq.readDesc(u.id).addr;
      const b = m.memory.read(addr, u.len);
      const v = new DataView(b.buffer);
      received.push({
        srcCid: v.getBigUint64(0, true),
        dstCid: v.getBigUint64(8, true),
        srcPort: v.getUint32(16, true),
        dstPort: v.getUint32(20, true),
        op: v.getUint16(30, true),
        flags: v.getUint32(32, true),
        bufAlloc: v.getUint32(36, true),
        fwdCnt: v.getUint32(40, true),
        payload: Buffer.from(b.subarray(VSOCK_HDR_SIZE)).toString('latin1'),
      });
    }
    return received;
  };
  const waitFor = async (op: number, what: string) => {
    await until(() => take().some((p) => p.op === op), what);
    return received.find((p) => p.op === op)!;
  };
  return { ...m, vsock, send, post, take, waitFor, received };
}

const listen = (path: string, onSocket: (s: Socket) => void) =>
  new Promise<Server>((resolve) => {
    const s = createServer(onSocket);
    servers.push(s);
    s.listen(path, () => resolve(s));
  });

describe('virtio-vsock (mock kernel, Unix sockets)', () => {
  it('offers the guest CID in the config space and no features', () => {
    const m = machine();
    expect([m.regs.read(R.config, 4), m.regs.read(R.config + 4, 4)]).toEqual([3, 0]);
    m.regs.write(R.deviceFeaturesSel, 4, 0);
    expect(m.regs.read(R.deviceFeatures, 4)).toBe(1 << 29); // RING_EVENT_IDX only (transport)
    expect(m.regs.read(R.deviceId, 4)).toBe(19);
    m.kvm.close();
  });

  it('a guest connection to the host port P reaches <uds>_P; data flows both ways; SHUTDOWN ends it', async () => {
    let got = '';
    let ended = false;
    let peer: Socket | undefined;
    await listen(`${uds}_5000`, (s) => {
      peer = s;
      s.on('data', (d) => (got += d.toString()));
      s.on('end', () => (ended = true));
    });
    const m = machine();
    await m.post(8);
    await m.send({ op: VsockOp.request });
    const response = await m.waitFor(VsockOp.response, 'RESPONSE');
    expect(response).toMatchObject({ srcCid: 2n, dstCid: GUEST, srcPort: 5000, dstPort: 1000, bufAlloc: 256 * 1024 });
    await m.send({ op: VsockOp.rw, payload: 'hello' });
    await until(() => got === 'hello', 'the data on the host socket');
    peer!.write('world');
    const rw = await m.waitFor(VsockOp.rw, 'RW from the host');
    expect(rw.payload).toBe('world');
    await m.send({ op: VsockOp.shutdown, flags: 3 });
    await until(() => ended, 'the host socket to end');
    expect(m.vsock.stats).toMatchObject({ connected: 1, badPackets: 0 });
    m.kvm.close();
  });

  it('a host program connects with CONNECT <port>: OK once the guest accepts', async () => {
    const m = machine();
    await m.post(8);
    const client = createConnection(uds);
    let reply = '';
    client.on('data', (d) => (reply += d.toString()));
    await new Promise((r) => client.on('connect', r));
    client.write('CONNECT 1234\n');
    const request = await m.waitFor(VsockOp.request, 'REQUEST');
    expect(request).toMatchObject({ srcCid: 2n, dstCid: GUEST, dstPort: 1234 });
    await m.send({ op: VsockOp.response, srcPort: 1234, dstPort: request.srcPort });
    await until(() => reply.includes('\n'), 'OK');
    expect(reply).toBe(`OK ${request.srcPort}\n`);
    client.destroy();
    m.kvm.close();
  });

  it('the guest refusing (RST) closes the host program’s connection without OK, and is counted', async () => {
    const m = machine();
    await m.post(8);
    const client = createConnection(uds);
    let reply = '';
    let closed = false;
    client.on('data', (d) => (reply += d.toString()));
    client.on('close', () => (closed = true));
    await new Promise((r) => client.on('connect', r));
    client.write('CONNECT 4321\n');
    const request = await m.waitFor(VsockOp.request, 'REQUEST');
    await m.send({ op: VsockOp.rst, srcPort: 4321, dstPort: request.srcPort });
    await until(() => closed, 'the connection to close');
    expect(reply).toBe('');
    expect(m.vsock.stats.refusedByGuest).toBe(1);
    m.kvm.close();
  });

  it('refuses a guest connection nobody listens for, and answers bad packets with RST', async () => {
    const m = machine();
    await m.post(8);
    await m.send({ op: VsockOp.request, dstPort: 7777 });
    await until(() => m.vsock.stats.refusedByHost === 1, 'the refusal');
    await m.waitFor(VsockOp.rst, 'RST');
    await m.send({ op: VsockOp.rw, srcPort: 1, dstPort: 2, payload: 'x' }); // no such connection
    await m.send({ op: VsockOp.request, srcCid: 9n }); // not the guest's CID
    await until(() => m.vsock.stats.badPackets === 2, 'the bad packets');
    expect(m.dev.failures).toBe(0);
    m.kvm.close();
  });

  it('checks its options', () => {
    for (const guestCid of [0, 1, 2, 0xffff_ffff, 1.5]) expect(() => virtioVsock({ guestCid })).toThrow(RangeError);
    expect(() => virtioVsock({ guestCid: 3, uds: '' })).toThrow(TypeError);
  });
});
