/**
 * Mock eventfd semantics (counter, EFD_SEMAPHORE, EFD_NONBLOCK).
 *
 * @module
 */
import { KvmError, errnoOf } from '../../abi/errors';
import { sys } from '../../abi/kvm-constants';
import type { MockFile } from './state';

type EventFdFile = Extract<MockFile, { kind: 'eventfd' }>;

const MAX = 0xffff_ffff_ffff_fffen;

/** read(2) on an eventfd: 8 bytes, the counter (or 1 in semaphore mode). */
export function eventfdRead(f: EventFdFile, buffer: Uint8Array): number {
  if (buffer.length < 8) throw new KvmError(errnoOf('EINVAL'), 'read');
  if (f.counter === 0n) {
    // A blocking read would hang a synchronous mock forever; report it like a non-blocking fd.
    throw new KvmError(errnoOf('EAGAIN'), 'read');
  }
  const value = f.flags & sys.EFD_SEMAPHORE ? 1n : f.counter;
  f.counter -= value;
  new DataView(buffer.buffer, buffer.byteOffset, 8).setBigUint64(0, value, true);
  return 8;
}

/** write(2) on an eventfd: adds an 8-byte value to the counter. */
export function eventfdWrite(f: EventFdFile, buffer: Uint8Array): number {
  if (buffer.length < 8) throw new KvmError(errnoOf('EINVAL'), 'write');
  const value = new DataView(buffer.buffer, buffer.byteOffset, 8).getBigUint64(0, true);
  if (value === 0xffff_ffff_ffff_ffffn) throw new KvmError(errnoOf('EINVAL'), 'write');
  if (f.counter + value > MAX) throw new KvmError(errnoOf('EAGAIN'), 'write');
  f.counter += value;
  if (value > 0n) for (const w of [...f.watchers]) queueMicrotask(w);
  return 8;
}

/** Signals an eventfd from inside the mock kernel (irqfd resample, ioeventfd). */
export function eventfdSignal(f: EventFdFile, value = 1n): void {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, value, true);
  eventfdWrite(f, b);
}
