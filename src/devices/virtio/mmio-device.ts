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
import { checkObject, invalidType, invalidValue } from '../../abi/validate';
import { KvmRangeError } from '../../abi/errors';
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
  type VirtioMmioShared,
} from './mmio-transport';
import { DescriptorChain, SplitQueue } from './split-queue';

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

interface Activation {
  readonly epoch: number;
  readonly queues: Array<SplitQueue | undefined>;
  readonly subjects: Array<Subject<DescriptorChain>>;
  readonly dirty: Set<number>;
  readonly abort: AbortController;
  subscription?: Subscription;
  flushScheduled: boolean;
  ended: boolean;
}

/**
 * A {@link VirtioDevice} on a virtio-mmio transport of `vm`, at `options.base` with its interrupt
 * on `options.gsi`. Give {@link shared} to the vCPU pipelines ({@link virtioMmio}) and
 * {@link cmdline} to the guest kernel. Closing the VM closes it.
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
  #epoch = 0;
  #closed = false;
  #failures = 0;

  constructor(vm: VmFd, device: VirtioDevice, options: VirtioMmioDeviceOptions) {
    if (!(vm instanceof VmFd)) invalidType('vm', 'a VmFd', vm);
    checkObject('device', device);
    if (typeof device.activate !== 'function') invalidType('device.activate', 'a function', typeof device.activate);
    if (typeof device.name !== 'string') invalidType('device.name', 'a string', device.name);
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

  /** Stops the device, unregisters its ioeventfds and irqfd, closes its eventfds. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#deactivate();
    this.#teardown();
    this.#releaseFromVm();
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
    const epoch = this.#state.epoch;
    if (epoch !== this.#epoch || (this.#state.status & VirtioStatus.failed) !== 0) {
      this.#epoch = epoch;
      this.#deactivate();
      if (this.#state.driverOk) this.#activate(epoch);
    }
    const pending = this.#state.takePendingNotify();
    for (let i = 0; i < this.device.queueSizes.length; i++) if ((pending & (1 << i)) !== 0) this.#drain(i);
  }

  #activate(epoch: number): void {
    const features = this.#state.driverFeatures;
    const eventIdx = (features & VirtioFeature.ringEventIdx) !== 0n;
    const act: Activation = {
      epoch,
      queues: [],
      subjects: [],
      dirty: new Set(),
      abort: new AbortController(),
      flushScheduled: false,
      ended: false,
    };
    this.#active = act;
    try {
      for (let i = 0; i < this.device.queueSizes.length; i++) {
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
        act.queues.push(new SplitQueue(this.#memory, { ...r, eventIdx }));
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
    }));
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
    act.ended = true;
    act.abort.abort();
    act.subscription?.unsubscribe();
    for (const s of act.subjects) s.complete();
  }

  /** Takes every chain the guest made available on queue `i` (the EVENT_IDX drain loop). */
  #drain(i: number): void {
    const act = this.#active;
    if (act === undefined || act.ended || act.epoch !== this.#state.epoch) return;
    const q = act.queues[i];
    if (q === undefined) return;
    const subject = act.subjects[i];
    if (!subject.observed) return; // left on the ring until the model subscribes
    try {
      let taken = 0;
      for (;;) {
        q.disableNotification();
        for (let chain = q.pop(); chain !== undefined; chain = q.pop()) {
          subject.next(chain);
          if (act.ended) return;
          if (++taken >= DRAIN_BATCH) {
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
    try {
      q.addUsed(chain.head, len);
    } catch (e) {
      this.#fail(act, e);
      return;
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
    if (!raise) return;
    this.#state.setInterrupt(VirtioInterrupt.usedBuffer);
    this.#irq.write(1n);
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
