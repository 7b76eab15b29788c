/**
 * The virtio-mmio transport (virtio 1.2 §4.2, version 2): its register file, kept in a
 * `SharedArrayBuffer` so that the vCPU threads, which serve the guest's register accesses, and the
 * thread that runs the device, which processes its queues and raises its interrupt, see one state.
 *
 * The register semantics are a small state machine ({@link VirtioMmioRegisters}): the status
 * handshake (ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK, 0 resets), feature negotiation
 * (`VIRTIO_F_VERSION_1` required, a driver that acks a bit the device did not offer is refused by
 * leaving FEATURES_OK clear), queue set-up (accepted only between FEATURES_OK and DRIVER_OK, as
 * Firecracker does), InterruptStatus/ACK and the config space with its generation. Everything
 * here comes from the guest and is checked: an access that is not 32-bit to a register, an
 * unknown offset, a write in the wrong state, a queue index out of range are ignored (reads give
 * 0), never thrown.
 *
 * Concurrency: each register is one `Int32Array` word, read and written with `Atomics`. A
 * multi-register sequence (QueueSel, then a queue field) is not atomic against another vCPU doing
 * the same: a guest that races itself gets the mix it asked for, and the device checks the queue
 * configuration it is given at DRIVER_OK ({@link SplitQueue}'s constructor) before using it.
 *
 * @module
 */
import { KvmRangeError, KvmTypeError } from '../../abi/errors';

/** Register offsets of a virtio-mmio device (virtio 1.2 §4.2.2). */
export const VirtioMmioReg = {
  magicValue: 0x000,
  version: 0x004,
  deviceId: 0x008,
  vendorId: 0x00c,
  deviceFeatures: 0x010,
  deviceFeaturesSel: 0x014,
  driverFeatures: 0x020,
  driverFeaturesSel: 0x024,
  queueSel: 0x030,
  queueNumMax: 0x034,
  queueNum: 0x038,
  queueReady: 0x044,
  queueNotify: 0x050,
  interruptStatus: 0x060,
  interruptAck: 0x064,
  status: 0x070,
  queueDescLow: 0x080,
  queueDescHigh: 0x084,
  queueDriverLow: 0x090,
  queueDriverHigh: 0x094,
  queueDeviceLow: 0x0a0,
  queueDeviceHigh: 0x0a4,
  shmSel: 0x0ac,
  shmLenLow: 0x0b0,
  shmLenHigh: 0x0b4,
  shmBaseLow: 0x0b8,
  shmBaseHigh: 0x0bc,
  configGeneration: 0x0fc,
  config: 0x100,
} as const;

/** `MagicValue`: "virt" in little-endian. */
export const VIRTIO_MMIO_MAGIC = 0x74726976;
/** The size of one device's register window (one 4 KiB page, as Firecracker gives each device). */
export const VIRTIO_MMIO_WINDOW = 0x1000;

/** Device status bits (virtio 1.2 §2.1). */
export const VirtioStatus = {
  acknowledge: 1,
  driver: 2,
  driverOk: 4,
  featuresOk: 8,
  deviceNeedsReset: 64,
  failed: 128,
} as const;

/** Transport feature bits kvm-rx's transport knows (virtio 1.2 §6). */
export const VirtioFeature = {
  /** `VIRTIO_RING_F_EVENT_IDX` (29): used_event / avail_event notification suppression. */
  ringEventIdx: 1n << 29n,
  /** `VIRTIO_F_VERSION_1` (32): a virtio 1.x device; required by the version-2 transport. */
  version1: 1n << 32n,
} as const;

/** `InterruptStatus` bits. */
export const VirtioInterrupt = {
  /** A used buffer was added to a queue. */
  usedBuffer: 1,
  /** The config space changed (also how DEVICE_NEEDS_RESET is announced). */
  configChange: 2,
} as const;

/** The most queues one transport carries (virtio-vsock needs 3, virtio-net 2 per pair). */
export const VIRTIO_MMIO_MAX_QUEUES = 8;
/** The most config-space bytes one transport carries. */
export const VIRTIO_MMIO_MAX_CONFIG = 1024;

// The shared layout: Int32 words, then the config bytes.
const W = {
  status: 0,
  deviceFeaturesSel: 1,
  driverFeaturesSel: 2,
  driverFeaturesLo: 3,
  driverFeaturesHi: 4,
  queueSel: 5,
  interruptStatus: 6,
  configGeneration: 7,
  /** Bumped at every reset and every DRIVER_OK: an activation is valid while it is unchanged. */
  epoch: 8,
  /** Bumped (and `Atomics.notify`d) when the device's thread has something to look at. */
  doorbell: 9,
  deviceId: 10,
  deviceFeaturesLo: 11,
  deviceFeaturesHi: 12,
  numQueues: 13,
  configSize: 14,
  /** Bit i: queue i was notified through a register write that exited (no ioeventfd took it). */
  pendingNotify: 15,
  /** 1 once the device's side is closed: register accesses still answer, nothing else happens. */
  closed: 16,
  queues: 32,
} as const;
const QUEUE_WORDS = 16;
const Q = { numMax: 0, num: 1, ready: 2, descLo: 3, descHi: 4, driverLo: 5, driverHi: 6, deviceLo: 7, deviceHi: 8 };
const WORDS = W.queues + QUEUE_WORDS * VIRTIO_MMIO_MAX_QUEUES;
const CONFIG_OFFSET = WORDS * 4;
const SAB_BYTES = CONFIG_OFFSET + VIRTIO_MMIO_MAX_CONFIG;

/** What a transport is created from. */
export interface VirtioMmioLayout {
  /** The virtio device ID (1 net, 2 block, 3 console, 4 entropy, 19 vsock). */
  deviceId: number;
  /** The feature bits offered, transport bits included (`VirtioFeature.version1` is required). */
  features: bigint;
  /** `QueueNumMax` of each queue, in queue order (1 to {@link VIRTIO_MMIO_MAX_QUEUES} queues, each a power of two <= 32768). */
  queueSizes: readonly number[];
  /** The initial config space (default: none). At most {@link VIRTIO_MMIO_MAX_CONFIG} bytes. */
  config?: Uint8Array;
}

/**
 * The shared state of one virtio-mmio transport, as it travels to a vCPU's worker (structured
 * clone keeps the `SharedArrayBuffer` shared): give it to {@link virtioMmio} in the pipeline.
 */
export interface VirtioMmioShared {
  /** Guest-physical base of the register window. */
  base: bigint;
  /** The register file (see {@link createVirtioMmioState}). */
  state: SharedArrayBuffer;
}

/** A queue's configuration as the driver wrote it (unchecked guest input). */
export interface VirtioQueueRegisters {
  /** `QueueNum`: the size the driver chose. */
  size: number;
  /** `QueueReady`. */
  ready: boolean;
  /** Descriptor table, driver area (available ring) and device area (used ring) addresses. */
  descTable: bigint;
  availRing: bigint;
  usedRing: bigint;
}

/**
 * The registers of a transport that the driver sets and the device keeps (what a snapshot saves):
 * {@link VirtioMmioDeviceState.registerFile} reads them, {@link VirtioMmioDeviceState.loadRegisterFile}
 * puts them back. The device ID, the features offered, `QueueNumMax` and the config size are the
 * device's own and are not in it.
 */
export interface VirtioMmioRegisterFile {
  /** The device status. */
  status: number;
  /** `DeviceFeaturesSel` and `DriverFeaturesSel` (any u32 the driver wrote). */
  deviceFeaturesSel: number;
  driverFeaturesSel: number;
  /** The 64 feature bits the driver wrote (both pages). */
  driverFeatures: bigint;
  /** `QueueSel` (any u32 the driver wrote). */
  queueSel: number;
  /** `InterruptStatus`. */
  interruptStatus: number;
  /** `ConfigGeneration`. */
  configGeneration: number;
  /** The config space (exactly the device's config size). */
  config: Uint8Array;
  /** Each queue's registers, in queue order (one per queue of the device). */
  queues: VirtioQueueRegisters[];
}

const isPow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;

/**
 * A fresh register file for a device described by `layout`.
 *
 * @example
 * ```ts
 * import { VirtioFeature, createVirtioMmioState } from 'kvm-rx';
 * const state = createVirtioMmioState({ deviceId: 4, features: VirtioFeature.version1, queueSizes: [256] });
 * ```
 * @throws `TypeError` `ERR_INVALID_ARG_TYPE` / `RangeError` `ERR_OUT_OF_RANGE` for a layout out of
 *   range, `ERR_INVALID_ARG_VALUE` for features without VERSION_1
 */
export function createVirtioMmioState(layout: VirtioMmioLayout): SharedArrayBuffer {
  if (typeof layout !== 'object' || layout === null)
    throw new KvmTypeError('ERR_INVALID_ARG_TYPE', 'The "layout" argument must be an object');
  const { deviceId, features, config } = layout;
  const queueSizes: readonly number[] = layout.queueSizes;
  if (!Number.isInteger(deviceId) || deviceId < 1 || deviceId > 0xffff)
    throw new KvmRangeError(
      'ERR_OUT_OF_RANGE',
      `layout.deviceId must be an integer in 1..65535; got ${String(deviceId)}`,
    );
  if (typeof features !== 'bigint' || features < 0n || features >= 1n << 64n)
    throw new KvmTypeError('ERR_INVALID_ARG_TYPE', 'layout.features must be a bigint in 0..2^64-1');
  if ((features & VirtioFeature.version1) === 0n)
    throw new KvmTypeError(
      'ERR_INVALID_ARG_VALUE',
      'layout.features must include VirtioFeature.version1 (a version-2 virtio-mmio device must offer VIRTIO_F_VERSION_1)',
    );
  if (!Array.isArray(layout.queueSizes) || queueSizes.length < 1 || queueSizes.length > VIRTIO_MMIO_MAX_QUEUES)
    throw new KvmRangeError(
      'ERR_OUT_OF_RANGE',
      `layout.queueSizes must be an array of 1..${VIRTIO_MMIO_MAX_QUEUES} sizes`,
    );
  for (const [i, n] of queueSizes.entries())
    if (!Number.isInteger(n) || !isPow2(n) || n > 32768)
      throw new KvmRangeError(
        'ERR_OUT_OF_RANGE',
        `layout.queueSizes[${i}] must be a power of two in 1..32768; got ${String(n)}`,
      );
  if (config !== undefined && !(config instanceof Uint8Array))
    throw new KvmTypeError('ERR_INVALID_ARG_TYPE', 'layout.config must be a Uint8Array');
  if (config !== undefined && config.length > VIRTIO_MMIO_MAX_CONFIG)
    throw new KvmRangeError(
      'ERR_OUT_OF_RANGE',
      `layout.config must be at most ${VIRTIO_MMIO_MAX_CONFIG} bytes; got ${config.length}`,
    );
  const sab = new SharedArrayBuffer(SAB_BYTES);
  const w = new Int32Array(sab, 0, WORDS);
  w[W.deviceId] = deviceId;
  w[W.deviceFeaturesLo] = Number(features & 0xffff_ffffn) | 0;
  w[W.deviceFeaturesHi] = Number(features >> 32n) | 0;
  w[W.numQueues] = queueSizes.length;
  for (const [i, n] of queueSizes.entries()) w[W.queues + i * QUEUE_WORDS + Q.numMax] = n;
  if (config !== undefined) {
    new Uint8Array(sab, CONFIG_OFFSET, config.length).set(config);
    w[W.configSize] = config.length;
  }
  return sab;
}

/** Common views of a register file; both sides build on it. */
class TransportWords {
  protected readonly w: Int32Array;
  protected readonly configBytes: Uint8Array;

  constructor(state: SharedArrayBuffer) {
    if (!(state instanceof SharedArrayBuffer) || state.byteLength !== SAB_BYTES)
      throw new KvmTypeError(
        'ERR_INVALID_ARG_TYPE',
        'The "state" argument must be a SharedArrayBuffer made by createVirtioMmioState()',
      );
    this.w = new Int32Array(state, 0, WORDS);
    this.configBytes = new Uint8Array(state, CONFIG_OFFSET, VIRTIO_MMIO_MAX_CONFIG);
  }

  /** The device status register. */
  get status(): number {
    return Atomics.load(this.w, W.status) & 0xff;
  }

  /** The device's feature bits. */
  get deviceFeatures(): bigint {
    return this.u64(W.deviceFeaturesHi, W.deviceFeaturesLo);
  }

  /** The feature bits the driver acked (meaningful once FEATURES_OK is set). */
  get driverFeatures(): bigint {
    return this.u64(W.driverFeaturesHi, W.driverFeaturesLo);
  }

  /** The number of queues. */
  get numQueues(): number {
    return Atomics.load(this.w, W.numQueues);
  }

  /** The activation counter: bumped at each reset and each DRIVER_OK. */
  get epoch(): number {
    return Atomics.load(this.w, W.epoch);
  }

  /** `InterruptStatus`. */
  get interruptStatus(): number {
    return Atomics.load(this.w, W.interruptStatus);
  }

  /** Two 32-bit words (`hi`, `lo`: word indexes) as one unsigned 64-bit value. */
  protected u64(hi: number, lo: number): bigint {
    return (BigInt(Atomics.load(this.w, hi) >>> 0) << 32n) | BigInt(Atomics.load(this.w, lo) >>> 0);
  }

  protected bell(): void {
    Atomics.add(this.w, W.doorbell, 1);
    Atomics.notify(this.w, W.doorbell);
  }

  protected queueWord(q: number, field: number): number {
    return W.queues + q * QUEUE_WORDS + field;
  }
}

/**
 * The guest's side of a virtio-mmio transport: register reads and writes, as the vCPU threads
 * serve them. Pure: no ioctls, no guest memory; what the device's thread must act on (DRIVER_OK,
 * a reset, a notification that exited) rings the shared doorbell.
 *
 * @example
 * ```ts
 * import { VirtioFeature, VirtioMmioRegisters, createVirtioMmioState } from 'kvm-rx';
 * const regs = new VirtioMmioRegisters(createVirtioMmioState({ deviceId: 4, features: VirtioFeature.version1, queueSizes: [256] }));
 * regs.read(0x000, 4); // 0x74726976, "virt"
 * ```
 */
export class VirtioMmioRegisters extends TransportWords {
  /**
   * What the guest reads at `offset` (0 to 0xfff) with an access of `size` bytes (1, 2, 4 or 8).
   * Registers below 0x100 answer 32-bit accesses only (the spec's rule for drivers); anything
   * else reads 0. Config space reads any width within it.
   * @example
   * ```ts
   * // @ts-setup: import { VirtioMmioRegisters } from 'kvm-rx'; declare const regs: VirtioMmioRegisters;
   * regs.read(0x070, 4); // the status
   * ```
   */
  read(offset: number, size: number): number {
    if (offset >= VirtioMmioReg.config) return this.readConfig(offset - VirtioMmioReg.config, size);
    if (size !== 4 || (offset & 3) !== 0) return 0;
    const w = this.w;
    const sel = Atomics.load(w, W.queueSel) >>> 0;
    const queue = sel < this.numQueues ? sel : -1;
    switch (offset) {
      case VirtioMmioReg.magicValue:
        return VIRTIO_MMIO_MAGIC;
      case VirtioMmioReg.version:
        return 2;
      case VirtioMmioReg.deviceId:
        return Atomics.load(w, W.deviceId);
      case VirtioMmioReg.vendorId:
        return 0;
      case VirtioMmioReg.deviceFeatures: {
        const page = Atomics.load(w, W.deviceFeaturesSel) >>> 0;
        return page === 0
          ? Atomics.load(w, W.deviceFeaturesLo) >>> 0
          : page === 1
            ? Atomics.load(w, W.deviceFeaturesHi) >>> 0
            : 0;
      }
      case VirtioMmioReg.queueNumMax:
        return queue < 0 ? 0 : Atomics.load(w, this.queueWord(queue, Q.numMax));
      case VirtioMmioReg.queueReady:
        return queue < 0 ? 0 : Atomics.load(w, this.queueWord(queue, Q.ready));
      case VirtioMmioReg.interruptStatus:
        return Atomics.load(w, W.interruptStatus);
      case VirtioMmioReg.status:
        return this.status;
      case VirtioMmioReg.shmLenLow:
      case VirtioMmioReg.shmLenHigh:
        return 0xffff_ffff; // no shared-memory regions: length -1
      case VirtioMmioReg.configGeneration:
        return Atomics.load(w, W.configGeneration) >>> 0;
      default:
        return 0;
    }
  }

  /**
   * The guest writes `value` (the access's bytes as a little-endian number) at `offset` with an
   * access of `size` bytes. Writes in the wrong state, of the wrong width or to read-only or
   * unknown registers are ignored, as a device ignores what it does not implement.
   * @example
   * ```ts
   * // @ts-setup: import { VirtioMmioRegisters } from 'kvm-rx'; declare const regs: VirtioMmioRegisters;
   * regs.write(0x070, 4, 1); // ACKNOWLEDGE
   * ```
   */
  write(offset: number, size: number, value: number): void {
    if (offset >= VirtioMmioReg.config) return; // the devices here have no writable config
    if (size !== 4 || (offset & 3) !== 0) return;
    value >>>= 0;
    const w = this.w;
    const status = this.status;
    const sel = Atomics.load(w, W.queueSel) >>> 0;
    const queue = sel < this.numQueues ? sel : -1;
    // Queue fields may change only after FEATURES_OK and before DRIVER_OK.
    const queueSetup =
      queue >= 0 &&
      (status & VirtioStatus.featuresOk) !== 0 &&
      (status & (VirtioStatus.driverOk | VirtioStatus.failed)) === 0;
    const queueField = (field: number): void => {
      if (queueSetup) Atomics.store(w, this.queueWord(queue, field), value | 0);
    };
    switch (offset) {
      case VirtioMmioReg.deviceFeaturesSel:
        Atomics.store(w, W.deviceFeaturesSel, value | 0);
        return;
      case VirtioMmioReg.driverFeatures: {
        // Only while negotiating: DRIVER set, FEATURES_OK not yet.
        if ((status & VirtioStatus.driver) === 0 || (status & (VirtioStatus.featuresOk | VirtioStatus.failed)) !== 0)
          return;
        const page = Atomics.load(w, W.driverFeaturesSel) >>> 0;
        if (page === 0) Atomics.store(w, W.driverFeaturesLo, value | 0);
        else if (page === 1) Atomics.store(w, W.driverFeaturesHi, value | 0);
        return;
      }
      case VirtioMmioReg.driverFeaturesSel:
        Atomics.store(w, W.driverFeaturesSel, value | 0);
        return;
      case VirtioMmioReg.queueSel:
        Atomics.store(w, W.queueSel, value | 0);
        return;
      case VirtioMmioReg.queueNum:
        queueField(Q.num);
        return;
      case VirtioMmioReg.queueReady:
        if (queueSetup) Atomics.store(w, this.queueWord(queue, Q.ready), value === 1 ? 1 : 0);
        return;
      case VirtioMmioReg.queueNotify:
        // Normally taken by an ioeventfd and never seen here; one that exits still counts.
        if (value < this.numQueues && (status & VirtioStatus.driverOk) !== 0) {
          Atomics.or(w, W.pendingNotify, 1 << value);
          this.bell();
        }
        return;
      case VirtioMmioReg.interruptAck:
        Atomics.and(w, W.interruptStatus, ~value);
        return;
      case VirtioMmioReg.status:
        this.writeStatus(status, value & 0xff);
        return;
      case VirtioMmioReg.queueDescLow:
        return queueField(Q.descLo);
      case VirtioMmioReg.queueDescHigh:
        return queueField(Q.descHi);
      case VirtioMmioReg.queueDriverLow:
        return queueField(Q.driverLo);
      case VirtioMmioReg.queueDriverHigh:
        return queueField(Q.driverHi);
      case VirtioMmioReg.queueDeviceLow:
        return queueField(Q.deviceLo);
      case VirtioMmioReg.queueDeviceHigh:
        return queueField(Q.deviceHi);
      default:
        return;
    }
  }

  private readConfig(at: number, size: number): number {
    const n = Atomics.load(this.w, W.configSize);
    if (![1, 2, 4, 8].includes(size) || at + size > n) return 0;
    let v = 0;
    // An 8-byte read yields the low 32 bits here; Linux reads 64-bit fields as two 32-bit reads.
    for (let i = Math.min(size, 4) - 1; i >= 0; i--) v = v * 256 + Atomics.load(this.configBytes, at + i);
    return v;
  }

  private writeStatus(current: number, value: number): void {
    const w = this.w;
    if (value === 0) {
      this.reset();
      return;
    }
    if ((value & VirtioStatus.failed) !== 0) {
      // The driver gave up: keep the state, note it, let the device stop.
      Atomics.or(w, W.status, VirtioStatus.failed);
      this.bell();
      return;
    }
    const cur = current & ~VirtioStatus.deviceNeedsReset;
    const { acknowledge: A, driver: D, featuresOk: F, driverOk: O } = VirtioStatus;
    if (cur === 0 && value === A) Atomics.store(w, W.status, A);
    else if (cur === A && value === (A | D)) Atomics.store(w, W.status, A | D);
    else if (cur === (A | D) && value === (A | D | F)) {
      // The subset must be one the device offered, and VERSION_1 must be in it; otherwise
      // FEATURES_OK stays clear and the driver, reading it back, knows it was refused.
      const acked = this.driverFeatures;
      if ((acked & ~this.deviceFeatures) === 0n && (acked & VirtioFeature.version1) !== 0n)
        Atomics.store(w, W.status, A | D | F);
    } else if (cur === (A | D | F) && value === (A | D | F | O)) {
      Atomics.store(w, W.status, A | D | F | O);
      Atomics.add(w, W.epoch, 1);
      this.bell();
    }
    // Any other transition is ignored.
  }

  private reset(): void {
    const w = this.w;
    Atomics.store(w, W.status, 0);
    Atomics.add(w, W.epoch, 1); // first: the device's thread stops using the queues
    for (const i of [W.deviceFeaturesSel, W.driverFeaturesSel, W.driverFeaturesLo, W.driverFeaturesHi, W.queueSel])
      Atomics.store(w, i, 0);
    Atomics.store(w, W.interruptStatus, 0);
    Atomics.store(w, W.pendingNotify, 0);
    for (let q = 0; q < VIRTIO_MMIO_MAX_QUEUES; q++)
      for (let f = Q.num; f <= Q.deviceHi; f++) Atomics.store(w, this.queueWord(q, f), 0);
    this.bell();
  }
}

/**
 * The device's side of a virtio-mmio transport: what the driver negotiated and configured, the
 * interrupt status it raises, the config space it publishes. Used by the thread that runs the
 * device ({@link VirtioMmioDevice}).
 *
 * @example
 * ```ts
 * import { VirtioFeature, VirtioMmioDeviceState, createVirtioMmioState } from 'kvm-rx';
 * const device = new VirtioMmioDeviceState(createVirtioMmioState({ deviceId: 4, features: VirtioFeature.version1, queueSizes: [256] }));
 * device.driverOk; // false until the guest's driver is done
 * ```
 */
export class VirtioMmioDeviceState extends TransportWords {
  /** Whether DRIVER_OK is set (and neither FAILED nor DEVICE_NEEDS_RESET). */
  get driverOk(): boolean {
    const s = this.status;
    return (s & VirtioStatus.driverOk) !== 0 && (s & (VirtioStatus.failed | VirtioStatus.deviceNeedsReset)) === 0;
  }

  /** Queue `index`'s registers as the driver wrote them (unchecked). */
  queue(index: number): VirtioQueueRegisters {
    if (!Number.isInteger(index) || index < 0 || index >= this.numQueues)
      throw new KvmRangeError(
        'ERR_OUT_OF_RANGE',
        `queue index must be in 0..${this.numQueues - 1}; got ${String(index)}`,
      );
    const r = (f: number): number => Atomics.load(this.w, this.queueWord(index, f)) >>> 0;
    const addr = (lo: number, hi: number): bigint => this.u64(this.queueWord(index, hi), this.queueWord(index, lo));
    return {
      size: r(Q.num),
      ready: r(Q.ready) === 1,
      descTable: addr(Q.descLo, Q.descHi),
      availRing: addr(Q.driverLo, Q.driverHi),
      usedRing: addr(Q.deviceLo, Q.deviceHi),
    };
  }

  /** `QueueNumMax` of queue `index`. */
  queueMaxSize(index: number): number {
    return Atomics.load(this.w, this.queueWord(index, Q.numMax));
  }

  /** The doorbell's value now (wait for it to change with {@link waitForDoorbell}). */
  get doorbell(): number {
    return Atomics.load(this.w, W.doorbell);
  }

  /** Resolves once the doorbell differs from `seen` (never spins: `Atomics.waitAsync`). */
  async waitForDoorbell(seen: number): Promise<void> {
    const r = Atomics.waitAsync(this.w, W.doorbell, seen);
    if (r.async) await r.value;
  }

  /** Wakes {@link waitForDoorbell} (e.g. to stop waiting at close). */
  ring(): void {
    this.bell();
  }

  /** The queues notified through register writes that exited since the last call (a bit mask). */
  takePendingNotify(): number {
    return Atomics.exchange(this.w, W.pendingNotify, 0);
  }

  /** Sets `bits` in InterruptStatus (before the interrupt line is raised). */
  setInterrupt(bits: number): void {
    Atomics.or(this.w, W.interruptStatus, bits);
  }

  /**
   * Sets DEVICE_NEEDS_RESET (the device met something it cannot go on from) and the config-change
   * interrupt bit; the caller raises the line.
   */
  setNeedsReset(): void {
    Atomics.or(this.w, W.status, VirtioStatus.deviceNeedsReset);
    Atomics.or(this.w, W.interruptStatus, VirtioInterrupt.configChange);
  }

  /**
   * The registers the driver set, read at once (for a snapshot: read them while no vCPU runs, as
   * a multi-register read is not atomic against the guest).
   * @example
   * ```ts
   * // @ts-setup: declare const device: VirtioMmioDeviceState;
   * const saved = device.registerFile();
   * saved.queues[0].ready; // whether the driver made queue 0 ready
   * ```
   */
  registerFile(): VirtioMmioRegisterFile {
    const w = this.w;
    const queues: VirtioQueueRegisters[] = [];
    for (let i = 0; i < this.numQueues; i++) queues.push(this.queue(i));
    return {
      status: this.status,
      deviceFeaturesSel: Atomics.load(w, W.deviceFeaturesSel) >>> 0,
      driverFeaturesSel: Atomics.load(w, W.driverFeaturesSel) >>> 0,
      driverFeatures: this.driverFeatures,
      queueSel: Atomics.load(w, W.queueSel) >>> 0,
      interruptStatus: Atomics.load(w, W.interruptStatus) >>> 0,
      configGeneration: Atomics.load(w, W.configGeneration) >>> 0,
      config: this.config,
      queues,
    };
  }

  /**
   * Puts saved registers back (a snapshot's restore), and bumps the activation counter: an
   * activation of the former state is over. Pending exited notifications are dropped (the device
   * looks at every queue after a restore anyway). The caller has checked `file` against this
   * device (queue count, config size, the values' ranges; see `VirtioMmioDevice.restoreState`).
   *
   * @throws `RangeError` `ERR_OUT_OF_RANGE` when `file` has another number of queues or another
   *   config size than this device (nothing is written)
   * @example
   * ```ts
   * // @ts-setup: declare const device: VirtioMmioDeviceState;
   * // @ts-setup: declare const saved: VirtioMmioRegisterFile;
   * device.loadRegisterFile(saved);
   * ```
   */
  loadRegisterFile(file: VirtioMmioRegisterFile): void {
    const w = this.w;
    const n = Atomics.load(w, W.configSize);
    if (file.queues.length !== this.numQueues || file.config.length !== n)
      throw new KvmRangeError(
        'ERR_OUT_OF_RANGE',
        `the register file has ${file.queues.length} queues and ${file.config.length} config bytes; ` +
          `this device has ${this.numQueues} and ${n}`,
      );
    const u32 = (v: number): number => v | 0;
    Atomics.store(w, W.deviceFeaturesSel, u32(file.deviceFeaturesSel));
    Atomics.store(w, W.driverFeaturesSel, u32(file.driverFeaturesSel));
    Atomics.store(w, W.driverFeaturesLo, Number(file.driverFeatures & 0xffff_ffffn) | 0);
    Atomics.store(w, W.driverFeaturesHi, Number((file.driverFeatures >> 32n) & 0xffff_ffffn) | 0);
    Atomics.store(w, W.queueSel, u32(file.queueSel));
    Atomics.store(w, W.interruptStatus, u32(file.interruptStatus));
    Atomics.store(w, W.configGeneration, u32(file.configGeneration));
    for (let i = 0; i < n; i++) Atomics.store(this.configBytes, i, file.config[i]);
    for (const [q, r] of file.queues.entries()) {
      const set = (f: number, v: number): void => void Atomics.store(w, this.queueWord(q, f), v | 0);
      const lo = (a: bigint): number => Number(a & 0xffff_ffffn);
      const hi = (a: bigint): number => Number((a >> 32n) & 0xffff_ffffn);
      set(Q.num, r.size);
      set(Q.ready, r.ready ? 1 : 0);
      set(Q.descLo, lo(r.descTable));
      set(Q.descHi, hi(r.descTable));
      set(Q.driverLo, lo(r.availRing));
      set(Q.driverHi, hi(r.availRing));
      set(Q.deviceLo, lo(r.usedRing));
      set(Q.deviceHi, hi(r.usedRing));
    }
    Atomics.store(w, W.pendingNotify, 0);
    Atomics.add(w, W.epoch, 1);
    Atomics.store(w, W.status, file.status & 0xff);
  }

  /** The config space's bytes (a copy). */
  get config(): Uint8Array {
    return this.configBytes.slice(0, Atomics.load(this.w, W.configSize));
  }

  /**
   * Replaces `data.length` config bytes at `offset`, with the generation bumped before and after
   * so that a driver reading across the change retries; the caller raises the config-change
   * interrupt if the driver should look.
   */
  writeConfig(offset: number, data: Uint8Array): void {
    const n = Atomics.load(this.w, W.configSize);
    if (!Number.isInteger(offset) || offset < 0 || offset + data.length > n)
      throw new KvmRangeError(
        'ERR_OUT_OF_RANGE',
        `config bytes ${offset}..${offset + data.length} are outside the ${n}-byte config space`,
      );
    Atomics.add(this.w, W.configGeneration, 1);
    for (let i = 0; i < data.length; i++) Atomics.store(this.configBytes, offset + i, data[i]);
    Atomics.add(this.w, W.configGeneration, 1);
  }
}
