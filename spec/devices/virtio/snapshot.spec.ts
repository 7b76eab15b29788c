/**
 * Snapshots of virtio-mmio devices on the mock kernel (issue 11): a test driver sets a device up
 * and has requests in flight, `quiesce()` waits for them, `saveState()` goes through JSON, and a
 * device built on a new mock VM, with a copy of the guest memory, takes the state with
 * `restoreState()`; the same driver then goes on with it on the same rings.
 */
import fc from 'fast-check';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Subject } from 'rxjs';
import { VirtioBlkRequest as T, VirtioBlkStatus, virtioBlk } from '../../../src/devices/virtio/blk';
import { virtioConsole } from '../../../src/devices/virtio/console';
import type { VirtioDevice, VirtioMmioDevice, VirtioMmioState } from '../../../src/devices/virtio/mmio-device';
import { VirtioMmioReg as R, VirtioStatus as S } from '../../../src/devices/virtio/mmio-transport';
import { virtioNet, type VirtioNetBackend } from '../../../src/devices/virtio/net';
import { virtioRng } from '../../../src/devices/virtio/rng';
import { VSOCK_EVENT_TRANSPORT_RESET, virtioVsock } from '../../../src/devices/virtio/vsock';
import type { GuestMemoryMap } from '../../../src/wrappers/guest-memory';
import { RAM, mockVirtio, tick, until } from './mock-machine';
import { SplitDriver } from './split-driver';

const QSIZE = 8;
const BUF = 0x20_0000n; // buffers: BUF + n * 0x1000
const RINGS = 0x10_0000; // mock-machine's queue i rings at RINGS + i * 0x1_0000
const EVENT_IDX = 1n << 29n;
const VERSION_1 = 1n << 32n;

type Machine = ReturnType<typeof mockVirtio>;

/** Completions of `device` wait while the gate is shut: requests stay in flight. */
function gated(device: VirtioDevice) {
  let open = true;
  const waiting: Array<() => void> = [];
  const wrapped: VirtioDevice = {
    ...device,
    activate: (ctx) =>
      device.activate({
        ...ctx,
        queues: ctx.queues.map((q) => ({
          ...q,
          complete: (chain, len) => (open ? q.complete(chain, len) : void waiting.push(() => q.complete(chain, len))),
        })),
      }),
  };
  return {
    device: wrapped,
    shut: () => void (open = false),
    open: () => {
      open = true;
      for (const f of waiting.splice(0)) f();
    },
    waiting: () => waiting.length,
  };
}

/** Tracks a promise's settlement. */
function watch(p: Promise<void>) {
  const s = { resolved: false, error: undefined as unknown };
  p.then(
    () => (s.resolved = true),
    (e: unknown) => (s.error = e),
  );
  return s;
}

/** A new mock VM with a copy of `from`'s guest memory and `device` on it, not yet restored. */
function machineWithMemoryOf(from: Machine, device: VirtioDevice): Machine {
  const m = mockVirtio(device, QSIZE);
  m.memory.write(0n, from.memory.read(0n, RAM));
  return m;
}

/** The driver goes on in the restored VM: the same driver state over the new guest memory. */
function moveDriver(d: SplitDriver, to: Machine): void {
  (d as unknown as { mem: GuestMemoryMap }).mem = to.memory;
}

/** saveState through JSON, checked to be plain data that survives it unchanged. */
function saveThroughJson(dev: VirtioMmioDevice): VirtioMmioState {
  const state = dev.saveState();
  const text = JSON.stringify(state);
  const back = JSON.parse(text) as VirtioMmioState;
  expect(back).toEqual(state);
  return back;
}

const code = (e: unknown) => (e as { code?: string }).code;

/** What `fn` throws. */
function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('it did not throw');
}

/** Every used element a driver collects, across the machines it is moved to. */
function collector(q: SplitDriver) {
  const all: Array<{ id: number; len: number }> = [];
  return {
    all,
    wait: (count: number, what = `${count} used`) =>
      until(() => (all.push(...q.getUsed()), all.length >= count), what).then(() => all),
  };
}

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kvmrx-vsnap-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/**
 * virtio-net quiesced with two receive buffers posted (held) and one used, one packet sent, and a
 * packet that arrived while quiesced still on the host side; its state through JSON.
 */
async function netWithHeldBuffers() {
  const host = memoryBackend();
  const m1 = mockVirtio(virtioNet({ backend: host.backend }), QSIZE);
  const [rx, tx] = m1.setUp();
  const rxUsed = collector(rx);
  await tick();
  const b0 = rx.add([], [{ addr: BUF, len: 1526 }]);
  const b1 = rx.add([], [{ addr: BUF + 0x1000n, len: 1526 }]);
  await m1.notify(0);
  host.arrive(packet(60, 1));
  await rxUsed.wait(1);
  const b2 = rx.add([], [{ addr: BUF + 0x2000n, len: 1526 }]);
  await m1.notify(0);
  m1.memory.write(BUF + 0x8000n, packet(70, 9));
  tx.add([{ addr: BUF + 0x8000n, len: 70 }], []);
  await m1.notify(1);
  await until(() => host.sent.length === 1, 'the packet sent');
  await m1.dev.quiesce(); // resolves with two receive buffers still posted
  host.arrive(packet(80, 2)); // arrives while quiesced: stays on the host side
  await tick();
  expect(rx.usedIdx()).toBe(1);
  expect(host.inbox).toHaveLength(1);
  const state = saveThroughJson(m1.dev);
  return { host, m1, rx, tx, rxUsed, b0, b1, b2, state };
}

describe('VirtioMmioDevice snapshots (mock kernel)', () => {
  it('virtio-rng: quiesce waits for the requests in flight, takes no new one; the restored device goes on', async () => {
    const g = gated(virtioRng({ fill: (b) => b.fill(0x42) }));
    const m1 = mockVirtio(g.device, QSIZE);
    const [q] = m1.setUp(); // VERSION_1 and EVENT_IDX
    const used = collector(q);
    await tick();
    const req = (n: number) => q.add([], [{ addr: BUF + BigInt(n) * 0x1000n, len: 16 }]);
    const heads = [req(0), req(1), req(2)];
    await m1.notify();
    await used.wait(3);
    // Two requests in flight: taken, their completions held back.
    g.shut();
    heads.push(req(3), req(4));
    await m1.notify();
    expect(g.waiting()).toBe(2);
    const quiesced = watch(m1.dev.quiesce());
    await tick();
    await tick();
    expect(quiesced.resolved).toBe(false);
    expect(code(caught(() => m1.dev.saveState()))).toBe('ERR_KVM_NOT_QUIESCED');
    // The guest makes one more available and notifies: not taken while quiescing.
    heads.push(req(5));
    await m1.notify();
    expect(g.waiting()).toBe(2);
    g.open();
    await until(() => quiesced.resolved, 'the quiesce');
    expect(q.usedIdx()).toBe(5); // both in flight were completed before it resolved
    expect(m1.dev.quiesced).toBe(true);
    await tick();
    expect(q.usedIdx()).toBe(5); // and request 5 stays on the ring
    const state = saveThroughJson(m1.dev);
    expect(state).toMatchObject({
      version: 1,
      deviceId: 4,
      name: 'virtio-rng',
      status: 15,
      driverFeatures: String(VERSION_1 | EVENT_IDX),
      config: [],
      interruptStatus: 1,
    });
    expect(state.queues[0]).toEqual({
      size: QSIZE,
      ready: true,
      descTable: String(RINGS),
      availRing: String(RINGS + 0x4000),
      usedRing: String(RINGS + 0x8000),
      nextAvail: 5,
      nextUsed: 5,
      signalledUsed: 5,
      held: [],
    });

    const m2 = machineWithMemoryOf(m1, virtioRng({ fill: (b) => b.fill(0x77) }));
    m1.kvm.close(); // the old process is gone
    moveDriver(q, m2);
    m2.dev.restoreState(state);
    expect(m2.dev.status).toBe(15);
    expect(m2.regs.read(R.interruptStatus, 4)).toBe(1);
    // The ring is scanned at restore: request 5 (made available after the last notify) is served.
    await used.wait(6, 'request 5');
    expect(q.usedIdx()).toBe(6);
    heads.push(req(6), req(7));
    await m2.notify();
    const all = await used.wait(8);
    expect(all.map((u) => u.id)).toEqual(heads); // each request once, in order: none twice, none lost
    expect(all.every((u) => u.len === 16)).toBe(true);
    expect(Array.from(m2.memory.read(BUF + 0x6000n, 16))).toEqual(Array<number>(16).fill(0x77));
    expect(Array.from(m2.memory.read(BUF + 0x4000n, 16))).toEqual(Array<number>(16).fill(0x42));
    expect(m2.dev.failures).toBe(0);
    m2.kvm.close();
  });

  it('unquiesce takes what the guest notified meanwhile', async () => {
    const m = mockVirtio(virtioRng(), QSIZE);
    const [q] = m.setUp();
    await tick();
    await m.dev.quiesce();
    q.add([], [{ addr: BUF, len: 8 }]);
    await m.notify();
    expect(q.usedIdx()).toBe(0);
    m.dev.unquiesce();
    expect(m.dev.quiesced).toBe(false);
    await until(() => q.usedIdx() === 1, 'the request');
    expect(code(caught(() => m.dev.saveState()))).toBe('ERR_KVM_NOT_QUIESCED');
    m.kvm.close();
  });

  it('a quiesce that unquiesce overtakes rejects with ERR_KVM_RESUMED; on a closed device it resolves', async () => {
    const g = gated(virtioRng());
    const m = mockVirtio(g.device, QSIZE);
    const [q] = m.setUp();
    await tick();
    g.shut();
    q.add([], [{ addr: BUF, len: 8 }]);
    await m.notify();
    const p = m.dev.quiesce();
    m.dev.unquiesce();
    await expect(p).rejects.toMatchObject({ code: 'ERR_KVM_RESUMED' });
    const p2 = m.dev.quiesce();
    m.dev.close();
    await expect(p2).resolves.toBeUndefined();
    await expect(m.dev.quiesce()).resolves.toBeUndefined();
    expect(code(caught(() => m.dev.saveState()))).toBe('ERR_KVM_CLOSED');
    m.kvm.close();
  });

  it('virtio-blk: writes in flight reach the image before quiesce resolves; the restored disk goes on', async () => {
    const image = join(dir, 'disk.img');
    const bytes = new Uint8Array(64 * 512);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7) & 0xff;
    writeFileSync(image, bytes);
    const g = gated(virtioBlk({ path: image }));
    const m1 = mockVirtio(g.device, 16);
    const [q] = m1.setUp();
    const used = collector(q);
    let slot = 0;
    const request = (type: number, sector: number, data?: Uint8Array, inLen = 0) => {
      const n = slot++;
      const hdr = BUF + BigInt(n) * 0x1000n;
      const buf = hdr + 0x100n;
      const status = hdr + 0xff0n;
      const h = new DataView(new ArrayBuffer(16));
      h.setUint32(0, type, true);
      h.setBigUint64(8, BigInt(sector), true);
      q.mem.write(hdr, new Uint8Array(h.buffer));
      q.mem.write(status, Uint8Array.of(0xff));
      const out = [{ addr: hdr, len: 16 }];
      const in_ = [];
      if (data !== undefined) {
        q.mem.write(buf, data);
        out.push({ addr: buf, len: data.length });
      }
      if (inLen > 0) in_.push({ addr: buf, len: inLen });
      in_.push({ addr: status, len: 1 });
      const head = q.add(out, in_);
      return { head, status: () => q.mem.read(status, 1)[0], data: (len: number) => q.mem.read(buf, len) };
    };
    const r0 = request(T.in, 0, undefined, 512);
    await m1.notify();
    await used.wait(1);
    // Two writes and a flush in flight, with their completions held back by the gate.
    g.shut();
    const w1 = request(T.out, 3, new Uint8Array(512).fill(0xa1));
    const w2 = request(T.out, 4, new Uint8Array(1024).fill(0xb2));
    const f = request(T.flush, 0);
    await m1.notify();
    await until(() => g.waiting() === 3, 'the requests served');
    const quiesced = watch(m1.dev.quiesce());
    await tick();
    expect(quiesced.resolved).toBe(false);
    g.open();
    await until(() => quiesced.resolved, 'the quiesce');
    expect(q.usedIdx()).toBe(4);
    expect([w1.status(), w2.status(), f.status()]).toEqual([0, 0, 0]);
    const onDisk = readFileSync(image);
    expect(onDisk.subarray(3 * 512, 4 * 512).every((b) => b === 0xa1)).toBe(true);
    expect(onDisk.subarray(4 * 512, 6 * 512).every((b) => b === 0xb2)).toBe(true);
    const state = saveThroughJson(m1.dev);
    expect(state.model).toEqual({ sectors: '64', readOnly: false });
    expect(state.config).toEqual([64, 0, 0, 0, 0, 0, 0, 0]);
    expect(state.queues[0]).toMatchObject({ nextAvail: 4, nextUsed: 4, held: [] });

    // The new process opens the image again.
    const m2 = machineWithMemoryOf(m1, virtioBlk({ path: image }));
    m1.kvm.close();
    moveDriver(q, m2);
    m2.dev.restoreState(state);
    const r1 = request(T.in, 3, undefined, 1536);
    const w3 = request(T.out, 10, new Uint8Array(512).fill(0xc3));
    await m2.notify();
    const all = await used.wait(6);
    expect(all.map((u) => u.id)).toEqual([r0.head, w1.head, w2.head, f.head, r1.head, w3.head]);
    expect(all[4].len).toBe(1537);
    expect([r1.status(), w3.status()]).toEqual([VirtioBlkStatus.ok, VirtioBlkStatus.ok]);
    expect(Array.from(r1.data(1536))).toEqual([...Array<number>(512).fill(0xa1), ...Array<number>(1024).fill(0xb2)]);
    expect(
      readFileSync(image)
        .subarray(10 * 512, 11 * 512)
        .every((b) => b === 0xc3),
    ).toBe(true);
    expect(m2.dev.failures).toBe(0);
    m2.kvm.close();
  });

  it('virtio-blk: quiesce right after the notify waits for the real file I/O', async () => {
    const image = join(dir, 'disk.img');
    writeFileSync(image, new Uint8Array(64 * 512));
    const m = mockVirtio(virtioBlk({ path: image }), 32);
    const [q] = m.setUp();
    // A first request, so that the image is open (chains are taken once it is).
    q.add([{ addr: BUF + 0x10000n, len: 16 }], [{ addr: BUF + 0x10100n, len: 1 }]);
    await m.notify();
    await until(() => q.usedIdx() === 1, 'the first request');
    for (let n = 0; n < 6; n++) {
      const hdr = BUF + BigInt(n) * 0x2000n;
      const h = new DataView(new ArrayBuffer(16));
      h.setUint32(0, T.out, true);
      h.setBigUint64(8, BigInt(8 * n), true);
      m.memory.write(hdr, new Uint8Array(h.buffer));
      m.memory.write(hdr + 0x100n, new Uint8Array(4096).fill(n + 1));
      q.add(
        [
          { addr: hdr, len: 16 },
          { addr: hdr + 0x100n, len: 4096 },
        ],
        [{ addr: hdr + 0x80n, len: 1 }],
      );
    }
    await m.notify();
    await m.dev.quiesce();
    expect(q.usedIdx()).toBe(7);
    const onDisk = readFileSync(image);
    for (let n = 0; n < 6; n++) expect(onDisk[n * 4096 + 100]).toBe(n + 1);
    m.kvm.close();
  });

  it('virtio-net: posted receive buffers are held, not waited for; the restored device fills them first', async () => {
    const { host, m1, rx, tx, rxUsed, b0, b1, b2, state } = await netWithHeldBuffers();
    expect(rx.usedIdx()).toBe(1);
    expect(host.inbox).toHaveLength(1);
    expect(state.queues[0]).toMatchObject({ nextAvail: 3, nextUsed: 1, held: [b1, b2] });
    expect(state.queues[1]).toMatchObject({ nextAvail: 1, nextUsed: 1, held: [] });
    expect(state.model).toBeUndefined();

    const host2 = memoryBackend(); // the tap, reopened
    const m2 = machineWithMemoryOf(m1, virtioNet({ backend: host2.backend }));
    m1.kvm.close();
    moveDriver(rx, m2);
    moveDriver(tx, m2);
    m2.dev.restoreState(state);
    await tick();
    expect(host2.watching()).toBe(true); // it has the held buffers again
    host2.arrive(packet(90, 3));
    host2.arrive(packet(100, 4));
    const all = await rxUsed.wait(3);
    expect(all).toEqual([
      { id: b0, len: 60 },
      { id: b1, len: 90 },
      { id: b2, len: 100 },
    ]);
    expect(m2.memory.read(BUF + 0x1000n + 89n, 1)[0]).toBe(3);
    m2.memory.write(BUF + 0x9000n, packet(64, 5));
    tx.add([{ addr: BUF + 0x9000n, len: 64 }], []);
    await m2.notify(1);
    await until(() => host2.sent.length === 1, 'the packet sent after the restore');
    expect(tx.getUsed()).toHaveLength(2);
    expect(m2.dev.failures).toBe(0);
    m2.kvm.close();
  });

  it("activation 'deferred': registers back at once, the model's work at the next microtask", async () => {
    const { m1, rx, state } = await netWithHeldBuffers();
    const host2 = memoryBackend();
    const m2 = machineWithMemoryOf(m1, virtioNet({ backend: host2.backend }));
    m1.kvm.close();
    moveDriver(rx, m2);
    m2.dev.restoreState(state, { activation: 'deferred' });
    expect(m2.dev.status).toBe(state.status); // what a vCPU reads meanwhile
    expect(host2.watching()).toBe(false); // the held buffers not handed back yet
    await Promise.resolve();
    expect(host2.watching()).toBe(true);
    host2.arrive(packet(90, 3));
    await until(() => rx.usedIdx() === 2, 'a held buffer filled');
    expect(m2.dev.failures).toBe(0);
    m2.kvm.close();
  });

  it("activation 'deferred': a call on the device first makes the activation; close() drops it", async () => {
    const { m1, rx, b1, b2, state } = await netWithHeldBuffers();
    const host2 = memoryBackend();
    const m2 = machineWithMemoryOf(m1, virtioNet({ backend: host2.backend }));
    moveDriver(rx, m2);
    m2.dev.restoreState(state, { activation: 'deferred' });
    await m2.dev.quiesce(); // activates first: the held chains are its own again
    expect(saveThroughJson(m2.dev).queues[0]).toMatchObject({ nextAvail: 3, nextUsed: 1, held: [b1, b2] });
    m2.kvm.close();

    const host3 = memoryBackend();
    const m3 = machineWithMemoryOf(m1, virtioNet({ backend: host3.backend }));
    m3.dev.restoreState(state, { activation: 'deferred' });
    m3.dev.close();
    await tick();
    expect(host3.watching()).toBe(false);
    m3.kvm.close();
    m1.kvm.close();
  });

  it('virtio-net: a packet for a held buffer during quiesce waits; unquiesce delivers it', async () => {
    const host = memoryBackend();
    const m = mockVirtio(virtioNet({ backend: host.backend }), QSIZE);
    const [rx] = m.setUp();
    await tick();
    rx.add([], [{ addr: BUF, len: 1526 }]);
    await m.notify(0);
    await m.dev.quiesce();
    host.arrive(packet(60, 1));
    await tick();
    expect(rx.usedIdx()).toBe(0);
    m.dev.unquiesce();
    await until(() => rx.usedIdx() === 1, 'the packet');
    m.kvm.close();
  });

  it('virtio-vsock: after a restore the event queue gets a TRANSPORT_RESET', async () => {
    const m1 = mockVirtio(virtioVsock({ guestCid: 3 }), QSIZE);
    const [rx, , ev] = m1.setUp();
    await tick();
    rx.add([], [{ addr: BUF, len: 4096 }]);
    const e0 = ev.add([], [{ addr: BUF + 0x2000n, len: 4 }]);
    const e1 = ev.add([], [{ addr: BUF + 0x3000n, len: 4 }]);
    m1.memory.write(BUF + 0x2000n, Uint8Array.of(0xff, 0xff, 0xff, 0xff));
    await m1.notify(0);
    await m1.notify(2);
    await m1.dev.quiesce();
    expect(ev.usedIdx()).toBe(0); // no event before
    const state = saveThroughJson(m1.dev);
    expect(state.model).toEqual({ activated: true });
    expect(state.queues[2]).toMatchObject({ nextAvail: 2, nextUsed: 0, held: [e0, e1] });
    expect(state.queues[0].held).toHaveLength(1);

    const m2 = machineWithMemoryOf(m1, virtioVsock({ guestCid: 3 }));
    m1.kvm.close();
    moveDriver(ev, m2);
    m2.dev.restoreState(state);
    await until(() => ev.usedIdx() === 1, 'the event');
    expect(ev.getUsed()).toEqual([{ id: e0, len: 4 }]);
    expect(new DataView(m2.memory.read(BUF + 0x2000n, 4).buffer).getUint32(0, true)).toBe(VSOCK_EVENT_TRANSPORT_RESET);
    expect(m2.regs.read(R.interruptStatus, 4) & 1).toBe(1);
    await tick();
    expect(ev.usedIdx()).toBe(1); // one event only; the other buffer stays posted
    m2.kvm.close();
  });

  it('virtio-console: input not yet delivered is saved and reaches the guest after the restore', async () => {
    const input = new Subject<Uint8Array>();
    const m1 = mockVirtio(virtioConsole({ input }), QSIZE);
    const [rx] = m1.setUp();
    const used = collector(rx);
    await tick();
    rx.add([], [{ addr: BUF, len: 64 }]);
    await m1.notify(0);
    input.next(Buffer.from('hello'));
    await used.wait(1);
    const b1 = rx.add([], [{ addr: BUF + 0x1000n, len: 64 }]);
    await m1.notify(0);
    await m1.dev.quiesce();
    input.next(Buffer.from('world')); // typed while quiesced: kept, not delivered
    await tick();
    expect(rx.usedIdx()).toBe(1);
    const state = saveThroughJson(m1.dev);
    expect(state.model).toEqual({ pendingInput: Buffer.from('world').toString('base64') });
    expect(state.queues[0].held).toEqual([b1]);

    const m2 = machineWithMemoryOf(m1, virtioConsole({ input: new Subject<Uint8Array>() }));
    m1.kvm.close();
    moveDriver(rx, m2);
    m2.dev.restoreState(state);
    const all = await used.wait(2);
    expect(all[1]).toEqual({ id: b1, len: 5 });
    expect(Buffer.from(m2.memory.read(BUF + 0x1000n, 5)).toString()).toBe('world');
    m2.kvm.close();
  });

  it('a device not yet DRIVER_OK round-trips; the driver finishes its set-up on the restored one', async () => {
    const m1 = mockVirtio(virtioRng({ fill: (b) => b.fill(0x11) }), QSIZE);
    const { regs } = m1;
    regs.write(R.status, 4, S.acknowledge);
    regs.write(R.status, 4, S.acknowledge | S.driver);
    regs.write(R.driverFeaturesSel, 4, 1);
    regs.write(R.driverFeatures, 4, 1);
    regs.write(R.status, 4, S.acknowledge | S.driver | S.featuresOk);
    regs.write(R.queueSel, 4, 0);
    regs.write(R.queueNum, 4, QSIZE);
    regs.write(R.queueDescLow, 4, RINGS);
    regs.write(R.queueDriverLow, 4, RINGS + 0x4000);
    regs.write(R.queueDeviceLow, 4, RINGS + 0x8000);
    regs.write(R.queueReady, 4, 1);
    m1.memory.write(BigInt(RINGS), new Uint8Array(0x1_0000));
    await m1.dev.quiesce();
    const state = saveThroughJson(m1.dev);
    expect(state).toMatchObject({ status: 11, driverFeatures: String(VERSION_1) });
    expect(state.queues[0]).toMatchObject({ ready: true, nextAvail: 0, nextUsed: 0, signalledUsed: null, held: [] });

    const m2 = machineWithMemoryOf(m1, virtioRng({ fill: (b) => b.fill(0x11) }));
    m1.kvm.close();
    m2.dev.restoreState(state);
    expect(m2.dev.status).toBe(11);
    m2.regs.write(R.queueSel, 4, 0);
    expect(m2.regs.read(R.queueReady, 4)).toBe(1);
    m2.regs.write(R.status, 4, S.acknowledge | S.driver | S.featuresOk | S.driverOk);
    const q = new SplitDriver(m2.memory, {
      size: QSIZE,
      descTable: BigInt(RINGS),
      availRing: BigInt(RINGS + 0x4000),
      usedRing: BigInt(RINGS + 0x8000),
      eventIdx: false,
    });
    q.add([], [{ addr: BUF, len: 4 }]);
    await m2.notify();
    await until(() => q.usedIdx() === 1, 'the request');
    expect(Array.from(m2.memory.read(BUF, 4))).toEqual([0x11, 0x11, 0x11, 0x11]);
    m2.kvm.close();
  });

  it('a device in DEVICE_NEEDS_RESET round-trips: not run after the restore, until the driver resets it', async () => {
    const m1 = mockVirtio(virtioRng(), QSIZE);
    const [q] = m1.setUp();
    await tick();
    q.writeDesc(0, { addr: BUF, len: 8, flags: 2 | 1, next: 99 });
    q.writeAvailEntry(0, 0);
    q.setAvailIdx(1);
    await m1.notify();
    expect(m1.dev.failures).toBe(1);
    await m1.dev.quiesce();
    const state = saveThroughJson(m1.dev);
    expect(state.status).toBe(15 | S.deviceNeedsReset);
    expect(state.interruptStatus & 2).toBe(2);
    expect(state.queues[0]).toMatchObject({ nextAvail: 0, nextUsed: 0, held: [] });

    const m2 = machineWithMemoryOf(m1, virtioRng());
    m1.kvm.close();
    m2.dev.restoreState(state);
    expect(m2.dev.status).toBe(15 | S.deviceNeedsReset);
    await m2.notify();
    expect(m2.dev.failures).toBe(0);
    const [q2] = m2.setUp(); // the driver resets the device and sets it up again
    q2.add([], [{ addr: BUF, len: 8 }]);
    await m2.notify();
    await until(() => q2.usedIdx() === 1, 'the request');
    expect(m2.dev.status).toBe(15);
    m2.kvm.close();
  });

  it('takeWrittenPages: the used ring and the buffers the device wrote, then nothing', async () => {
    const m = mockVirtio(virtioRng(), QSIZE);
    const [q] = m.setUp();
    await tick();
    q.add([], [{ addr: BUF + 0x3000n, len: 0x1800 }]); // pages 0x203 and 0x204
    await m.notify();
    await until(() => q.usedIdx() === 1, 'the request');
    const bitmap = new BigUint64Array(RAM / 4096 / 64);
    m.dev.takeWrittenPages(bitmap);
    const pages = (b: BigUint64Array) =>
      Array.from({ length: b.length * 64 }, (_, n) => n).filter((n) => ((b[n >>> 6] >> BigInt(n & 63)) & 1n) !== 0n);
    expect(pages(bitmap)).toEqual([(RINGS + 0x8000) / 4096, 0x203, 0x204]);
    const again = new BigUint64Array(RAM / 4096 / 64);
    m.dev.takeWrittenPages(again);
    expect(pages(again)).toEqual([(RINGS + 0x8000) / 4096]); // the active used ring, always
    m.kvm.close();
  });
});

describe('VirtioMmioDevice.restoreState refusals', () => {
  /** A running rng's state with positions, and a fresh device with its memory. */
  async function saved() {
    const m1 = mockVirtio(virtioRng(), QSIZE);
    const [q] = m1.setUp();
    await tick();
    q.add([], [{ addr: BUF, len: 8 }]);
    await m1.notify();
    await until(() => q.usedIdx() === 1, 'the request');
    await m1.dev.quiesce();
    const state = saveThroughJson(m1.dev);
    const m2 = machineWithMemoryOf(m1, virtioRng());
    m1.kvm.close();
    return { state, m2 };
  }
  const clone = (s: VirtioMmioState): VirtioMmioState => JSON.parse(JSON.stringify(s)) as VirtioMmioState;

  const cases: Array<[string, (s: VirtioMmioState) => void, typeof TypeError | typeof RangeError, RegExp]> = [
    ['a version it does not read', (s) => ((s as { version: number }).version = 2), RangeError, /state\.version/],
    ['no version', (s) => delete (s as Partial<VirtioMmioState>).version, TypeError, /state\.version/],
    ["another device's ID", (s) => (s.deviceId = 2), TypeError, /state\.deviceId/],
    ["another model's name", (s) => (s.name = 'virtio-blk'), TypeError, /state\.name/],
    ['another queue count', (s) => s.queues.push(s.queues[0]), TypeError, /state\.queues/],
    ['a queue larger than QueueNumMax', (s) => (s.queues[0].size = 512), RangeError, /state\.queues\[0\]\.size/],
    ['a queue size not a power of two', (s) => (s.queues[0].size = 12), RangeError, /state\.queues\[0\]\.size/],
    [
      'a ring outside guest RAM',
      (s) => (s.queues[0].usedRing = String(RAM + 0x1000)),
      RangeError,
      /state\.queues\[0\]\.usedRing/,
    ],
    [
      'a misaligned ring',
      (s) => (s.queues[0].descTable = String(RINGS + 8)),
      RangeError,
      /state\.queues\[0\]\.descTable/,
    ],
    [
      'an address that is not a decimal u64',
      (s) => (s.queues[0].availRing = '0x1000'),
      RangeError,
      /state\.queues\[0\]\.availRing/,
    ],
    ['an address past 2^64', (s) => (s.queues[0].availRing = '18446744073709551616'), RangeError, /availRing/],
    [
      'features not offered',
      (s) => (s.driverFeatures = String(VERSION_1 | (1n << 40n))),
      TypeError,
      /state\.driverFeatures/,
    ],
    ['FEATURES_OK without VERSION_1', (s) => (s.driverFeatures = '0'), TypeError, /state\.driverFeatures/],
    ['a non-u16 nextAvail', (s) => (s.queues[0].nextAvail = 65536), RangeError, /state\.queues\[0\]\.nextAvail/],
    ['a fractional nextUsed', (s) => (s.queues[0].nextUsed = 1.5), RangeError, /state\.queues\[0\]\.nextUsed/],
    ['a string index', (s) => ((s.queues[0] as { nextUsed: unknown }).nextUsed = '1'), TypeError, /nextUsed/],
    ['held chains that do not add up', (s) => (s.queues[0].nextAvail = 3), TypeError, /state\.queues\[0\]\.held/],
    [
      'a held head past the queue',
      (s) => ((s.queues[0].nextAvail = 2), (s.queues[0].held = [8])),
      RangeError,
      /held\[0\]/,
    ],
    ['a status the handshake never reaches', (s) => (s.status = 7), TypeError, /state\.status/],
    ['config bytes of another size', (s) => s.config.push(0), TypeError, /state\.config/],
    ['an interrupt status past bit 1', (s) => (s.interruptStatus = 4), RangeError, /state\.interruptStatus/],
    ['no state at all', (s) => Object.keys(s).forEach((k) => Reflect.deleteProperty(s, k)), TypeError, /state\./],
  ];

  it.each(cases)('refuses %s, naming the field, and changes nothing', async (_what, mutate, type, field) => {
    const { state, m2 } = await saved();
    const bad = clone(state);
    mutate(bad);
    const before = new Uint8Array(m2.dev.shared.state).slice();
    let thrown: unknown;
    try {
      m2.dev.restoreState(bad);
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(type);
    expect(code(thrown)).toMatch(/^ERR_/);
    expect((thrown as Error).message).toMatch(field);
    expect(new Uint8Array(m2.dev.shared.state)).toEqual(before);
    expect(m2.dev.status).toBe(0);
    // The state itself is fine: the same device takes it afterwards.
    m2.dev.restoreState(state);
    expect(m2.dev.status).toBe(15);
    m2.kvm.close();
  });

  it('refuses a state that is not an object, and a device its driver already uses', async () => {
    const { state, m2 } = await saved();
    expect(() => m2.dev.restoreState(null)).toThrow(TypeError);
    expect(() => m2.dev.restoreState('{}')).toThrow(TypeError);
    expect(code(caught(() => m2.dev.restoreState(state, { activation: 'later' as 'now' })))).toBe(
      'ERR_INVALID_ARG_VALUE',
    );
    expect(code(caught(() => m2.dev.restoreState(state, null as unknown as object)))).toBe('ERR_INVALID_ARG_TYPE');
    m2.setUp();
    expect(code(caught(() => m2.dev.restoreState(state)))).toBe('ERR_KVM_IN_USE');
    await m2.dev.quiesce(); // a quiesced device may be rolled back
    m2.dev.restoreState(state);
    expect(m2.dev.quiesced).toBe(false);
    m2.kvm.close();
  });

  it('refuses a model state the model cannot take: a disk of another size', async () => {
    const image = join(dir, 'disk.img');
    writeFileSync(image, new Uint8Array(64 * 512));
    const m1 = mockVirtio(virtioBlk({ path: image }), QSIZE);
    m1.setUp();
    await tick();
    await m1.dev.quiesce();
    const state = saveThroughJson(m1.dev);
    m1.kvm.close();
    writeFileSync(image, new Uint8Array(128 * 512));
    const m2 = mockVirtio(virtioBlk({ path: image }), QSIZE);
    expect(() => m2.dev.restoreState(state)).toThrow(/state\.model\.sectors/);
    expect(m2.dev.status).toBe(0);
    m2.kvm.close();
  });
});

describe('VirtioMmioDevice.restoreState under mutated states (fast-check)', () => {
  it('refuses with TypeError/RangeError ERR_*, or restores a device that survives a random driver', async () => {
    // A virtio-net with receive buffers held, one packet each way, EVENT_IDX on.
    const host = memoryBackend();
    const m1 = mockVirtio(virtioNet({ backend: host.backend }), QSIZE);
    const [rx, tx] = m1.setUp();
    await tick();
    rx.add([], [{ addr: BUF, len: 1526 }]);
    rx.add([], [{ addr: BUF + 0x1000n, len: 1526 }]);
    await m1.notify(0);
    host.arrive(packet(60, 1));
    m1.memory.write(BUF + 0x8000n, packet(70, 9));
    tx.add([{ addr: BUF + 0x8000n, len: 70 }], []);
    await m1.notify(1);
    await until(() => rx.usedIdx() === 1 && tx.usedIdx() === 1, 'the packets');
    await m1.dev.quiesce();
    const base = saveThroughJson(m1.dev);
    const memory = m1.memory.read(0n, RAM);
    m1.kvm.close();

    const paths: Array<Array<string | number>> = [];
    const walk = (v: unknown, path: Array<string | number>): void => {
      paths.push(path);
      if (Array.isArray(v)) v.forEach((x, i) => walk(x, [...path, i]));
      else if (typeof v === 'object' && v !== null)
        for (const [k, x] of Object.entries(v as Record<string, unknown>)) walk(x, [...path, k]);
    };
    walk(base, []);
    const odd = fc.constantFrom<unknown>(
      -1,
      0,
      1,
      2,
      3,
      4,
      7,
      8,
      11,
      15,
      16,
      64,
      79,
      255,
      256,
      0xffff,
      0x1_0000,
      2 ** 32,
      2 ** 53,
      1.5,
      -0.5,
      '0',
      '1',
      '-1',
      '0x10',
      '4096',
      '18446744073709551615',
      '18446744073709551616',
      '',
      'x',
      null,
      true,
      false,
      [],
      {},
      [1, 2],
      { a: 1 },
    );
    const mutation = fc.record({
      path: fc.integer({ min: 0, max: paths.length - 1 }),
      kind: fc.constantFrom('replace', 'delta', 'delete'),
      value: odd,
      delta: fc.integer({ min: -4100, max: 4100 }),
    });
    const step = fc.oneof(
      fc.record({
        op: fc.constant('reg' as const),
        offset: fc.integer({ min: 0, max: 0x40 }).map((i) => i * 4),
        value: fc.nat(),
      }),
      fc.record({
        op: fc.constant('add' as const),
        queue: fc.integer({ min: 0, max: 1 }),
        len: fc.integer({ min: 0, max: 2000 }),
        writable: fc.boolean(),
      }),
      fc.record({ op: fc.constant('notify' as const), queue: fc.integer({ min: 0, max: 1 }) }),
      fc.record({ op: fc.constant('setUp' as const) }),
      fc.record({ op: fc.constant('packet' as const), len: fc.integer({ min: 0, max: 2000 }) }),
    );
    let refused = 0;
    let restored = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(mutation, { minLength: 1, maxLength: 3 }),
        fc.array(step, { maxLength: 10 }),
        async (mutations, steps) => {
          const state = JSON.parse(JSON.stringify(base)) as Record<string, unknown>;
          for (const mu of mutations) {
            const path = paths[mu.path];
            if (path.length === 0) continue;
            let parent: unknown = state;
            for (const k of path.slice(0, -1)) parent = (parent as Record<string | number, unknown> | undefined)?.[k];
            if (typeof parent !== 'object' || parent === null) continue;
            const obj = parent as Record<string | number, unknown>;
            const key = path[path.length - 1];
            const old = obj[key];
            if (mu.kind === 'delete') Reflect.deleteProperty(obj, key);
            else if (mu.kind === 'delta' && typeof old === 'number') obj[key] = old + mu.delta;
            else if (mu.kind === 'delta' && typeof old === 'string' && /^\d+$/.test(old))
              obj[key] = String(BigInt(old) + BigInt(mu.delta));
            else obj[key] = mu.value;
          }
          const host2 = memoryBackend();
          const m2 = mockVirtio(virtioNet({ backend: host2.backend }), QSIZE);
          try {
            m2.memory.write(0n, memory);
            const before = new Uint8Array(m2.dev.shared.state).slice();
            try {
              m2.dev.restoreState(state);
            } catch (e) {
              refused++;
              expect(e instanceof TypeError || e instanceof RangeError).toBe(true);
              expect(code(e)).toMatch(/^ERR_/);
              expect(new Uint8Array(m2.dev.shared.state)).toEqual(before);
              return;
            }
            restored++;
            // A driver that knows nothing of what was restored: the original rings, free descriptors 4..7.
            let drivers = [0, 1].map((i) => {
              const d = new SplitDriver(m2.memory, {
                size: QSIZE,
                descTable: BigInt(RINGS + i * 0x1_0000),
                availRing: BigInt(RINGS + i * 0x1_0000 + 0x4000),
                usedRing: BigInt(RINGS + i * 0x1_0000 + 0x8000),
                eventIdx: true,
              });
              d.availIdx = d.getU16(d.config.availRing + 2n);
              d.freeList.splice(0, d.freeList.length, 4, 5, 6, 7);
              return d;
            });
            let slot = 0;
            for (const s of steps) {
              if (s.op === 'reg') m2.regs.write(s.offset, 4, s.value);
              else if (s.op === 'notify') await m2.notify(s.queue);
              else if (s.op === 'setUp') drivers = m2.setUp();
              else if (s.op === 'packet') host2.arrive(packet(Math.max(s.len, 12), 7));
              else if (drivers[s.queue].freeList.length > 0) {
                const sg = [{ addr: BUF + BigInt(slot++ % 32) * 0x1000n, len: s.len }];
                drivers[s.queue].add(s.writable ? [] : sg, s.writable ? sg : []);
              }
            }
            await tick();
            await tick();
            if (m2.dev.failures > 0) {
              expect(m2.logged.length).toBeGreaterThan(0);
              expect(m2.logged.every((l) => l.startsWith('virtio-net at 0xd0000000: '))).toBe(true);
            }
          } finally {
            m2.kvm.close();
          }
        },
      ),
      { numRuns: 150 },
    );
    expect(refused).toBeGreaterThan(0);
    expect(restored).toBeGreaterThan(0);
  });
});

/** An in-memory packet backend (as net.spec.ts's). */
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

function packet(len: number, fill: number): Uint8Array {
  const p = new Uint8Array(len).fill(fill);
  p.fill(0, 0, 12);
  return p;
}
