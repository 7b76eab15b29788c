/**
 * virtio-rng (entropy device, ID 4; virtio 1.2 §5.4).
 *
 * @module
 */
import { randomFillSync } from 'node:crypto';
import { map } from 'rxjs';
import { checkObject, invalidType } from '../../abi/validate';
import { KvmRangeError } from '../../abi/errors';
import type { VirtioDevice } from './mmio-device';

/** Options of {@link virtioRng}. */
export interface VirtioRngOptions {
  /** Fills a buffer with random bytes (default: `crypto.randomFillSync`, the host's CSPRNG). */
  fill?: (buffer: Uint8Array) => void;
  /** The most bytes given for one request (default 4096). */
  maxBytes?: number;
  /** `QueueNumMax` (default 256). */
  queueSize?: number;
}

/**
 * An entropy device: one queue of device-writable buffers, each filled with random bytes (at
 * most `maxBytes` per request). It offers no feature bits and has no config space. Linux keeps
 * one request pending from the driver's probe on, so the queue works during boot, with no user
 * space. A chain with no writable buffer is returned with 0 bytes. It keeps no state of its own
 * for a snapshot (requests are answered as they come, so a quiesce never waits).
 *
 * @example
 * ```ts
 * // @ts-setup: import { VirtioMmioDevice, virtioRng } from 'kvm-rx'; declare const vm: import('kvm-rx').VmFd;
 * const rng = new VirtioMmioDevice(vm, virtioRng(), { base: 0xd000_0000n, gsi: 5 });
 * ```
 * @throws `TypeError`/`RangeError` with an `ERR_*` code for bad options
 */
export function virtioRng(options: VirtioRngOptions = {}): VirtioDevice {
  checkObject('options', options);
  const fill = options.fill ?? ((b: Uint8Array) => void randomFillSync(b));
  if (typeof fill !== 'function') invalidType('options.fill', 'a function', fill);
  const maxBytes = options.maxBytes ?? 4096;
  if (!Number.isInteger(maxBytes) || maxBytes < 1 || maxBytes > 1 << 20)
    throw new KvmRangeError(
      'ERR_OUT_OF_RANGE',
      `options.maxBytes must be an integer in 1..1048576; got ${String(maxBytes)}`,
    );
  const queueSize = options.queueSize ?? 256;
  return {
    name: 'virtio-rng',
    deviceId: 4,
    features: 0n,
    queueSizes: [queueSize],
    activate: ({ queues: [requests] }) =>
      requests.chains$.pipe(
        map((chain) => {
          const n = Math.min(chain.writableLength, maxBytes);
          if (n > 0) {
            const bytes = new Uint8Array(n);
            fill(bytes);
            chain.write(0, bytes);
          }
          requests.complete(chain, n);
        }),
      ),
  };
}
