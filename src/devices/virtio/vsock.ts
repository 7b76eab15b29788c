/**
 * virtio-vsock (socket device, ID 19; virtio 1.2 §5.10) with Firecracker's "hybrid" host side:
 * connections reach the host as Unix-domain sockets.
 *
 * @module
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { rmSync } from 'node:fs';
import { Observable } from 'rxjs';
import { checkBool, checkObject, invalidValue } from '../../abi/validate';
import { KvmRangeError } from '../../abi/errors';
import type { DescriptorChain } from './split-queue';
import type { VirtioDevice } from './mmio-device';

/** The host's CID. */
export const VSOCK_HOST_CID = 2;
/** The packet header's length (`struct virtio_vsock_hdr`). */
export const VSOCK_HDR_SIZE = 44;
/** Packet operations. */
export const VsockOp = {
  request: 1,
  response: 2,
  rst: 3,
  shutdown: 4,
  rw: 5,
  creditUpdate: 6,
  creditRequest: 7,
} as const;
/**
 * The event the device puts on the event queue after a snapshot's restore
 * (`VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, `struct virtio_vsock_event { le32 id; }`): the guest drops
 * its connections, which did not survive the change of process, and reads the CID again.
 */
export const VSOCK_EVENT_TRANSPORT_RESET = 0;
/** SHUTDOWN flags. */
export const VsockShutdown = { receive: 1, send: 2 } as const;
const TYPE_STREAM = 1;
/** The receive buffer each connection advertises to the guest (`buf_alloc`). */
const BUF_ALLOC = 256 * 1024;
/** The most payload in one packet to the guest. */
const MAX_PAYLOAD = 64 * 1024;
/** The most packets waiting for the guest's receive buffers before the device gives up on it. */
const MAX_PENDING_PACKETS = 4096;

/** Options of {@link virtioVsock}. */
export interface VirtioVsockOptions {
  /** The guest's CID (3 to 2^32 − 2; 0, 1, 2 and 2^32 − 1 are reserved). */
  guestCid: number;
  /**
   * The Unix socket path of the host side. The device listens on it: a host program connects and
   * writes `CONNECT <port>\n` to reach the guest's port, and reads `OK <host port>\n` once the guest
   * accepted (the connection is closed if it refused). A guest connecting to the host's port P
   * reaches the Unix socket `<uds>_<P>`, where a host program listens. Without it, the guest's
   * connections are refused and the host cannot connect.
   */
  uds?: string;
  /** `QueueNumMax` of the three queues (default 256). */
  queueSize?: number;
}

/** Counters of a {@link virtioVsock} device. */
export interface VirtioVsockStats {
  /** Connections established (either side's). */
  connected: number;
  /** Connection requests the guest refused (RST answering a REQUEST). */
  refusedByGuest: number;
  /** Guest connection requests refused here (no `uds`, or nobody listening on `<uds>_<port>`). */
  refusedByHost: number;
  /** Packets from the guest that were malformed or for no connection. */
  badPackets: number;
}

interface Header {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

function encode(h: Header, payload?: Uint8Array): Uint8Array {
  const b = new Uint8Array(VSOCK_HDR_SIZE + (payload?.length ?? 0));
  const v = new DataView(b.buffer);
  v.setBigUint64(0, h.srcCid, true);
  v.setBigUint64(8, h.dstCid, true);
  v.setUint32(16, h.srcPort, true);
  v.setUint32(20, h.dstPort, true);
  v.setUint32(24, payload?.length ?? 0, true);
  v.setUint16(28, h.type, true);
  v.setUint16(30, h.op, true);
  v.setUint32(32, h.flags, true);
  v.setUint32(36, h.bufAlloc, true);
  v.setUint32(40, h.fwdCnt, true);
  if (payload) b.set(payload, VSOCK_HDR_SIZE);
  return b;
}

function decode(b: Uint8Array): Header {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    srcCid: v.getBigUint64(0, true),
    dstCid: v.getBigUint64(8, true),
    srcPort: v.getUint32(16, true),
    dstPort: v.getUint32(20, true),
    len: v.getUint32(24, true),
    type: v.getUint16(28, true),
    op: v.getUint16(30, true),
    flags: v.getUint32(32, true),
    bufAlloc: v.getUint32(36, true),
    fwdCnt: v.getUint32(40, true),
  };
}

interface Connection {
  readonly hostPort: number;
  readonly guestPort: number;
  socket: Socket;
  state: 'connecting' | 'established' | 'closing';
  /** Host-initiated: waiting for the guest's RESPONSE, then `OK` goes to the socket. */
  readonly hostInitiated: boolean;
  /** What the guest advertised. */
  peerBufAlloc: number;
  peerFwdCnt: number;
  /** Payload bytes sent to the guest. */
  txCnt: number;
  /** Payload bytes from the guest written to the socket (our fwd_cnt). */
  fwdCnt: number;
  /** fwd_cnt when we last told the guest. */
  lastFwdSent: number;
  /** Host data waiting for the guest's credit. */
  backlog: Uint8Array[];
}

/**
 * A socket device: the guest's `AF_VSOCK` stream sockets reach Unix sockets on the host, as
 * Firecracker's hybrid vsock does (see {@link VirtioVsockOptions.uds}). Queues: 0 receive, 1
 * transmit, 2 events (held; used once after a snapshot's restore). It offers no feature bits (stream
 * sockets only). Flow control follows the spec's credit: the device never sends more than the
 * guest's advertised buffer has room for, and pauses reading the host socket until it has; it
 * advertises 256 KiB per connection and updates the guest as it forwards. Everything in a packet
 * from the guest is checked: a bad header, a length past the chain, a packet for no connection or
 * from another CID gets a RST (or is dropped) and is counted; it never reaches a socket.
 *
 * Snapshots: connections cannot survive a change of process (their host sockets stay behind), so
 * as Firecracker does, a restored device that was running sends {@link VSOCK_EVENT_TRANSPORT_RESET}
 * on the event queue, into the first event buffer it has (the held ones are handed to it again at
 * restore), and the guest drops its connections. The model saves only whether it was running
 * (`{ activated }`). Receive and event buffers are held; while quiesced nothing is delivered.
 *
 * @example
 * ```ts
 * // @ts-setup: import { VirtioMmioDevice, virtioVsock } from 'kvm-rx'; declare const vm: import('kvm-rx').VmFd;
 * const vsock = new VirtioMmioDevice(vm, virtioVsock({ guestCid: 3, uds: '/tmp/vm.vsock' }), { base: 0xd000_3000n, gsi: 9 });
 * // host: nc -U /tmp/vm.vsock, then type "CONNECT 1234"
 * ```
 * @throws `TypeError`/`RangeError` with an `ERR_*` code for bad options
 */
export function virtioVsock(options: VirtioVsockOptions): VirtioDevice & { readonly stats: VirtioVsockStats } {
  checkObject('options', options);
  const { guestCid, uds } = options;
  if (!Number.isInteger(guestCid) || guestCid < 3 || guestCid > 0xffff_fffe)
    throw new KvmRangeError(
      'ERR_OUT_OF_RANGE',
      `options.guestCid must be an integer in 3..4294967294; got ${String(guestCid)}`,
    );
  if (uds !== undefined && (typeof uds !== 'string' || uds === '' || uds.includes('\0')))
    invalidValue('options.uds', 'must be a non-empty path', uds);
  const queueSize = options.queueSize ?? 256;
  if (!Number.isInteger(queueSize) || queueSize < 1)
    throw new KvmRangeError(
      'ERR_OUT_OF_RANGE',
      `options.queueSize must be a positive integer; got ${String(queueSize)}`,
    );
  const config = new Uint8Array(8);
  new DataView(config.buffer).setBigUint64(0, BigInt(guestCid), true);
  const stats: VirtioVsockStats = { connected: 0, refusedByGuest: 0, refusedByHost: 0, badPackets: 0 };
  const cid = BigInt(guestCid);
  const HOST = BigInt(VSOCK_HOST_CID);
  /** Whether an activation runs (saved), and whether the next one starts with a transport reset. */
  let activated = false;
  let resetPending = false;

  return {
    name: 'virtio-vsock',
    deviceId: 19,
    features: 0n,
    queueSizes: [queueSize, queueSize, queueSize],
    config,
    stats,
    saveState: () => ({ activated }),
    restoreState: (state: unknown) => {
      const s = checkObject<{ activated?: unknown }>('state.model', state);
      resetPending = checkBool('state.model.activated', s.activated);
    },
    activate: ({ queues: [rx, tx, events], isQuiesced, onUnquiesce }) =>
      new Observable<void>((subscriber) => {
        activated = true;
        let transportReset = resetPending;
        resetPending = false;
        const conns = new Map<string, Connection>(); // `${hostPort}:${guestPort}`
        const key = (hostPort: number, guestPort: number) => `${hostPort}:${guestPort}`;
        const buffers: DescriptorChain[] = [];
        const pending: Uint8Array[] = [];
        let nextHostPort = 49152;
        let server: Server | undefined;
        let ended = false;

        const fail = (e: unknown) => {
          if (!ended) subscriber.error(e);
        };
        const deliver = (): void => {
          if (isQuiesced?.() === true) return; // held receive buffers stay as a snapshot records them
          while (buffers.length > 0 && pending.length > 0) {
            const chain = buffers.shift()!;
            const packet = pending.shift()!;
            if (packet.length > chain.writableLength) {
              // A receive buffer too small for a header and its payload: the guest's own loss.
              stats.badPackets++;
              rx.complete(chain, 0);
              continue;
            }
            chain.write(0, packet);
            rx.complete(chain, packet.length);
          }
          for (const c of conns.values()) pump(c);
        };
        const send = (h: Omit<Header, 'len' | 'type' | 'srcCid' | 'dstCid'>, payload?: Uint8Array): void => {
          if (pending.length >= MAX_PENDING_PACKETS) {
            fail(new Error(`the guest has taken no vsock packet for ${MAX_PENDING_PACKETS} packets`));
            return;
          }
          pending.push(encode({ ...h, srcCid: HOST, dstCid: cid, len: 0, type: TYPE_STREAM }, payload));
          deliver();
        };
        const control = (c: Connection, op: number, flags = 0): void =>
          send({ srcPort: c.hostPort, dstPort: c.guestPort, op, flags, bufAlloc: BUF_ALLOC, fwdCnt: c.fwdCnt });
        const rst = (hostPort: number, guestPort: number): void =>
          send({ srcPort: hostPort, dstPort: guestPort, op: VsockOp.rst, flags: 0, bufAlloc: 0, fwdCnt: 0 });
        const drop = (c: Connection, reset: boolean): void => {
          if (!conns.delete(key(c.hostPort, c.guestPort))) return;
          if (reset) rst(c.hostPort, c.guestPort);
          c.socket.destroy();
        };
        /** Host data to the guest, as far as its credit goes. */
        const pump = (c: Connection): void => {
          if (c.state !== 'established') return;
          while (c.backlog.length > 0) {
            const credit = c.peerBufAlloc - (c.txCnt - c.peerFwdCnt);
            if (credit <= 0 || pending.length >= MAX_PENDING_PACKETS / 2) break;
            let chunk = c.backlog[0];
            if (chunk.length > credit || chunk.length > MAX_PAYLOAD) {
              const n = Math.min(credit, MAX_PAYLOAD);
              c.backlog[0] = chunk.subarray(n);
              chunk = chunk.subarray(0, n);
            } else c.backlog.shift();
            c.txCnt += chunk.length;
            send(
              {
                srcPort: c.hostPort,
                dstPort: c.guestPort,
                op: VsockOp.rw,
                flags: 0,
                bufAlloc: BUF_ALLOC,
                fwdCnt: c.fwdCnt,
              },
              chunk,
            );
          }
          if (c.backlog.length === 0) c.socket.resume();
          else c.socket.pause();
        };
        const attach = (c: Connection): void => {
          c.socket.on('data', (d: Buffer) => {
            c.backlog.push(new Uint8Array(d));
            pump(c);
          });
          c.socket.on('end', () => {
            if (c.state === 'established') control(c, VsockOp.shutdown, VsockShutdown.receive | VsockShutdown.send);
          });
          c.socket.on('error', () => undefined); // 'close' follows
          c.socket.on('close', () => drop(c, true));
        };

        // Host-initiated connections: "CONNECT <port>\n" on the Unix socket.
        if (uds !== undefined) {
          rmSync(uds, { force: true });
          server = createServer((socket) => {
            let line = '';
            const onData = (d: Buffer) => {
              line += d.toString('latin1');
              if (line.length > 64) {
                socket.destroy();
                return;
              }
              const nl = line.indexOf('\n');
              if (nl < 0) return;
              socket.off('data', onData);
              socket.pause();
              const m = /^CONNECT (\d{1,10})$/.exec(line.slice(0, nl).trim());
              const port = m ? Number(m[1]) : NaN;
              if (!Number.isInteger(port) || port > 0xffff_ffff) {
                socket.destroy();
                return;
              }
              const hostPort = nextHostPort++;
              if (nextHostPort > 0xffff_fff0) nextHostPort = 49152;
              const c: Connection = {
                hostPort,
                guestPort: port,
                socket,
                state: 'connecting',
                hostInitiated: true,
                peerBufAlloc: 0,
                peerFwdCnt: 0,
                txCnt: 0,
                fwdCnt: 0,
                lastFwdSent: 0,
                backlog: [],
              };
              const rest = line.slice(nl + 1);
              if (rest.length > 0) c.backlog.push(new Uint8Array(Buffer.from(rest, 'latin1')));
              conns.set(key(hostPort, port), c);
              attach(c);
              control(c, VsockOp.request);
            };
            socket.on('data', onData);
            socket.on('error', () => undefined);
          });
          server.on('error', fail);
          server.listen(uds);
        }

        const fromGuest = (chain: DescriptorChain): void => {
          if (chain.readableLength < VSOCK_HDR_SIZE) {
            stats.badPackets++;
            return;
          }
          const h = decode(chain.read(0, VSOCK_HDR_SIZE));
          if (
            h.srcCid !== cid ||
            h.dstCid !== HOST ||
            h.type !== TYPE_STREAM ||
            h.len > chain.readableLength - VSOCK_HDR_SIZE
          ) {
            stats.badPackets++;
            if (h.op !== VsockOp.rst && h.dstCid === HOST) rst(h.dstPort, h.srcPort);
            return;
          }
          const c = conns.get(key(h.dstPort, h.srcPort));
          if (c !== undefined) {
            c.peerBufAlloc = h.bufAlloc;
            c.peerFwdCnt = h.fwdCnt;
          }
          switch (h.op) {
            case VsockOp.request: {
              if (c !== undefined) {
                stats.badPackets++;
                rst(h.dstPort, h.srcPort);
                return;
              }
              if (uds === undefined) {
                stats.refusedByHost++;
                rst(h.dstPort, h.srcPort);
                return;
              }
              // The guest connects to the host's port: <uds>_<port>.
              const socket = createConnection(`${uds}_${h.dstPort}`);
              const g: Connection = {
                hostPort: h.dstPort,
                guestPort: h.srcPort,
                socket,
                state: 'connecting',
                hostInitiated: false,
                peerBufAlloc: h.bufAlloc,
                peerFwdCnt: h.fwdCnt,
                txCnt: 0,
                fwdCnt: 0,
                lastFwdSent: 0,
                backlog: [],
              };
              conns.set(key(g.hostPort, g.guestPort), g);
              socket.once('connect', () => {
                if (!conns.has(key(g.hostPort, g.guestPort))) return;
                g.state = 'established';
                stats.connected++;
                control(g, VsockOp.response);
              });
              socket.once('error', () => {
                if (g.state === 'connecting') stats.refusedByHost++;
              });
              attach(g);
              return;
            }
            case VsockOp.response:
              if (c === undefined || c.state !== 'connecting' || !c.hostInitiated) {
                stats.badPackets++;
                rst(h.dstPort, h.srcPort);
                return;
              }
              c.state = 'established';
              stats.connected++;
              c.socket.write(`OK ${c.hostPort}\n`);
              c.socket.resume();
              pump(c);
              return;
            case VsockOp.rst:
              if (c === undefined) return;
              if (c.state === 'connecting' && c.hostInitiated) stats.refusedByGuest++;
              drop(c, false);
              return;
            case VsockOp.shutdown:
              if (c === undefined) {
                rst(h.dstPort, h.srcPort);
                return;
              }
              // The guest will send (or receive) no more: finish the socket's side, then reset.
              if ((h.flags & VsockShutdown.send) !== 0) c.socket.end();
              if (
                (h.flags & (VsockShutdown.send | VsockShutdown.receive)) ===
                (VsockShutdown.send | VsockShutdown.receive)
              ) {
                c.state = 'closing';
                c.socket.end(() => drop(c, true));
              }
              return;
            case VsockOp.rw: {
              if (c === undefined || c.state !== 'established') {
                stats.badPackets++;
                rst(h.dstPort, h.srcPort);
                return;
              }
              if (h.len === 0) return;
              const data = chain.read(VSOCK_HDR_SIZE, h.len);
              c.socket.write(data, () => {
                c.fwdCnt += data.length;
                // Tell the guest about the room it has again, in steps, not per packet.
                if (c.fwdCnt - c.lastFwdSent >= BUF_ALLOC / 4 && c.state === 'established') {
                  c.lastFwdSent = c.fwdCnt;
                  control(c, VsockOp.creditUpdate);
                }
              });
              return;
            }
            case VsockOp.creditUpdate:
              if (c !== undefined) pump(c);
              return;
            case VsockOp.creditRequest:
              if (c !== undefined) {
                c.lastFwdSent = c.fwdCnt;
                control(c, VsockOp.creditUpdate);
              }
              return;
            default:
              stats.badPackets++;
              rst(h.dstPort, h.srcPort);
          }
        };

        const held: DescriptorChain[] = [];
        const subs = [
          rx.chains$.subscribe({
            next: (chain) => {
              buffers.push(chain);
              rx.hold?.(chain);
              try {
                deliver();
              } catch (e) {
                fail(e);
              }
            },
            error: fail,
          }),
          tx.chains$.subscribe({
            next: (chain) => {
              try {
                fromGuest(chain);
                tx.complete(chain, 0);
              } catch (e) {
                fail(e);
              }
            },
            error: fail,
          }),
          // Event buffers are kept, but for the transport reset after a restore.
          events.chains$.subscribe({
            next: (chain) => {
              if (transportReset) {
                transportReset = false;
                try {
                  const event = new Uint8Array(4);
                  new DataView(event.buffer).setUint32(0, VSOCK_EVENT_TRANSPORT_RESET, true);
                  const n = Math.min(4, chain.writableLength);
                  chain.write(0, event.subarray(0, n));
                  events.complete(chain, n);
                } catch (e) {
                  fail(e);
                }
                return;
              }
              held.push(chain);
              events.hold?.(chain);
            },
            error: fail,
          }),
        ];
        const stopResume = onUnquiesce?.(() => {
          try {
            deliver();
          } catch (e) {
            fail(e);
          }
        });
        return () => {
          ended = true;
          activated = false;
          stopResume?.();
          for (const s of subs) s.unsubscribe();
          for (const c of [...conns.values()]) c.socket.destroy();
          conns.clear();
          if (server !== undefined) {
            server.close();
            if (uds !== undefined) rmSync(uds, { force: true });
          }
        };
      }),
  };
}
