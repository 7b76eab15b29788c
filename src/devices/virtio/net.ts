/**
 * virtio-net (network device, ID 1; virtio 1.2 §5.1): one receive and one transmit queue over a
 * packet backend (a TAP interface: `Tap`).
 *
 * @module
 */
import { Observable, type Subscription } from 'rxjs';
import { checkObject, invalidType, invalidValue } from '../../abi/validate';
import { KvmRangeError } from '../../abi/errors';
import type { DescriptorChain } from './split-queue';
import type { VirtioDevice } from './mmio-device';

/** virtio-net feature bits kvm-rx offers. */
export const VirtioNetFeature = {
  /** `VIRTIO_NET_F_MAC` (5): the config space holds the MAC address. */
  mac: 1n << 5n,
} as const;

/** The virtio-net header in front of every frame (`struct virtio_net_hdr_v1`, with VERSION_1). */
export const VIRTIO_NET_HDR_SIZE = 12;
/** The largest packet: the header plus a 64 KiB frame (what a GSO-capable driver posts). */
export const VIRTIO_NET_MAX_PACKET = 65562;

/**
 * Where a virtio-net device's frames go and come from. Every packet is the 12-byte virtio-net
 * header and the Ethernet frame, as the guest's buffers hold them; a `Tap` is one.
 */
export interface VirtioNetBackend {
  /** Sends one packet; `false` when it was dropped (a full queue). */
  write(packet: Uint8Array): boolean;
  /** Reads one waiting packet into `buffer`; returns its length, 0 when none is waiting. */
  read(buffer: Uint8Array): number;
  /** Calls `onReadable` when a packet may be waiting; returns the function that stops it. */
  watchReadable(onReadable: () => void): () => void;
}

/** Options of {@link virtioNet}. */
export interface VirtioNetOptions {
  /** The host side (e.g. `Tap.open('tap0')`). The device does not close it. */
  backend: VirtioNetBackend;
  /** The guest's MAC address, `'52:54:00:12:34:56'` (default: none offered; Linux makes one up). */
  mac?: string;
  /** `QueueNumMax` of both queues (default 256). */
  queueSize?: number;
}

/** Counters of a {@link virtioNet} device, for tests and monitoring. */
export interface VirtioNetStats {
  /** Packets the guest sent that the backend took. */
  txPackets: number;
  /** Packets the guest sent that were dropped (shorter than the header, or refused by the backend). */
  txDropped: number;
  /** Packets delivered to the guest. */
  rxPackets: number;
  /** Packets dropped because the guest's buffer was too small for them. */
  rxDropped: number;
}

/**
 * A network device: queue 0 receives, queue 1 transmits. It offers VERSION_1 and, with `mac`,
 * VIRTIO_NET_F_MAC; no checksum or segmentation offloads and no mergeable buffers, so every packet
 * is one whole, checksummed frame in one chain, and the header passes through unchanged (with
 * `num_buffers` set to 1 on receive). Receiving follows the guest's buffers: the backend is read
 * only while the guest has a buffer posted, so a guest that stops reading makes the host side
 * queue (and drop) instead of kvm-rx buffering without bound. A packet larger than the buffer it
 * would go to is dropped, never truncated.
 *
 * Snapshots: the posted receive buffers are held (`VirtioQueue.hold`), so a quiesce does not wait
 * for packets and a restored device takes them again; while quiesced the backend is not read. The
 * model saves nothing of its own: the restoring process builds it with a new backend (the tap
 * reopened), and what was queued in the old one is lost, as on a link that dropped it.
 *
 * @example
 * ```ts
 * // @ts-setup: import { Tap, VirtioMmioDevice, virtioNet } from 'kvm-rx'; declare const vm: import('kvm-rx').VmFd;
 * const tap = Tap.open('tap0');
 * const net = new VirtioMmioDevice(vm, virtioNet({ backend: tap, mac: '52:54:00:12:34:56' }), { base: 0xd000_2000n, gsi: 7 });
 * // the guest kernel: ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off
 * ```
 * @throws `TypeError`/`RangeError` with an `ERR_*` code for bad options
 */
export function virtioNet(options: VirtioNetOptions): VirtioDevice & { readonly stats: VirtioNetStats } {
  checkObject('options', options);
  const backend = options.backend;
  checkObject('options.backend', backend);
  for (const m of ['write', 'read', 'watchReadable'] as const)
    if (typeof backend[m] !== 'function') invalidType(`options.backend.${m}`, 'a function', typeof backend[m]);
  let config: Uint8Array | undefined;
  if (options.mac !== undefined) {
    if (typeof options.mac !== 'string' || !/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(options.mac))
      invalidValue('options.mac', "must look like '52:54:00:12:34:56'", options.mac);
    config = Uint8Array.from(options.mac.split(':').map((h) => parseInt(h, 16)));
    if ((config[0] & 1) !== 0) invalidValue('options.mac', 'must be a unicast address (first octet even)', options.mac);
  }
  const queueSize = options.queueSize ?? 256;
  if (!Number.isInteger(queueSize) || queueSize < 1)
    throw new KvmRangeError(
      'ERR_OUT_OF_RANGE',
      `options.queueSize must be a positive integer; got ${String(queueSize)}`,
    );
  const stats: VirtioNetStats = { txPackets: 0, txDropped: 0, rxPackets: 0, rxDropped: 0 };
  return {
    name: 'virtio-net',
    deviceId: 1,
    features: config !== undefined ? VirtioNetFeature.mac : 0n,
    queueSizes: [queueSize, queueSize],
    ...(config !== undefined ? { config } : {}),
    stats,
    activate: ({ queues: [rx, tx], isQuiesced, onUnquiesce }) =>
      new Observable<void>((subscriber) => {
        const buffers: DescriptorChain[] = [];
        const scratch = new Uint8Array(VIRTIO_NET_MAX_PACKET);
        let unwatch: (() => void) | undefined;
        let ended = false;
        const receive = (): void => {
          // Quiesced: packets stay in the backend (the posted buffers are held for a snapshot).
          if (isQuiesced?.() === true) return;
          try {
            while (!ended && buffers.length > 0) {
              const n = backend.read(scratch);
              if (n <= 0) break;
              if (n < VIRTIO_NET_HDR_SIZE) {
                stats.rxDropped++;
                continue;
              }
              const chain = buffers[0];
              if (n > chain.writableLength) {
                stats.rxDropped++; // keep the buffer for a packet that fits
                continue;
              }
              buffers.shift();
              scratch[10] = 1; // num_buffers: one chain holds the whole packet
              scratch[11] = 0;
              chain.write(0, scratch.subarray(0, n));
              rx.complete(chain, n);
              stats.rxPackets++;
            }
            if (buffers.length === 0 && unwatch !== undefined) {
              unwatch(); // the guest has no room: leave packets queued on the host side
              unwatch = undefined;
            }
          } catch (e) {
            subscriber.error(e);
          }
        };
        const subs: Subscription[] = [
          rx.chains$.subscribe({
            next: (chain) => {
              buffers.push(chain);
              rx.hold?.(chain); // a receive buffer waits for a packet: not work a quiesce waits for
              if (unwatch === undefined && !ended) unwatch = backend.watchReadable(receive);
              receive();
            },
            error: (e: unknown) => subscriber.error(e),
          }),
          tx.chains$.subscribe({
            next: (chain) => {
              try {
                const len = Math.min(chain.readableLength, VIRTIO_NET_MAX_PACKET);
                const packet = len >= VIRTIO_NET_HDR_SIZE ? chain.read(0, len) : undefined;
                tx.complete(chain, 0);
                if (packet === undefined || len < chain.readableLength || !backend.write(packet)) stats.txDropped++;
                else stats.txPackets++;
              } catch (e) {
                subscriber.error(e); // the backend failed: this device needs a reset
              }
            },
            error: (e: unknown) => subscriber.error(e),
          }),
        ];
        const stopResume = onUnquiesce?.(receive);
        return () => {
          ended = true;
          stopResume?.();
          unwatch?.();
          unwatch = undefined;
          for (const s of subs) s.unsubscribe();
        };
      }),
  };
}
