/**
 * `GuestMemfd`: the fd `VmFd#createGuestMemfd` returns (`KVM_CREATE_GUEST_MEMFD`).
 *
 * @module
 */
import type { IoctlBackend } from '../backend/types';
import { FdOwner } from './fd';

/**
 * A guest_memfd: guest-private memory that userspace cannot map (unless created with
 * `GUEST_MEMFD_FLAG_MMAP`). kvm-ioctls returns a bare `RawFd`; here the fd is owned, and closed
 * by its VM. Pass it to `VmFd#setUserMemoryRegion2`.
 *
 * @example
 * ```ts
 * const gmem = vm.createGuestMemfd({ size: 0x10000n });
 * vm.setUserMemoryRegion2({ slot: 1, flags: KVM_MEM_GUEST_MEMFD, guestPhysAddr: 0x100000n, memory: mem, guestMemfd: gmem });
 * ```
 */
export class GuestMemfd extends FdOwner {
  protected readonly label = 'GuestMemfd';
  /** Its size in bytes. */
  readonly size: bigint;
  /** The flags it was created with. */
  readonly flags: bigint;

  /** @internal Use `VmFd#createGuestMemfd()`. */
  constructor(backend: IoctlBackend, fd: number, size: bigint, flags: bigint) {
    super(backend, fd);
    this.size = size;
    this.flags = flags;
  }
}
