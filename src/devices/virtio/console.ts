/**
 * virtio-console (ID 3; virtio 1.2 §5.3): one port, no multiport, no emergency write.
 *
 * @module
 */
import { Observable, map, merge, type Subscription } from 'rxjs';
import { checkObject, invalidType } from '../../abi/validate';
import { KvmRangeError } from '../../abi/errors';
import type { DescriptorChain } from './split-queue';
import type { VirtioDevice } from './mmio-device';

/** Options of {@link virtioConsole}. */
export interface VirtioConsoleOptions {
  /** Receives what the guest writes (`hvc0` with `console=hvc0`), one chunk per buffer. */
  output?: (bytes: Uint8Array) => void;
  /** What the guest reads: bytes typed into the console. */
  input?: Observable<Uint8Array>;
  /** Input kept while the guest has no buffer posted; older bytes are dropped past it (default 64 KiB). */
  maxPendingInput?: number;
  /** The most bytes taken from one transmit buffer (default 64 KiB; the rest is dropped). */
  maxChunk?: number;
  /** `QueueNumMax` of both queues (default 256). */
  queueSize?: number;
}

/**
 * A console device with one port: queue 0 (receiveq) takes `input`, queue 1 (transmitq) goes to
 * `output`. It offers no feature bits (no SIZE, MULTIPORT or EMERG_WRITE). Linux's hvc driver
 * waits, spinning, until each transmit buffer comes back, so transmit buffers are returned at
 * once, in the notification that brought them.
 *
 * Snapshots: the model saves the input not yet delivered (`{ pendingInput }`, base64); the posted
 * receive buffers are held, and while quiesced no input is delivered into them.
 *
 * @example
 * ```ts
 * // @ts-setup: import { VirtioMmioDevice, virtioConsole } from 'kvm-rx'; declare const vm: import('kvm-rx').VmFd;
 * const hvc = new VirtioMmioDevice(vm, virtioConsole({ output: (b) => process.stdout.write(b) }), { base: 0xd000_1000n, gsi: 6 });
 * ```
 * @throws `TypeError`/`RangeError` with an `ERR_*` code for bad options
 */
export function virtioConsole(options: VirtioConsoleOptions = {}): VirtioDevice {
  checkObject('options', options);
  const { output, input } = options;
  if (output !== undefined && typeof output !== 'function') invalidType('options.output', 'a function', output);
  if (input !== undefined && !(input instanceof Observable)) invalidType('options.input', 'an Observable', input);
  const limit = (name: string, v: number | undefined, dflt: number): number => {
    const n = v ?? dflt;
    if (!Number.isInteger(n) || n < 1 || n > 1 << 24)
      throw new KvmRangeError(
        'ERR_OUT_OF_RANGE',
        `options.${name} must be an integer in 1..16777216; got ${String(n)}`,
      );
    return n;
  };
  const maxPending = limit('maxPendingInput', options.maxPendingInput, 64 << 10);
  const maxChunk = limit('maxChunk', options.maxChunk, 64 << 10);
  const queueSize = options.queueSize ?? 256;
  // Input waiting for the guest's buffers: the model's saved state. It outlives an activation only
  // through saveState/restoreState (a reset drops it).
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  /** Restored input, for the activation that follows the restore. */
  let restored: Uint8Array | undefined;
  return {
    name: 'virtio-console',
    deviceId: 3,
    features: 0n,
    queueSizes: [queueSize, queueSize],
    saveState: () => ({ pendingInput: Buffer.from(restored ?? Buffer.concat(pending)).toString('base64') }),
    restoreState: (state: unknown) => {
      const s = checkObject<{ pendingInput?: unknown }>('state.model', state);
      if (typeof s.pendingInput !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(s.pendingInput))
        invalidType('state.model.pendingInput', 'a base64 string', s.pendingInput);
      const bytes = new Uint8Array(Buffer.from(s.pendingInput, 'base64'));
      restored = bytes.length > maxPending ? bytes.subarray(bytes.length - maxPending) : bytes;
    },
    activate: ({ queues: [rx, tx], isQuiesced, onUnquiesce }) =>
      new Observable<void>((subscriber) => {
        // Receive: guest buffers waiting for input, input waiting for buffers.
        const buffers: DescriptorChain[] = [];
        if (restored !== undefined) {
          pending = restored.length > 0 ? [restored] : [];
          pendingBytes = restored.length;
          restored = undefined;
        }
        const deliver = (): void => {
          if (isQuiesced?.() === true) return; // the input stays pending: it is what a snapshot saves
          while (buffers.length > 0 && pendingBytes > 0) {
            const chain = buffers.shift()!;
            let n = 0;
            while (n < chain.writableLength && pending.length > 0) {
              const head = pending[0];
              const take = Math.min(head.length, chain.writableLength - n);
              chain.write(n, head.subarray(0, take));
              n += take;
              pendingBytes -= take;
              if (take === head.length) pending.shift();
              else pending[0] = head.subarray(take);
            }
            rx.complete(chain, n);
          }
        };
        const subs: Subscription[] = [];
        subs.push(
          merge(
            rx.chains$.pipe(
              map((chain) => {
                buffers.push(chain);
                rx.hold?.(chain); // waits for input: not work a quiesce waits for
                deliver();
              }),
            ),
            tx.chains$.pipe(
              map((chain) => {
                const bytes = chain.read(0, Math.min(chain.readableLength, maxChunk));
                tx.complete(chain, 0);
                if (bytes.length > 0) output?.(bytes);
              }),
            ),
          ).subscribe({ error: (e: unknown) => subscriber.error(e) }),
        );
        if (input !== undefined) {
          subs.push(
            input.subscribe((bytes) => {
              if (!(bytes instanceof Uint8Array) || bytes.length === 0) return;
              pending.push(bytes.slice());
              pendingBytes += bytes.length;
              while (pendingBytes > maxPending && pending.length > 0) {
                const drop = pending.shift()!;
                pendingBytes -= drop.length;
              }
              deliver();
            }),
          );
        }
        const stopResume = onUnquiesce?.(deliver);
        return () => {
          stopResume?.();
          for (const s of subs) s.unsubscribe();
          pending = [];
          pendingBytes = 0;
        };
      }),
  };
}
