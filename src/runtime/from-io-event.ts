/**
 * `fromIoEvent`: guest writes that never leave the kernel (an ioeventfd), as an Observable.
 *
 * @module
 */
import { Observable } from 'rxjs';
import { checkObject, invalidType } from '../abi/validate';
import { EventFd } from '../wrappers/event-fd';
import { IoEventAddress, NoDatamatch, type IoEventDatamatch } from '../wrappers/io-event';
import { VmFd } from '../wrappers/vm-fd';

/**
 * Guest writes to one port or MMIO address, taken by the kernel without a vCPU exit: on subscribe
 * it registers an ioeventfd for `addr` (and `datamatch`) on `vm`. From then on such writes do not
 * exit to userspace at all (no worker, no pipeline, no thread handoff): KVM counts them in an
 * eventfd and resumes the guest at once. Each time that count is non-zero the Observable emits it
 * (a bigint >= 1n: writes close together are counted together) and it starts again from 0. The
 * event loop waits on the eventfd with libuv's poll, without blocking any thread.
 *
 * For doorbells and notifications (a virtio queue notify, "work is ready"), whose value either
 * does not matter or is fixed by `datamatch`. A write whose value you need must exit
 * (`onIoOut`/`onMmioWrite`). Unsubscribing unregisters the ioeventfd and closes the eventfd;
 * closing the VM completes the Observable.
 *
 * @example
 * ```ts
 * // @ts-setup: declare const queue: { kick(count: bigint): void };
 * fromIoEvent(vm, IoEventAddress.pio(0xf4)).subscribe((n) => queue.kick(n)); // out 0xf4 never exits
 * fromIoEvent(vm, IoEventAddress.mmio(0xd000_0050n), { value: 1, length: 4 }).subscribe((n) => queue.kick(n));
 * ```
 * @throws `TypeError` `ERR_INVALID_ARG_TYPE` for a `vm` that is not a VmFd, an `addr` that is not an
 *   IoEventAddress or a `datamatch` that is not an object. Errors on subscribe (the Observable
 *   errors, nothing stays registered): {@link KvmError} EEXIST when an overlapping ioeventfd is
 *   registered, `RangeError` for a datamatch value that does not fit its length, `ERR_KVM_CLOSED`
 *   for a closed VM
 */
export function fromIoEvent(
  vm: VmFd,
  addr: IoEventAddress,
  datamatch: IoEventDatamatch = NoDatamatch,
): Observable<bigint> {
  if (!(vm instanceof VmFd)) invalidType('vm', 'a VmFd', vm);
  if (!(addr instanceof IoEventAddress)) invalidType('addr', 'an IoEventAddress', addr);
  checkObject('datamatch', datamatch);
  return new Observable<bigint>((subscriber) => {
    const evt = new EventFd({ backend: vm.backend });
    try {
      vm.registerIoevent(evt, addr, datamatch);
    } catch (e) {
      evt.close();
      subscriber.error(e);
      return undefined;
    }
    const ac = new AbortController();
    let ended = false;
    let releaseFromVm: () => void = () => undefined;
    const end = (unregister: boolean): void => {
      if (ended) return;
      ended = true;
      ac.abort();
      releaseFromVm();
      // A closing VM drops its ioeventfds itself (and refuses ioctls by then).
      if (unregister && !vm.closed) vm.unregisterIoevent(evt, addr, datamatch);
      evt.close();
    };
    releaseFromVm = vm.adopt({
      close: () => {
        end(false);
        subscriber.complete();
      },
    });
    const wait = (): void => {
      evt.readAsync(ac.signal).then(
        (count) => {
          if (ended) return;
          subscriber.next(count);
          wait();
        },
        (e: unknown) => {
          if (ended) return;
          end(true);
          subscriber.error(e);
        },
      );
    };
    wait();
    return () => end(true);
  });
}
