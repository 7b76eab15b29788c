/**
 * virtio-blk (block device, ID 2; virtio 1.2 §5.2) backed by a raw image file.
 *
 * @module
 */
import { open, type FileHandle } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { EMPTY, Observable, from, mergeMap } from 'rxjs';
import { checkObject, invalidType, invalidValue } from '../../abi/validate';
import { KvmRangeError } from '../../abi/errors';
import type { DescriptorChain } from './split-queue';
import type { VirtioDevice, VirtioQueue } from './mmio-device';

/** virtio-blk feature bits kvm-rx offers (virtio 1.2 §5.2.3). */
export const VirtioBlkFeature = {
  /** `VIRTIO_BLK_F_RO` (5): the device is read-only. */
  ro: 1n << 5n,
  /** `VIRTIO_BLK_F_FLUSH` (9): the driver may send FLUSH; writes are cached until then. */
  flush: 1n << 9n,
} as const;

/** Request types (the header's `type`). */
export const VirtioBlkRequest = { in: 0, out: 1, flush: 4, getId: 8 } as const;
/** The status byte the device writes last. */
export const VirtioBlkStatus = { ok: 0, ioerr: 1, unsupp: 2 } as const;

/** The sector size of virtio-blk's addressing. */
export const VIRTIO_BLK_SECTOR = 512;
/** The length of the GET_ID answer. */
export const VIRTIO_BLK_ID_BYTES = 20;

/** Options of {@link virtioBlk}. */
export interface VirtioBlkOptions {
  /** The raw image file. Its size must be a multiple of 512 bytes (the disk's capacity). */
  path: string;
  /** Serve it read-only: offer VIRTIO_BLK_F_RO, open the file read-only, fail writes. Default `false`. */
  readOnly?: boolean;
  /** What GET_ID answers (at most 20 bytes of ASCII; default: `kvm-rx` and the file's inode number). */
  serial?: string;
  /** Requests in flight at once (default 32). */
  concurrency?: number;
  /** The most data bytes one request may carry (default 4 MiB); a larger one fails with IOERR. */
  maxRequestBytes?: number;
  /** `QueueNumMax` (default 256). */
  queueSize?: number;
  /** Told about each request that fails with IOERR or UNSUPP, and why. */
  onError?: (message: string) => void;
}

/**
 * A block device over a raw image: READ, WRITE, FLUSH and GET_ID, all asynchronous (Node's file
 * I/O runs on libuv's thread pool: neither the vCPU's thread nor the event loop waits for the
 * disk). Writes go to the file as they come (the page cache holds them); FLUSH completes only after
 * every write received before it has completed and `fdatasync` has returned, so a write is durable
 * once a flush the guest issued after it has completed. Without `readOnly` it offers
 * VIRTIO_BLK_F_FLUSH (Linux then sends flushes: a write-back cache); with it, VIRTIO_BLK_F_RO.
 *
 * Requests are parsed without assumptions about how the driver split them into descriptors: the
 * 16-byte header is the start of the readable bytes, the status is the last writable byte. A
 * request out of the disk's range, of a length that is not whole sectors, larger than
 * `maxRequestBytes`, or a write to a read-only disk fails with IOERR; an unknown type with UNSUPP;
 * a request too short to have a header or a status byte is returned with nothing written (there is
 * nowhere to put a status).
 *
 * The config space holds `capacity` (in 512-byte sectors), read at `open` time.
 *
 * Snapshots: a quiesce waits until every request taken has been served (its file I/O done). The
 * model saves only the disk's size and mode (`{ sectors, readOnly }`, the sectors as a decimal
 * string): the restoring process opens the image again, and a restore into a disk of another size
 * or mode is refused, as the guest would go on with the size it read from the config space.
 *
 * @example
 * ```ts
 * // @ts-setup: import { VirtioMmioDevice, virtioBlk } from 'kvm-rx'; declare const vm: import('kvm-rx').VmFd;
 * const disk = new VirtioMmioDevice(vm, virtioBlk({ path: 'rootfs.ext4' }), { base: 0xd000_0000n, gsi: 5 });
 * // the guest kernel: root=/dev/vda rw
 * ```
 * @throws `TypeError`/`RangeError` with an `ERR_*` code for bad options; `Error` from `fs` when the
 *   file cannot be stat'ed; `RangeError` `ERR_OUT_OF_RANGE` for a size that is not whole sectors
 */
export function virtioBlk(options: VirtioBlkOptions): VirtioDevice {
  checkObject('options', options);
  if (typeof options.path !== 'string' || options.path === '')
    invalidType('options.path', 'a non-empty string', options.path);
  const readOnly = options.readOnly ?? false;
  if (typeof readOnly !== 'boolean') invalidType('options.readOnly', 'a boolean', readOnly);
  const int = (name: string, v: number | undefined, dflt: number, min: number, max: number): number => {
    const n = v ?? dflt;
    if (!Number.isInteger(n) || n < min || n > max)
      throw new KvmRangeError(
        'ERR_OUT_OF_RANGE',
        `options.${name} must be an integer in ${min}..${max}; got ${String(n)}`,
      );
    return n;
  };
  const concurrency = int('concurrency', options.concurrency, 32, 1, 1024);
  const maxRequestBytes = int('maxRequestBytes', options.maxRequestBytes, 4 << 20, VIRTIO_BLK_SECTOR, 256 << 20);
  const queueSize = options.queueSize ?? 256;
  const onError = options.onError;
  if (onError !== undefined && typeof onError !== 'function') invalidType('options.onError', 'a function', onError);
  const st = statSync(options.path);
  if (!st.isFile()) invalidValue('options.path', 'must name a regular file (a raw disk image)', options.path);
  if (st.size % VIRTIO_BLK_SECTOR !== 0)
    throw new KvmRangeError(
      'ERR_OUT_OF_RANGE',
      `options.path: the image's size (${st.size} bytes) must be a multiple of ${VIRTIO_BLK_SECTOR}`,
    );
  const serial = options.serial ?? `kvm-rx-${st.ino}`.slice(0, VIRTIO_BLK_ID_BYTES);
  if (typeof serial !== 'string' || !/^[\x20-\x7e]{0,20}$/.test(serial))
    invalidValue('options.serial', 'must be at most 20 printable ASCII characters', serial);
  const capacityBytes = st.size;
  const config = new Uint8Array(8);
  new DataView(config.buffer).setBigUint64(0, BigInt(capacityBytes / VIRTIO_BLK_SECTOR), true);
  const path = options.path;

  const sectors = String(capacityBytes / VIRTIO_BLK_SECTOR);
  return {
    name: 'virtio-blk',
    deviceId: 2,
    features: readOnly ? VirtioBlkFeature.ro : VirtioBlkFeature.flush,
    queueSizes: [queueSize],
    config,
    saveState: () => ({ sectors, readOnly }),
    restoreState: (state: unknown) => {
      const s = checkObject<{ sectors?: unknown; readOnly?: unknown }>('state.model', state);
      if (s.sectors !== sectors)
        invalidValue('state.model.sectors', `must be this disk's size, '${sectors}' sectors (${path})`, s.sectors);
      if (s.readOnly !== readOnly)
        invalidValue('state.model.readOnly', `must be this disk's mode, ${String(readOnly)}`, s.readOnly);
    },
    activate: ({ queues: [requests], signal }) =>
      new Observable<FileHandle>((opened) => {
        let ended = false;
        open(path, readOnly ? 'r' : 'r+').then(
          (file) => {
            if (ended)
              void file.close(); // the activation ended while the image was opening
            else opened.next(file);
          },
          (e: unknown) => opened.error(e),
        );
        return () => {
          ended = true;
        };
      }).pipe(
        mergeMap(
          (file) =>
            new Observable<void>((subscriber) => {
              const writes = new Set<Promise<unknown>>();
              const inflight = new Set<Promise<unknown>>();
              const track = <T>(p: Promise<T>, set: Set<Promise<unknown>>): Promise<T> => {
                set.add(p);
                void p.finally(() => set.delete(p));
                return p;
              };
              const sub = requests.chains$
                .pipe(
                  mergeMap((chain) => {
                    const work = serve(chain);
                    return work === undefined ? EMPTY : from(work);
                  }, concurrency),
                )
                .subscribe({ error: (e: unknown) => subscriber.error(e) });
              const fail = (chain: DescriptorChain, status: number, why: string): undefined => {
                onError?.(`virtio-blk ${path}: ${why}`);
                finish(requests, chain, status, 0);
                return undefined;
              };
              const finish = (q: VirtioQueue, chain: DescriptorChain, status: number, dataLen: number): void => {
                if (signal.aborted) return; // the driver reset the device: the rings are not ours
                chain.write(chain.writableLength - 1, Uint8Array.of(status));
                q.complete(chain, dataLen + 1);
              };
              const serve = (chain: DescriptorChain): Promise<void> | undefined => {
                if (chain.readableLength < 16 || chain.writableLength < 1) {
                  onError?.(`virtio-blk ${path}: a request without a header or a status byte (head ${chain.head})`);
                  requests.complete(chain, 0);
                  return undefined;
                }
                const header = new DataView(chain.read(0, 16).buffer);
                const type = header.getUint32(0, true);
                const sector = header.getBigUint64(8, true);
                switch (type) {
                  case VirtioBlkRequest.in:
                  case VirtioBlkRequest.out: {
                    const out = type === VirtioBlkRequest.out;
                    const len = out ? chain.readableLength - 16 : chain.writableLength - 1;
                    if (out && readOnly)
                      return fail(chain, VirtioBlkStatus.ioerr, `write to a read-only disk (sector ${sector})`);
                    if (len % VIRTIO_BLK_SECTOR !== 0 || len > maxRequestBytes)
                      return fail(
                        chain,
                        VirtioBlkStatus.ioerr,
                        `a ${len}-byte request (whole sectors up to ${maxRequestBytes} bytes only)`,
                      );
                    const at = sector * BigInt(VIRTIO_BLK_SECTOR);
                    if (at + BigInt(len) > BigInt(capacityBytes))
                      return fail(
                        chain,
                        VirtioBlkStatus.ioerr,
                        `sectors ${sector}+${len / VIRTIO_BLK_SECTOR} are past the end (${capacityBytes / VIRTIO_BLK_SECTOR} sectors)`,
                      );
                    const position = Number(at);
                    if (out) {
                      const data = chain.read(16, len);
                      const w = writeFully(file, data, position).then(
                        () => finish(requests, chain, VirtioBlkStatus.ok, 0),
                        (e: unknown) => fail(chain, VirtioBlkStatus.ioerr, `write: ${(e as Error).message}`),
                      );
                      return track(track(w, writes), inflight);
                    }
                    const buffer = new Uint8Array(len);
                    const r = readFully(file, buffer, position).then(
                      () => {
                        if (signal.aborted) return;
                        chain.write(0, buffer);
                        finish(requests, chain, VirtioBlkStatus.ok, len);
                      },
                      (e: unknown) => fail(chain, VirtioBlkStatus.ioerr, `read: ${(e as Error).message}`),
                    );
                    return track(r, inflight);
                  }
                  case VirtioBlkRequest.flush: {
                    if (readOnly) {
                      finish(requests, chain, VirtioBlkStatus.ok, 0);
                      return undefined;
                    }
                    // Durable: every write received before this flush, then fdatasync.
                    const before = [...writes];
                    const f = Promise.allSettled(before)
                      .then(() => file.datasync())
                      .then(
                        () => finish(requests, chain, VirtioBlkStatus.ok, 0),
                        (e: unknown) => fail(chain, VirtioBlkStatus.ioerr, `flush: ${(e as Error).message}`),
                      );
                    return track(f, inflight);
                  }
                  case VirtioBlkRequest.getId: {
                    const id = new Uint8Array(VIRTIO_BLK_ID_BYTES);
                    id.set(Buffer.from(serial, 'latin1'));
                    const n = Math.min(VIRTIO_BLK_ID_BYTES, chain.writableLength - 1);
                    chain.write(0, id.subarray(0, n));
                    finish(requests, chain, VirtioBlkStatus.ok, n);
                    return undefined;
                  }
                  default:
                    return fail(chain, VirtioBlkStatus.unsupp, `request type ${type} is not supported`);
                }
              };
              return () => {
                sub.unsubscribe();
                // Close once what is in flight has settled (an operation may still be on the thread pool).
                void Promise.allSettled([...inflight]).then(() => file.close());
              };
            }),
        ),
      ),
  };
}

/** Writes all of `data` at `position`. */
async function writeFully(file: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await file.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

/** Reads `buffer.length` bytes at `position`; past the end of the file (it shrank) reads zeros. */
async function readFully(file: FileHandle, buffer: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buffer.length) {
    const { bytesRead } = await file.read(buffer, done, buffer.length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
}
