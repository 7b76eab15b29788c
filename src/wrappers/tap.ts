/**
 * `Tap`: a Linux TAP interface (`/dev/net/tun` with `IFF_TAP`), the host end of a virtio-net
 * device: Ethernet frames in and out, each with a 12-byte virtio-net header in front
 * (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ` 12), which is the layout the guest's buffers have, so frames
 * pass through without translation.
 *
 * @module
 */
import { KvmError, KvmRangeError } from '../abi/errors';
import { sys } from '../abi/kvm-constants';
import { checkObject, invalidType, invalidValue } from '../abi/validate';
import { nativeBackend } from '../backend/native';
import type { IoctlBackend } from '../backend/types';
import { FdOwner } from './fd';

/**
 * `/dev/net/tun` ioctls and flags, from `<linux/if_tun.h>` (generated into the ABI tables, which
 * spec/abi.spec.ts checks against the addon's); the `struct ifreq` size and `IFNAMSIZ` are
 * asserted in native/src/abi.c.
 */
export const TUN = {
  TUNSETIFF: sys.TUNSETIFF,
  TUNSETVNETHDRSZ: sys.TUNSETVNETHDRSZ,
  TUNSETOFFLOAD: sys.TUNSETOFFLOAD,
  IFF_TAP: sys.IFF_TAP,
  IFF_NO_PI: sys.IFF_NO_PI,
  IFF_VNET_HDR: sys.IFF_VNET_HDR,
  /** `sizeof(struct ifreq)` on 64-bit Linux. */
  IFREQ_SIZE: 40,
  IFNAMSIZ: 16,
} as const;

/** The virtio-net header kvm-rx uses on both sides (`struct virtio_net_hdr_v1`). */
export const VNET_HDR_SIZE = 12;

/** Options of {@link Tap.open}. */
export interface TapOptions {
  /** The syscall backend (default: the native one). */
  backend?: IoctlBackend;
}

/**
 * An open TAP interface. The fd is non-blocking: {@link read} returns 0 when no frame is waiting,
 * and {@link watchReadable} calls back on the event loop (libuv poll) when one arrives.
 *
 * @example
 * ```ts
 * import { Tap } from 'kvm-rx';
 * using tap = Tap.open('tap0'); // an existing interface (ip tuntap add dev tap0 mode tap), or a new one
 * const frame = new Uint8Array(65562);
 * const stop = tap.watchReadable(() => {
 *   for (let n = tap.read(frame); n > 0; n = tap.read(frame)) console.log(`${n - 12} bytes`);
 * });
 * ```
 */
export class Tap extends FdOwner {
  protected readonly label = 'Tap';
  /** The interface's name, as the kernel gave it. */
  readonly name: string;

  private constructor(backend: IoctlBackend, fd: number, name: string) {
    super(backend, fd);
    this.name = name;
  }

  /**
   * Opens `/dev/net/tun` and attaches to the TAP interface `name` (created if it does not exist,
   * which needs CAP_NET_ADMIN; an existing persistent one may be owned by this user), with
   * `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte virtio-net header. The interface lives in
   * this process's network namespace.
   *
   * @example `const tap = Tap.open('kvmrx0');`
   * @throws `TypeError` `ERR_INVALID_ARG_VALUE` for a name that is empty, longer than 15 bytes or
   *   not printable ASCII without `/`; {@link KvmError} from `open` (ENOENT: no `/dev/net/tun`)
   *   or `TUNSETIFF` (EPERM without CAP_NET_ADMIN, EBUSY when another process has it, EINVAL when
   *   `name` is not a TAP interface); nothing stays open on error
   */
  static open(name: string, options: TapOptions = {}): Tap {
    if (typeof name !== 'string') invalidType('name', 'a string', name);
    if (!/^[\x21-\x7e]{1,15}$/.test(name) || name.includes('/'))
      invalidValue('name', 'must be 1 to 15 printable ASCII characters without / (an interface name)', name);
    checkObject('options', options);
    const backend = options.backend ?? nativeBackend();
    const fd = backend.open('/dev/net/tun', sys.O_RDWR | sys.O_NONBLOCK | sys.O_CLOEXEC);
    try {
      const ifr = new Uint8Array(TUN.IFREQ_SIZE);
      ifr.set(Buffer.from(name, 'latin1'));
      new DataView(ifr.buffer).setUint16(TUN.IFNAMSIZ, TUN.IFF_TAP | TUN.IFF_NO_PI | TUN.IFF_VNET_HDR, true);
      backend.ioctl(fd, TUN.TUNSETIFF, ifr);
      const hdr = new Uint8Array(4);
      new DataView(hdr.buffer).setInt32(0, VNET_HDR_SIZE, true);
      backend.ioctl(fd, TUN.TUNSETVNETHDRSZ, hdr);
      // No offloads: the guest is offered none, so every frame is whole and checksummed.
      backend.ioctl(fd, TUN.TUNSETOFFLOAD, 0);
      const end = ifr.indexOf(0);
      const actual = Buffer.from(ifr.subarray(0, end < 0 || end > TUN.IFNAMSIZ ? TUN.IFNAMSIZ : end)).toString(
        'latin1',
      );
      return new Tap(backend, fd, actual);
    } catch (e) {
      backend.close(fd);
      throw e;
    }
  }

  /**
   * Reads one frame (virtio-net header + Ethernet frame) into `buffer`; returns its length, or 0
   * when none is waiting. A frame longer than `buffer` is truncated by the kernel: give 65562 bytes.
   * @example
   * ```ts
   * // @ts-setup: declare const tap: Tap;
   * const buffer = new Uint8Array(65562);
   * const n = tap.read(buffer); // 0: nothing waiting
   * ```
   * @throws {@link KvmError} from `read(2)` other than EAGAIN; `ERR_KVM_CLOSED` after close
   */
  read(buffer: Uint8Array): number {
    if (!(buffer instanceof Uint8Array)) invalidType('buffer', 'a Uint8Array', buffer);
    try {
      return this.backend.read(this.asRawFd(), buffer);
    } catch (e) {
      if (e instanceof KvmError && e.code === 'EAGAIN') return 0;
      throw e;
    }
  }

  /**
   * Sends one frame (virtio-net header + Ethernet frame). Returns `false` when the interface's
   * queue is full (EAGAIN: the frame is dropped, as a full NIC queue drops it) or down (EIO).
   * @example
   * ```ts
   * // @ts-setup: declare const tap: Tap;
   * // @ts-setup: declare const packet: Uint8Array;
   * if (!tap.write(packet)) console.log('dropped: the queue is full');
   * ```
   * @throws `RangeError` `ERR_OUT_OF_RANGE` for a packet shorter than the header; {@link KvmError}
   *   from `write(2)` otherwise; `ERR_KVM_CLOSED` after close
   */
  write(packet: Uint8Array): boolean {
    if (!(packet instanceof Uint8Array)) invalidType('packet', 'a Uint8Array', packet);
    if (packet.length < VNET_HDR_SIZE)
      throw new KvmRangeError(
        'ERR_OUT_OF_RANGE',
        `a packet must start with the ${VNET_HDR_SIZE}-byte virtio-net header`,
      );
    try {
      this.backend.write(this.asRawFd(), packet);
      return true;
    } catch (e) {
      if (e instanceof KvmError && (e.code === 'EAGAIN' || e.code === 'EIO')) return false;
      throw e;
    }
  }

  /**
   * Calls `onReadable` on the event loop whenever a frame may be waiting (libuv poll); returns the
   * function that stops it. Closing the Tap stops it too.
   * @example
   * ```ts
   * // @ts-setup: declare const tap: Tap;
   * // @ts-setup: declare function drain(tap: Tap): void;
   * const stop = tap.watchReadable(() => drain(tap));
   * stop();
   * ```
   * @throws `ERR_KVM_CLOSED` after close
   */
  watchReadable(onReadable: () => void): () => void {
    if (typeof onReadable !== 'function') invalidType('onReadable', 'a function', onReadable);
    let stop: (() => void) | undefined = this.backend.watchReadable(this.asRawFd(), onReadable);
    const release = this.adopt({
      close: () => {
        stop?.();
        stop = undefined;
      },
    });
    return () => {
      stop?.();
      stop = undefined;
      release();
    };
  }
}
