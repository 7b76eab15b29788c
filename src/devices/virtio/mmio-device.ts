/**
 * A virtio device on the virtio-mmio transport, run on the thread that creates it (the main
 * thread, usually): the guest's queue notifications arrive through one ioeventfd per queue (the
 * kernel takes the QueueNotify write without a vCPU exit), the device's work is an Observable of
 * descriptor chains per queue, and its answers raise the interrupt through an irqfd. The
 * transport's registers are served in the vCPU threads by {@link virtioMmio}, over the shared
 * register file this class owns ({@link VirtioMmioDevice.shared}).
 *
 * @module
 */
import { Observable, Subject, type Subscription } from 'rxjs';
import {
  checkBool,
  checkInt,
  checkObject,
  checkString,
  checkU16,
  checkU32,
  checkU8,
  invalidType,
  invalidValue,
  outOfRange,
} from '../../abi/validate';
import { KvmClosedError, KvmRangeError } from '../../abi/errors';
import { fromIoEvent } from '../../runtime/from-io-event';
import { EventFd } from '../../wrappers/event-fd';
import type { GuestMemoryMap } from '../../wrappers/guest-memory';
import { IoEventAddress } from '../../wrappers/io-event';
import { VmFd } from '../../wrappers/vm-fd';
import { VirtqueueError } from './errors';
import {
  VIRTIO_MMIO_WINDOW,
  VirtioFeature,
  VirtioInterrupt,
  VirtioMmioDeviceState,
  VirtioMmioReg,
  VirtioStatus,
  createVirtioMmioState,
  type VirtioMmioRegisterFile,
  type VirtioMmioShared,
  type VirtioQueueRegisters,
} from './mmio-transport';
import { DescriptorChain, SplitQueue, splitQueueSizes } from './split-queue';

/**
 * A virtio device model: what it offers, and what it does once the driver has set it up. It is a
 * description plus one function; the transport does the rest (negotiation, queues, interrupts,
 * reset). A model is activated at each DRIVER_OK and its Observable unsubscribed at each reset.
 *
 * @example
 * ```ts
 * import { map } from 'rxjs';
 * import type { VirtioDevice } from 'kvm-rx';
 * // A device with one queue that zero-fills every buffer it is given.
 * const zeroes: VirtioDevice = {
 *   name: 'zeroes',
 *   deviceId: 4,
 *   features: 0n,
 *   queueSizes: [64],
 *   activate: ({ queues: [q] }) => q.chains$.pipe(map((chain) => q.complete(chain, chain.writableLength))),
 * };
 * ```
 */
export interface VirtioDevice {
  /** A short name for messages ("virtio-rng"). */
  readonly name: string;
  /** The virtio device ID (1 net, 2 block, 3 console, 4 entropy, 19 vsock). */
  readonly deviceId: number;
  /** Device-specific feature bits offered; the transport adds VERSION_1 and RING_EVENT_IDX. */
  readonly features: bigint;
  /** `QueueNumMax` of each queue, in queue order. */
  readonly queueSizes: readonly number[];
  /** The config space (default: none). */
  readonly config?: Uint8Array;
  /**
   * Runs the device: called at DRIVER_OK, subscribed at once, unsubscribed when the driver resets
   * the device or the device is closed. An error from it puts the device into DEVICE_NEEDS_RESET.
   */
  activate(ctx: VirtioDeviceContext): Observable<unknown>;
  /**
   * The model's own state for a snapshot, beyond the transport's (`VirtioMmioDevice.saveState`
   * puts it in {@link VirtioMmioState.model}): JSON-safe data only (numbers, strings, booleans,
   * `null`, arrays and plain objects; no bigint, no typed arrays). Called only while the device is
   * quiesced. Absent, or returning `undefined`: the model has nothing to keep.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const model: VirtioDevice;
   * const saved = model.saveState?.(); // e.g. { pendingInput: 'aGk=' } for virtio-console
   * ```
   */
  saveState?(): unknown;
  /**
   * Takes back what {@link saveState} gave, on a model built with the same options in the
   * restoring process (`undefined` when nothing was saved). Called by
   * `VirtioMmioDevice.restoreState` after the transport's state was checked and before the model
   * is activated with the restored queues (only when the saved status had DRIVER_OK). It checks
   * everything before it changes anything.
   *
   * @throws `TypeError`/`RangeError` with an `ERR_*` code naming the field for a state it cannot
   *   take (the transport is then left unchanged)
   * @example
   * ```ts
   * // @ts-setup: declare const model: VirtioDevice; declare const saved: VirtioMmioState;
   * model.restoreState?.(saved.model);
   * ```
   */
  restoreState?(state: unknown): void;
}

/** What an activated {@link VirtioDevice} works with. */
export interface VirtioDeviceContext {
  /** The feature bits the driver accepted. */
  readonly features: bigint;
  /** The queues, in queue order (a queue the driver did not make ready never emits). */
  readonly queues: readonly VirtioQueue[];
  /** Guest memory, by guest-physical address (bounds-checked). */
  readonly memory: GuestMemoryMap;
  /**
   * The device cannot go on (a malformed request it cannot even fail): sets DEVICE_NEEDS_RESET,
   * tells the driver with a config-change interrupt, stops the device and reports `reason`.
   */
  needsReset(reason: string): void;
  /**
   * Replaces config bytes at `offset` (the generation changes around it) and raises the
   * config-change interrupt.
   */
  updateConfig(offset: number, data: Uint8Array): void;
  /** Aborted when this activation ends (reset, close). */
  readonly signal: AbortSignal;
  /**
   * Whether the device is quiesced now ({@link VirtioMmioDevice.quiesce} called, {@link
   * VirtioMmioDevice.unquiesce} not yet): no chain is taken from the rings, and a held chain
   * ({@link VirtioQueue.hold}) completed meanwhile reaches the used ring only at unquiesce, and
   * never if the state is restored elsewhere. So while it says `true` a model keeps the data it
   * has for held chains (a packet stays in the tap, console input in its saved state) and
   * delivers it from {@link onUnquiesce}. Absent in a context a wrapper built without it: never
   * quiesced.
   */
  readonly isQuiesced?: () => boolean;
  /**
   * Calls `fn` each time the device is unquiesced (while this activation lasts); returns the
   * function that stops it.
   */
  readonly onUnquiesce?: (fn: () => void) => () => void;
}

/** One of an activated device's queues. */
export interface VirtioQueue {
  /** The queue's index. */
  readonly index: number;
  /**
   * The chains the guest makes available, in ring order, as it notifies. Chains are taken from the
   * ring only while it has a subscriber (so a model that subscribes after an asynchronous set-up
   * loses none); with several subscribers each chain goes to all of them, which is rarely wanted.
   */
  readonly chains$: Observable<DescriptorChain>;
  /**
   * Returns `chain` to the guest with `len` bytes written into its writable part, and raises
   * the interrupt unless the driver suppressed it (interrupts for chains completed in the same
   * tick are raised once). A chain of an earlier activation (the driver reset the device since)
   * is dropped: the guest no longer owns those rings.
   */
  complete(chain: DescriptorChain, len: number): void;
  /**
   * Says that the model keeps `chain` until it has something to put in it (a receive buffer
   * waiting for a packet, an event buffer), rather than working on it: {@link
   * VirtioMmioDevice.quiesce} does not wait for it, and {@link VirtioMmioDevice.saveState}
   * records it, so that a restored device gives it to its model again, before any chain newly
   * made available. A chain that is not held is one the model is working on, and quiesce waits
   * until it is completed. Holding ends with {@link complete}; a chain of an earlier activation,
   * or one held already, is ignored.
   */
  readonly hold?: (chain: DescriptorChain) => void;
}

/**
 * One queue of a {@link VirtioMmioState}: the registers the driver set and the device's positions
 * in the rings. 64-bit addresses are decimal strings.
 */
export interface VirtioMmioQueueState {
  /** `QueueNum` as the driver wrote it (0 until it did). */
  size: number;
  /** `QueueReady`. */
  ready: boolean;
  /** The descriptor table's guest-physical address (`QueueDesc`), a decimal string. */
  descTable: string;
  /** The available ring's (`QueueDriver`), a decimal string. */
  availRing: string;
  /** The used ring's (`QueueDevice`), a decimal string. */
  usedRing: string;
  /** The free-running index (u16) of the next available-ring entry the device will read. */
  nextAvail: number;
  /** The free-running index (u16) of the next used-ring entry the device will write: `used.idx`. */
  nextUsed: number;
  /**
   * `used.idx` at the device's last decision whether to interrupt (EVENT_IDX's `old`), or `null`
   * when it made none yet (its next completion interrupts).
   */
  signalledUsed: number | null;
  /**
   * The heads of the chains the device held ({@link VirtioQueue.hold}: taken from the ring, not
   * yet used), in the order it took them; the restored device takes them again first. There are
   * `(nextAvail - nextUsed) & 0xffff` of them, as a quiesced device works on no other chain.
   */
  held: number[];
}

/**
 * A {@link VirtioMmioDevice} saved while quiesced ({@link VirtioMmioDevice.saveState}): the
 * transport's registers as the driver set them, each queue's positions, and the model's own
 * state. Plain JSON-safe data: `JSON.parse(JSON.stringify(state))` restores the same device.
 * The device ID, name, queue count and config size identify the device it may be restored into;
 * the features offered and `QueueNumMax` are that device's own (the acked features must be a
 * subset, the queue sizes at most the maxima).
 */
export interface VirtioMmioState {
  /** The format's version: 1. */
  version: 1;
  /** The virtio device ID. */
  deviceId: number;
  /** The model's name (`VirtioDevice.name`). */
  name: string;
  /** The device status (see `VirtioStatus`). */
  status: number;
  /** `DeviceFeaturesSel`. */
  deviceFeaturesSel: number;
  /** `DriverFeaturesSel`. */
  driverFeaturesSel: number;
  /** The 64 feature bits the driver wrote, a decimal string. */
  driverFeatures: string;
  /** `QueueSel`. */
  queueSel: number;
  /** `InterruptStatus` (bits the driver has not acknowledged yet). */
  interruptStatus: number;
  /** `ConfigGeneration`. */
  configGeneration: number;
  /** The config space's bytes. */
  config: number[];
  /** Every queue, in queue order. */
  queues: VirtioMmioQueueState[];
  /** The model's own state ({@link VirtioDevice.saveState}); absent when it keeps none. */
  model?: unknown;
}

/** Options of {@link VirtioMmioDevice.restoreState}. */
export interface VirtioRestoreOptions {
  /**
   * When a restored device that was running (DRIVER_OK) starts working again: `'now'` (default),
   * before `restoreState` returns, or `'deferred'`, at the next microtask checkpoint (or the first
   * call on the device, whichever comes first). The registers are back either way, so a vCPU can
   * run in between: its notifications wait in their ioeventfds. A VMM starts its vCPUs in that gap,
   * so the devices' work on restore (views of guest memory, the held chains handed back, e.g. a
   * network device reading its tap for each receive buffer) does not delay the guest.
   */
  activation?: 'now' | 'deferred';
}

/** Options of a {@link VirtioMmioDevice}. */
export interface VirtioMmioDeviceOptions {
  /** Guest-physical base of the 4 KiB register window (page-aligned, outside guest RAM). */
  base: bigint;
  /** The GSI the device interrupts on (an irqfd; with kvm-rx's Linux machine, 5 to 15). */
  gsi: number;
  /** Guest memory (default: `vm.guestMemory`). */
  memory?: GuestMemoryMap;
  /** Where a device that needs a reset says why (default: `process.emitWarning`). */
  log?: (message: string) => void;
}

/** The most chains one notification takes before yielding to the event loop. */
const DRAIN_BATCH = 1024;

/** A chain handed to the model: worked on (`held` false, quiesce waits for it) or kept for later. */
interface Taken {
  readonly chain: DescriptorChain;
  held: boolean;
  /** The length of a held chain's completion while quiesced: it reaches the used ring at unquiesce. */
  deferred?: number;
}

interface Activation {
  readonly epoch: number;
  readonly queues: Array<SplitQueue | undefined>;
  readonly subjects: Array<Subject<DescriptorChain>>;
  /** Per queue, the chains handed to the model and not yet used, by head, in the order taken. */
  readonly taken: Array<Map<number, Taken>>;
  /** Per queue, chains a restored device holds again, handed to the model before the ring's. */
  readonly redeliver: DescriptorChain[][];
  readonly dirty: Set<number>;
  readonly abort: AbortController;
  readonly unquiesced: Set<() => void>;
  subscription?: Subscription;
  /** Chains taken and neither completed nor held. */
  busy: number;
  flushScheduled: boolean;
  ended: boolean;
}

/** A queue's positions in the rings, as a restore gives them to an activation. */
interface QueuePositions {
  nextAvail: number;
  nextUsed: number;
  signalledUsed: number | null;
  held: number[];
}

type QuiesceState = 'running' | 'quiescing' | 'quiesced';

const STATUS_REACHED = new Set([0, 1, 3, 11, 15]);

const stateError = (code: string, message: string): Error => Object.assign(new Error(message), { code });

/** A u64 saved as a decimal string. */
function u64String(name: string, value: unknown): bigint {
  if (typeof value !== 'string') invalidType(name, 'a decimal string (an unsigned 64-bit integer)', value);
  if (!/^(0|[1-9][0-9]{0,19})$/.test(value) || BigInt(value) >= 1n << 64n)
    outOfRange(name, 'a decimal string of an integer >= 0 and < 2^64', value);
  return BigInt(value);
}

/**
 * A {@link VirtioDevice} on a virtio-mmio transport of `vm`, at `options.base` with its interrupt
 * on `options.gsi`. Give {@link shared} to the vCPU pipelines ({@link virtioMmio}) and
 * {@link cmdline} to the guest kernel. Closing the VM closes it.
 *
 * Snapshots: {@link quiesce} (with the vCPUs paused), then {@link saveState}; in the restoring
 * process, a device built with the same model and options, then {@link restoreState} before the
 * vCPUs run.
 *
 * @example
 * ```ts
 * // @ts-setup: import { VirtioMmioDevice, virtioRng } from 'kvm-rx'; declare const vm: import('kvm-rx').VmFd;
 * const rng = new VirtioMmioDevice(vm, virtioRng(), { base: 0xd000_0000n, gsi: 5 });
 * rng.cmdline; // 'virtio_mmio.device=4K@0xd0000000:5'
 * ```
 * @throws `TypeError`/`RangeError` with an `ERR_*` code for bad arguments (before any fd is made);
 *   {@link KvmError} from registering the irqfd or the ioeventfds (nothing stays registered)
 */
export class VirtioMmioDevice {
  /** The device model. */
  readonly device: VirtioDevice;
  /** The register window's base. */
  readonly base: bigint;
  /** The interrupt's GSI. */
  readonly gsi: number;
  readonly #vm: VmFd;
  readonly #memory: GuestMemoryMap;
  readonly #state: VirtioMmioDeviceState;
  readonly #sab: SharedArrayBuffer;
  readonly #irq: EventFd;
  readonly #notifies: Subscription[] = [];
  readonly #log: (message: string) => void;
  #releaseFromVm: () => void = () => undefined;
  #active: Activation | undefined;
  /** A restore's activation not made yet (`restoreState(state, { activation: 'deferred' })`). */
  #pendingRestore: { epoch: number; positions: readonly QueuePositions[] } | undefined;
  #epoch = 0;
  #closed = false;
  #failures = 0;
  #quiesce: QuiesceState = 'running';
  /** Guest pages (4 KiB frame numbers) the device wrote since the last {@link takeWrittenPages}. */
  readonly #written = new Set<number>();
  readonly #quiesceWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];

  constructor(vm: VmFd, device: VirtioDevice, options: VirtioMmioDeviceOptions) {
    if (!(vm instanceof VmFd)) invalidType('vm', 'a VmFd', vm);
    checkObject('device', device);
    if (typeof device.activate !== 'function') invalidType('device.activate', 'a function', typeof device.activate);
    if (typeof device.name !== 'string') invalidType('device.name', 'a string', device.name);
    if (device.saveState !== undefined && typeof device.saveState !== 'function')
      invalidType('device.saveState', 'a function', typeof device.saveState);
    if (device.restoreState !== undefined && typeof device.restoreState !== 'function')
      invalidType('device.restoreState', 'a function', typeof device.restoreState);
    checkObject('options', options);
    if (typeof options.base !== 'bigint') invalidType('options.base', 'a bigint', options.base);
    if (options.base < 0n || options.base % BigInt(VIRTIO_MMIO_WINDOW) !== 0n || options.base >= 1n << 52n)
      invalidValue('options.base', 'must be a 4 KiB-aligned guest-physical address', options.base);
    if (!Number.isInteger(options.gsi) || options.gsi < 0 || options.gsi > 1023)
      throw new KvmRangeError(
        'ERR_OUT_OF_RANGE',
        `options.gsi must be an integer in 0..1023; got ${String(options.gsi)}`,
      );
    if (options.log !== undefined && typeof options.log !== 'function')
      invalidType('options.log', 'a function', options.log);
    if (typeof device.features !== 'bigint') invalidType('device.features', 'a bigint', device.features);
    this.device = device;
    this.base = options.base;
    this.gsi = options.gsi;
    this.#vm = vm;
    this.#memory = options.memory ?? vm.guestMemory;
    this.#log = options.log ?? ((m) => process.emitWarning(m, 'VirtioDeviceWarning'));
    this.#sab = createVirtioMmioState({
      deviceId: device.deviceId,
      features: device.features | VirtioFeature.version1 | VirtioFeature.ringEventIdx,
      queueSizes: device.queueSizes,
      config: device.config,
    });
    this.#state = new VirtioMmioDeviceState(this.#sab);
    this.#irq = new EventFd({ backend: vm.backend });
    try {
      vm.registerIrqfd(this.#irq, this.gsi);
      const notify = IoEventAddress.mmio(this.base + BigInt(VirtioMmioReg.queueNotify));
      for (let i = 0; i < device.queueSizes.length; i++) {
        // Linux writes the queue's index with a 32-bit store: one ioeventfd per index.
        let failed: unknown;
        let subscribed = false;
        const sub = fromIoEvent(vm, notify, { value: i, length: 4 }).subscribe({
          next: () => this.#drain(i),
          error: (e: unknown) => {
            // Registration errors arrive during subscribe (thrown below); later ones are the eventfd's.
            if (subscribed) this.#failNow(`queue ${i}'s notification eventfd failed: ${String(e)}`);
            else failed = e;
          },
        });
        // eslint-disable-next-line @typescript-eslint/only-throw-error -- rethrows fromIoEvent's error as it came
        if (failed !== undefined) throw failed;
        subscribed = true;
        this.#notifies.push(sub);
      }
    } catch (e) {
      this.#teardown();
      throw e;
    }
    this.#releaseFromVm = vm.adopt({ close: () => this.close() });
    void this.#watch();
  }

  /** For the vCPU pipelines: `{ base, state }` (structured-cloneable; the state stays shared). */
  get shared(): VirtioMmioShared {
    return { base: this.base, state: this.#sab };
  }

  /** The kernel command-line entry that tells Linux about this device. */
  get cmdline(): string {
    return `virtio_mmio.device=4K@0x${this.base.toString(16)}:${this.gsi}`;
  }

  /** The device status register (see `VirtioStatus`). */
  get status(): number {
    return this.#state.status;
  }

  /** How many times the device went into DEVICE_NEEDS_RESET. */
  get failures(): number {
    return this.#failures;
  }

  /** Whether {@link close} ran. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Whether a {@link quiesce} has resolved and no {@link unquiesce} followed: the device works on
   * nothing and takes nothing, and {@link saveState} may be called.
   * @example
   * ```ts
   * // @ts-setup: declare const dev: VirtioMmioDevice;
   * if (!dev.quiesced) await dev.quiesce();
   * ```
   */
  get quiesced(): boolean {
    return this.#quiesce === 'quiesced' && !this.#closed;
  }

  /**
   * Stops the device taking new chains from the rings, and resolves once every chain it took
   * before has been completed (virtio-blk's file I/O done, the frames net and vsock were sending
   * written) and the interrupts for them raised. Chains a model holds for later ({@link
   * VirtioQueue.hold}: receive and event buffers) are not waited for: {@link saveState} records
   * them. The device then takes no new work until {@link unquiesce} (or {@link close}).
   *
   * Call it while the vCPUs are paused (the guest could otherwise reset the device or make
   * buffers available meanwhile). Notifications that arrive while quiesced are not lost: every
   * ring is scanned again at {@link unquiesce}, and after a {@link restoreState}. A register
   * write that reset the device or set DRIVER_OK while quiesced takes effect at unquiesce (a
   * reset still drops what the activation was doing at once). Calling it again returns another
   * promise of the same; on a closed device it resolves at once.
   *
   * @returns a promise that resolves when the device is quiesced; it rejects with `Error`
   *   `ERR_KVM_RESUMED` when {@link unquiesce} or {@link restoreState} comes first
   * @example
   * ```ts
   * // @ts-setup: declare const linux: import('kvm-rx').LinuxVm; declare const disk: VirtioMmioDevice;
   * await linux.pause();
   * await disk.quiesce(); // the guest's requests in flight are written to the image
   * const saved = JSON.stringify(disk.saveState());
   * disk.unquiesce();
   * linux.resume();
   * ```
   */
  quiesce(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#settle();
    if (this.#quiesce === 'running') this.#quiesce = 'quiescing';
    const done = new Promise<void>((resolve, reject) => this.#quiesceWaiters.push({ resolve, reject }));
    this.#checkQuiesced();
    return done;
  }

  /**
   * Lets a quiesced (or quiescing) device work again: completions of held chains made meanwhile
   * reach the used ring, exited notifications and register changes are taken, and every ring is
   * scanned for chains made available meanwhile. Does nothing on a running device.
   * @example
   * ```ts
   * // @ts-setup: declare const dev: VirtioMmioDevice;
   * await dev.quiesce();
   * dev.unquiesce();
   * ```
   */
  unquiesce(): void {
    this.#settle();
    if (this.#quiesce === 'running') return;
    this.#quiesce = 'running';
    this.#rejectWaiters('unquiesced before the quiesce completed');
    if (this.#closed) return;
    const act = this.#active;
    if (act !== undefined && act.epoch === this.#state.epoch) {
      for (const [i, taken] of act.taken.entries())
        for (const t of [...taken.values()])
          if (t.deferred !== undefined) {
            const len = t.deferred;
            t.deferred = undefined;
            this.#complete(act, i, t.chain, len);
          }
      for (const fn of [...act.unquiesced]) {
        if (act.ended) break;
        try {
          fn();
        } catch (e) {
          this.#fail(act, e);
        }
      }
    }
    this.#sync();
    for (let i = 0; i < this.device.queueSizes.length; i++) this.#drain(i);
  }

  /**
   * The device's state as plain JSON-safe data ({@link VirtioMmioState}): the registers the driver
   * set, each queue's positions in its rings and the chains held, and the model's own state
   * ({@link VirtioDevice.saveState}). Guest memory is not in it (save it with the VM's).
   *
   * @throws `Error` `ERR_KVM_NOT_QUIESCED` unless {@link quiesce} has resolved (and no
   *   {@link unquiesce} followed); {@link KvmClosedError} after {@link close}
   * @example
   * ```ts
   * // @ts-setup: import { writeFileSync } from 'node:fs'; declare const dev: VirtioMmioDevice;
   * await dev.quiesce();
   * writeFileSync('rng.json', JSON.stringify(dev.saveState()));
   * ```
   */
  saveState(): VirtioMmioState {
    if (this.#closed) throw new KvmClosedError(`${this.device.name} at 0x${this.base.toString(16)}`);
    this.#settle();
    if (this.#quiesce !== 'quiesced')
      throw stateError(
        'ERR_KVM_NOT_QUIESCED',
        `${this.device.name} at 0x${this.base.toString(16)} is not quiesced: await quiesce() first`,
      );
    const regs = this.#state.registerFile();
    const act = this.#active !== undefined && this.#active.epoch === this.#state.epoch ? this.#active : undefined;
    const queues = regs.queues.map((r, i): VirtioMmioQueueState => {
      const q = act?.queues[i];
      const held =
        act === undefined || q === undefined
          ? []
          : [...act.taken[i].values()].map((t) => t.chain.head).concat(act.redeliver[i].map((c) => c.head));
      return {
        size: r.size,
        ready: r.ready,
        descTable: r.descTable.toString(),
        availRing: r.availRing.toString(),
        usedRing: r.usedRing.toString(),
        nextAvail: q?.nextAvail ?? 0,
        nextUsed: q?.nextUsed ?? 0,
        signalledUsed: q?.signalledUsed ?? null,
        held,
      };
    });
    const model = this.device.saveState?.();
    return {
      version: 1,
      deviceId: this.device.deviceId,
      name: this.device.name,
      status: regs.status,
      deviceFeaturesSel: regs.deviceFeaturesSel,
      driverFeaturesSel: regs.driverFeaturesSel,
      driverFeatures: regs.driverFeatures.toString(),
      queueSel: regs.queueSel,
      interruptStatus: regs.interruptStatus,
      configGeneration: regs.configGeneration,
      config: Array.from(regs.config),
      queues,
      ...(model !== undefined ? { model } : {}),
    };
  }

  /**
   * Puts a saved state ({@link saveState}, possibly through JSON, from another process) into this
   * device, built with the same kind of model and the same options, before the vCPUs run and
   * after the guest memory is back in place (and after the VM's irqchip state, as a pending
   * interrupt is raised again).
   *
   * Everything is checked first, and on a refusal nothing changes: the version, the device ID,
   * name, queue count and config size against this device, every value's type and range, the
   * status (one the handshake reaches), the acked features (a subset of those offered; with
   * VERSION_1 once FEATURES_OK), each queue's size (0, or a power of two up to its
   * `QueueNumMax`), each ready queue's rings (aligned, in guest RAM), the positions (u16; 0 for a
   * queue the device does not run) and the held chains (`(nextAvail - nextUsed) & 0xffff`
   * distinct heads below the size), then the model's state ({@link VirtioDevice.restoreState}).
   * Then the registers are set and, when the status has DRIVER_OK without DEVICE_NEEDS_RESET or
   * FAILED, the model is activated as at the driver's DRIVER_OK, without a new negotiation, with
   * its queues at the saved positions: the held chains are handed to it again, then every ring
   * is scanned (the guest may have made buffers available after the last notification taken). A
   * held chain or ring entry that guest memory no longer describes correctly puts the device
   * into DEVICE_NEEDS_RESET, as it would have at run time.
   *
   * A device that is quiesced may be restored too (what it was doing is dropped); it runs after.
   * With `options.activation` `'deferred'` the activation waits for the next microtask checkpoint
   * ({@link VirtioRestoreOptions}): what a VMM uses to start its vCPUs first.
   *
   * @throws `TypeError` (`ERR_INVALID_ARG_TYPE`, `ERR_INVALID_ARG_VALUE`) or `RangeError`
   *   (`ERR_OUT_OF_RANGE`) naming the field (`state.queues[0].size`, …) for a state this device
   *   cannot take; `Error` `ERR_KVM_IN_USE` when the driver has already set this device up and it
   *   is not quiesced; {@link KvmClosedError} after {@link close}; what the model's
   *   `restoreState` throws
   * @example
   * ```ts
   * // @ts-setup: import { readFileSync } from 'node:fs'; import { VirtioMmioDevice, virtioRng } from 'kvm-rx';
   * // @ts-setup: declare const vm: import('kvm-rx').VmFd; // the new VM, its memory restored
   * const rng = new VirtioMmioDevice(vm, virtioRng(), { base: 0xd000_0000n, gsi: 5 });
   * rng.restoreState(JSON.parse(readFileSync('rng.json', 'utf8')));
   * ```
   */
  restoreState(state: unknown, options: VirtioRestoreOptions = {}): void {
    if (this.#closed) throw new KvmClosedError(`${this.device.name} at 0x${this.base.toString(16)}`);
    checkObject('options', options);
    const activation = options.activation ?? 'now';
    if (activation !== 'now' && activation !== 'deferred')
      invalidValue('options.activation', "must be 'now' or 'deferred'", activation);
    this.#settle();
    if ((this.#active !== undefined || this.#state.status !== 0) && this.#quiesce !== 'quiesced')
      throw stateError(
        'ERR_KVM_IN_USE',
        `${this.device.name} at 0x${this.base.toString(16)} is in use by its driver: restore into a new device, or quiesce it first`,
      );
    const { file, positions, model } = this.#parseState(state);
    this.device.restoreState?.(model);
    this.#deactivate();
    this.#quiesce = 'running';
    this.#rejectWaiters('restored before the quiesce completed');
    this.#state.loadRegisterFile(file);
    this.#epoch = this.#state.epoch;
    if (this.#state.driverOk) {
      if (activation === 'now') this.#activate(this.#epoch, positions);
      else {
        this.#pendingRestore = { epoch: this.#epoch, positions };
        queueMicrotask(() => this.#settle());
      }
    }
    if (file.interruptStatus !== 0 && !this.#irq.closed) this.#irq.write(1n);
  }

  /**
   * Makes a deferred restore's activation now (before anything else the device does): the held
   * chains handed to the model again, every ring scanned. A reset the guest made meanwhile wins.
   */
  #settle(): void {
    const pending = this.#pendingRestore;
    if (pending === undefined) return;
    this.#pendingRestore = undefined;
    if (this.#closed || this.#epoch !== pending.epoch || this.#state.epoch !== pending.epoch) return;
    if ((this.#state.status & VirtioStatus.failed) !== 0) return;
    this.#activate(pending.epoch, pending.positions);
  }

  /** Checks a saved state against this device (see {@link restoreState}); throws naming the field. */
  #parseState(state: unknown): { file: VirtioMmioRegisterFile; positions: QueuePositions[]; model: unknown } {
    const s = checkObject<Record<string, unknown>>('state', state);
    const version = checkInt('state.version', s.version, 0, Number.MAX_SAFE_INTEGER);
    if (version !== 1) outOfRange('state.version', '1 (the only version this kvm-rx reads)', version);
    const deviceId = checkU16('state.deviceId', s.deviceId);
    if (deviceId !== this.device.deviceId)
      invalidValue(
        'state.deviceId',
        `must be this device's ID ${this.device.deviceId} (${this.device.name})`,
        deviceId,
      );
    const name = checkString('state.name', s.name);
    if (name !== this.device.name) invalidValue('state.name', `must be this device's name '${this.device.name}'`, name);
    const status = checkU8('state.status', s.status);
    const { driverOk, featuresOk, deviceNeedsReset, failed } = VirtioStatus;
    if (!STATUS_REACHED.has(status & ~(deviceNeedsReset | failed)))
      invalidValue(
        'state.status',
        'must be a status the handshake reaches (0, 1, 3, 11 or 15, with or without DEVICE_NEEDS_RESET and FAILED)',
        status,
      );
    const runs = (status & driverOk) !== 0 && (status & (deviceNeedsReset | failed)) === 0;
    const deviceFeaturesSel = checkU32('state.deviceFeaturesSel', s.deviceFeaturesSel);
    const driverFeaturesSel = checkU32('state.driverFeaturesSel', s.driverFeaturesSel);
    const driverFeatures = u64String('state.driverFeatures', s.driverFeatures);
    const offered = this.#state.deviceFeatures;
    if ((driverFeatures & ~offered) !== 0n)
      invalidValue(
        'state.driverFeatures',
        `acks feature bits this device does not offer (0x${(driverFeatures & ~offered).toString(16)})`,
        s.driverFeatures,
      );
    if ((status & featuresOk) !== 0 && (driverFeatures & VirtioFeature.version1) === 0n)
      invalidValue('state.driverFeatures', 'must include VIRTIO_F_VERSION_1 once FEATURES_OK is set', s.driverFeatures);
    const queueSel = checkU32('state.queueSel', s.queueSel);
    const interruptStatus = checkInt('state.interruptStatus', s.interruptStatus, 0, 3);
    const configGeneration = checkU32('state.configGeneration', s.configGeneration);
    if (!Array.isArray(s.config)) invalidType('state.config', 'an array of bytes', s.config);
    const configSize = this.#state.config.length;
    const bytes: unknown[] = s.config;
    if (bytes.length !== configSize)
      invalidValue('state.config', `must hold this device's ${configSize} config bytes`, `${bytes.length} bytes`);
    const config = Uint8Array.from(bytes, (b, i) => checkU8(`state.config[${i}]`, b));
    if (!Array.isArray(s.queues)) invalidType('state.queues', 'an array', s.queues);
    const list: unknown[] = s.queues;
    const numQueues = this.#state.numQueues;
    if (list.length !== numQueues)
      invalidValue('state.queues', `must hold this device's ${numQueues} queues`, `${list.length} queues`);
    const eventIdx = (driverFeatures & VirtioFeature.ringEventIdx) !== 0n;
    const queues: VirtioQueueRegisters[] = [];
    const positions: QueuePositions[] = [];
    for (const [i, item] of list.entries()) {
      const at = `state.queues[${i}]`;
      const q = checkObject<Record<string, unknown>>(at, item);
      const max = this.#state.queueMaxSize(i);
      const size = checkU32(`${at}.size`, q.size);
      if (size !== 0 && ((size & (size - 1)) !== 0 || size > max))
        outOfRange(`${at}.size`, `0 or a power of two <= QueueNumMax ${max}`, size);
      const ready = checkBool(`${at}.ready`, q.ready);
      const regs: VirtioQueueRegisters = {
        size,
        ready,
        descTable: u64String(`${at}.descTable`, q.descTable),
        availRing: u64String(`${at}.availRing`, q.availRing),
        usedRing: u64String(`${at}.usedRing`, q.usedRing),
      };
      if (ready) {
        if (size === 0) outOfRange(`${at}.size`, `a power of two <= QueueNumMax ${max} for a ready queue`, size);
        try {
          SplitQueue.checkLayout(this.#memory, { ...regs, eventIdx });
        } catch (e) {
          const why = e instanceof Error ? e.message : String(e);
          const part = /descriptor table/.test(why)
            ? 'descTable'
            : /available ring/.test(why)
              ? 'availRing'
              : 'usedRing';
          throw new KvmRangeError('ERR_OUT_OF_RANGE', `${at}.${part}: ${why}`);
        }
      }
      const nextAvail = checkU16(`${at}.nextAvail`, q.nextAvail);
      const nextUsed = checkU16(`${at}.nextUsed`, q.nextUsed);
      const signalledUsed = q.signalledUsed === null ? null : checkU16(`${at}.signalledUsed`, q.signalledUsed);
      if (!Array.isArray(q.held)) invalidType(`${at}.held`, 'an array of heads', q.held);
      const heldList: unknown[] = q.held;
      const held = heldList.map((h, j) => checkInt(`${at}.held[${j}]`, h, 0, Math.max(size, 1) - 1));
      if (new Set(held).size !== held.length) invalidValue(`${at}.held`, 'must not name a head twice', held.join(','));
      if (!(runs && ready) && (nextAvail !== 0 || nextUsed !== 0 || signalledUsed !== null))
        invalidValue(
          `${at}.nextAvail`,
          'and nextUsed must be 0, and signalledUsed null, for a queue the device does not run (not ready, or no DRIVER_OK)',
          `${nextAvail}/${nextUsed}/${String(signalledUsed)}`,
        );
      if (held.length !== ((nextAvail - nextUsed) & 0xffff))
        invalidValue(
          `${at}.held`,
          `must name the (nextAvail - nextUsed) & 0xffff = ${(nextAvail - nextUsed) & 0xffff} chains the device held`,
          `${held.length} heads`,
        );
      queues.push(regs);
      positions.push({ nextAvail, nextUsed, signalledUsed, held });
    }
    const file: VirtioMmioRegisterFile = {
      status,
      deviceFeaturesSel,
      driverFeaturesSel,
      driverFeatures,
      queueSel,
      interruptStatus,
      configGeneration,
      config,
      queues,
    };
    return { file, positions, model: s.model };
  }

  /**
   * Adds to `bitmap` the guest pages this device wrote (or may have written) since the last call,
   * and forgets them: the used rings of its queues, the writable buffers of the chains it gave
   * back, and those of the chains its model still has. The host's writes into guest memory are not
   * in KVM's dirty log, so a diff snapshot adds these to it. The bitmap has KVM's dirty-log layout:
   * bit `n % 64` of word `n / 64` is the 4 KiB page at guest-physical `n * 4096`; pages past its
   * end are left out.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const dev: VirtioMmioDevice;
   * const dirty = vm.getDirtyLog(0, 0x800_0000); // what the guest wrote
   * dev.takeWrittenPages(dirty); // and what the device wrote for it
   * ```
   * @throws `TypeError` `ERR_INVALID_ARG_TYPE` when `bitmap` is not a `BigUint64Array`
   */
  takeWrittenPages(bitmap: BigUint64Array): void {
    if (!(bitmap instanceof BigUint64Array)) invalidType('bitmap', 'a BigUint64Array', bitmap);
    this.#settle();
    const act = this.#active;
    if (act !== undefined) this.#markActivation(act);
    const pages = bitmap.length * 64;
    for (const n of this.#written) if (n < pages) bitmap[n >>> 6] |= 1n << BigInt(n & 63);
    this.#written.clear();
  }

  /** Marks `[addr, addr + len)` as written. */
  #mark(addr: bigint, len: number): void {
    if (len <= 0) return;
    const last = Number((addr + BigInt(len) - 1n) >> 12n);
    for (let n = Number(addr >> 12n); n <= last; n++) this.#written.add(n);
  }

  #markChain(chain: DescriptorChain): void {
    for (const d of chain.writable) this.#mark(d.addr, d.len);
  }

  /** Marks what an activation may write: its used rings and the chains its model has. */
  #markActivation(act: Activation): void {
    for (const q of act.queues) if (q !== undefined) this.#mark(q.config.usedRing, splitQueueSizes(q.size).usedRing);
    for (const taken of act.taken) for (const t of taken.values()) this.#markChain(t.chain);
  }

  /** Stops the device, unregisters its ioeventfds and irqfd, closes its eventfds. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#pendingRestore = undefined;
    this.#deactivate();
    this.#teardown();
    this.#releaseFromVm();
    for (const w of this.#quiesceWaiters.splice(0)) w.resolve(); // nothing runs any more
    this.#state.ring(); // ends #watch
  }

  #teardown(): void {
    for (const s of this.#notifies.splice(0)) s.unsubscribe();
    if (!this.#vm.closed) {
      try {
        this.#vm.unregisterIrqfd(this.#irq, this.gsi);
      } catch {
        // not registered (the constructor failed before) or the VM is going away
      }
    }
    this.#irq.close();
  }

  #rejectWaiters(why: string): void {
    for (const w of this.#quiesceWaiters.splice(0)) w.reject(stateError('ERR_KVM_RESUMED', why));
  }

  /** Resolves the quiesce once nothing the device took is being worked on and interrupts are out. */
  #checkQuiesced(): void {
    if (this.#quiesce === 'running') return;
    const act = this.#active;
    if (act !== undefined && !act.ended && (act.busy > 0 || act.flushScheduled)) return;
    this.#quiesce = 'quiesced';
    for (const w of this.#quiesceWaiters.splice(0)) w.resolve();
  }

  /** Follows the register file: activation at DRIVER_OK, reset, notifications that exited. */
  async #watch(): Promise<void> {
    while (!this.#closed) {
      const seen = this.#state.doorbell;
      this.#sync();
      await this.#state.waitForDoorbell(seen);
    }
  }

  #sync(): void {
    if (this.#closed) return;
    this.#settle();
    const epoch = this.#state.epoch;
    if (epoch !== this.#epoch || (this.#state.status & VirtioStatus.failed) !== 0) {
      // A reset or FAILED ends the activation at once, quiesced or not; a new activation waits
      // for unquiesce (it would take chains).
      this.#deactivate();
      if (this.#quiesce !== 'running') return;
      this.#epoch = epoch;
      if (this.#state.driverOk) this.#activate(epoch);
    }
    if (this.#quiesce !== 'running') return; // taken at unquiesce
    const pending = this.#state.takePendingNotify();
    for (let i = 0; i < this.device.queueSizes.length; i++) if ((pending & (1 << i)) !== 0) this.#drain(i);
  }

  #activate(epoch: number, restored?: readonly QueuePositions[]): void {
    const features = this.#state.driverFeatures;
    const eventIdx = (features & VirtioFeature.ringEventIdx) !== 0n;
    const n = this.device.queueSizes.length;
    const act: Activation = {
      epoch,
      queues: [],
      subjects: [],
      taken: Array.from({ length: n }, () => new Map<number, Taken>()),
      redeliver: Array.from({ length: n }, (): DescriptorChain[] => []),
      dirty: new Set(),
      abort: new AbortController(),
      unquiesced: new Set(),
      busy: 0,
      flushScheduled: false,
      ended: false,
    };
    this.#active = act;
    try {
      for (let i = 0; i < n; i++) {
        const r = this.#state.queue(i);
        act.subjects.push(new Subject<DescriptorChain>());
        if (!r.ready) {
          act.queues.push(undefined);
          continue;
        }
        if (r.size > this.#state.queueMaxSize(i))
          throw new VirtqueueError(
            'ERR_VIRTIO_QUEUE_CONFIG',
            'queue-size',
            `queue ${i}: QueueNum ${r.size} is larger than QueueNumMax ${this.#state.queueMaxSize(i)}`,
            r.size,
          );
        const q = new SplitQueue(this.#memory, { ...r, eventIdx });
        act.queues.push(q);
        const at = restored?.[i];
        if (at !== undefined) {
          q.nextAvail = at.nextAvail;
          q.nextUsed = at.nextUsed;
          q.signalledUsed = at.signalledUsed ?? undefined;
          // The chains the saved device held: read again from the descriptor table, which the
          // driver does not touch while the device owns them.
          for (const head of at.held) act.redeliver[i].push(q.retake(head));
        }
      }
    } catch (e) {
      this.#fail(act, e);
      return;
    }
    const queues: VirtioQueue[] = act.subjects.map((subject, index) => ({
      index,
      // Chains are taken from the ring only while someone is subscribed (a model may subscribe
      // late, e.g. after opening its backend): a subscription takes what is waiting.
      chains$: new Observable<DescriptorChain>((subscriber) => {
        const s = subject.subscribe(subscriber);
        queueMicrotask(() => this.#drain(index));
        return s;
      }),
      complete: (chain, len) => this.#complete(act, index, chain, len),
      hold: (chain) => {
        if (act.ended) return;
        const t = act.taken[index].get(chain.head);
        if (t === undefined || t.chain !== chain || t.held) return;
        t.held = true;
        act.busy--;
        this.#checkQuiesced();
      },
    }));
    const isQuiesced = (): boolean => this.#quiesce !== 'running';
    const ctx: VirtioDeviceContext = {
      features,
      queues,
      memory: this.#memory,
      needsReset: (reason) => this.#fail(act, new Error(reason)),
      updateConfig: (offset, data) => {
        if (act.ended) return;
        this.#state.writeConfig(offset, data);
        this.#state.setInterrupt(VirtioInterrupt.configChange);
        this.#irq.write(1n);
      },
      signal: act.abort.signal,
      isQuiesced,
      onUnquiesce: (fn) => {
        if (typeof fn !== 'function') invalidType('fn', 'a function', fn);
        act.unquiesced.add(fn);
        return () => void act.unquiesced.delete(fn);
      },
    };
    try {
      act.subscription = this.device.activate(ctx).subscribe({ error: (e: unknown) => this.#fail(act, e) });
    } catch (e) {
      this.#fail(act, e);
      return;
    }
    // A notification may have come before DRIVER_OK was seen here: look at every queue once.
    for (let i = 0; i < act.queues.length; i++) this.#drain(i);
  }

  #deactivate(): void {
    const act = this.#active;
    if (act === undefined) return;
    this.#active = undefined;
    this.#markActivation(act);
    act.ended = true;
    act.abort.abort();
    act.subscription?.unsubscribe();
    for (const s of act.subjects) s.complete();
    this.#checkQuiesced();
  }

  /** Takes every chain the guest made available on queue `i` (the EVENT_IDX drain loop). */
  #drain(i: number): void {
    if (this.#quiesce !== 'running') return; // the ring is scanned again at unquiesce
    const act = this.#active;
    if (act === undefined || act.ended || act.epoch !== this.#state.epoch) return;
    const q = act.queues[i];
    if (q === undefined) return;
    const subject = act.subjects[i];
    if (!subject.observed) return; // left on the ring until the model subscribes
    const taken = act.taken[i];
    /** Hands `chain` to the model; false when the drain must stop (the activation ended, a quiesce began). */
    const give = (chain: DescriptorChain): boolean => {
      taken.set(chain.head, { chain, held: false });
      act.busy++;
      subject.next(chain);
      return !act.ended && this.#quiesce === 'running';
    };
    try {
      const again = act.redeliver[i];
      while (again.length > 0) if (!give(again.shift()!)) return;
      let count = 0;
      for (;;) {
        q.disableNotification();
        for (let chain = q.pop(); chain !== undefined; chain = q.pop()) {
          if (!give(chain)) return;
          if (++count >= DRAIN_BATCH) {
            // A guest that keeps the ring full does not hold the event loop: go on in a macrotask.
            setImmediate(() => this.#drain(i));
            return;
          }
        }
        if (!q.enableNotification()) break;
      }
    } catch (e) {
      this.#fail(act, e);
    }
  }

  #complete(act: Activation, i: number, chain: DescriptorChain, len: number): void {
    if (act.ended || act.epoch !== this.#state.epoch) return;
    const q = act.queues[i];
    if (q === undefined) return;
    const taken = act.taken[i];
    const t = taken.get(chain.head);
    const mine = t !== undefined && t.chain === chain ? t : undefined;
    if (mine?.deferred !== undefined) {
      this.#fail(
        act,
        new VirtqueueError(
          'ERR_VIRTIO_USED',
          'used-head',
          `complete: the chain at head ${chain.head} was given back twice`,
          chain.head,
        ),
      );
      return;
    }
    if (mine?.held === true && this.#quiesce !== 'running') {
      // The used ring stays as a saved state records it: this completion waits for unquiesce.
      if (!Number.isInteger(len) || len < 0 || len > chain.writableLength) {
        this.#fail(
          act,
          new VirtqueueError(
            'ERR_VIRTIO_USED',
            'used-length',
            `complete: ${String(len)} bytes written into the chain at head ${chain.head}, which has ${chain.writableLength} writable bytes`,
            chain.head,
          ),
        );
        return;
      }
      mine.deferred = len;
      return;
    }
    try {
      q.addUsed(chain.head, len);
    } catch (e) {
      this.#fail(act, e);
      return;
    }
    this.#markChain(chain);
    if (mine !== undefined) {
      taken.delete(chain.head);
      if (!mine.held) act.busy--;
    }
    act.dirty.add(i);
    if (!act.flushScheduled) {
      act.flushScheduled = true;
      queueMicrotask(() => this.#flush(act));
    }
  }

  /** Raises one interrupt for the chains completed in this tick, unless the driver suppressed it. */
  #flush(act: Activation): void {
    act.flushScheduled = false;
    if (act.ended) return;
    let raise = false;
    for (const i of act.dirty) if (act.queues[i]?.needsNotification()) raise = true;
    act.dirty.clear();
    if (raise) {
      this.#state.setInterrupt(VirtioInterrupt.usedBuffer);
      this.#irq.write(1n);
    }
    this.#checkQuiesced();
  }

  #failNow(reason: string): void {
    if (this.#active !== undefined) this.#fail(this.#active, new Error(reason));
    else this.#log(`${this.device.name} at 0x${this.base.toString(16)}: ${reason}`);
  }

  #fail(act: Activation, e: unknown): void {
    if (act.ended) return;
    this.#failures++;
    const why = e instanceof Error ? e.message : String(e);
    this.#log(`${this.device.name} at 0x${this.base.toString(16)}: ${why}; the device needs a reset`);
    this.#deactivate();
    this.#state.setNeedsReset();
    if (!this.#irq.closed) this.#irq.write(1n);
  }
}
