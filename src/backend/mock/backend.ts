/**
 * `MockBackend`: an in-memory model of Linux KVM behind the {@link IoctlBackend} interface.
 *
 * It is synchronous and instance-scoped (two mocks never share state), so it works under rxjs's
 * `TestScheduler`. It models enough of the kernel for everything above the backend: VMs, memory
 * slots with the kernel's errors, vCPUs with register state, a scripted sequence of exits for
 * `KVM_RUN`, and a record of the answers written into `kvm_run`. `spec/contract/` runs the same
 * suite against this mock and the real kernel so the two cannot drift.
 *
 * @module
 */
import { KvmError, errnoOf } from '../../abi/errors';
import { kvm, sys } from '../../abi/kvm-constants';
import type { IoctlArg, IoctlBackend, MmapFlags } from '../types';
import { offsetOf } from '../../abi/codec';
import { kvm_run } from '../../abi/layouts';
import { ARM64_CAPS, ARM64_TABLES } from './arm64';
import { HOST_CAPS } from './caps';
import { deviceIoctls } from './device';
import { eventfdRead, eventfdWrite } from './eventfd';
import { fail, requestName } from './state';
export { requestName } from './state';
import type {
  MockContext,
  MockFile,
  MockIoctl,
  MockKernelConfig,
  MockMapping,
  MockVcpu,
  MockVm,
  ScriptedExit,
} from './state';
import { systemIoctls } from './system';
import { vcpuIoctls } from './vcpu';
import { coalescedRing, vmIoctls } from './vm';

const DEFAULTS: Required<MockKernelConfig> = {
  apiVersion: 12,
  vcpuMmapSize: 3 * 4096,
  nrVcpus: 2,
  maxVcpus: 1024,
  maxVcpuId: 4096,
  nrMemslots: 32764,
  addressSpaces: 2,
  caps: {},
  pageSize: 4096,
  arch: 'x86_64',
  fpuMxcsr: 'as-set',
};

/**
 * A scriptable stand-in for a vCPU: queue exits before or after the vCPU exists, read what the
 * code under test answered.
 */
export class MockVcpuHandle {
  readonly #backend: MockBackend;
  readonly id: number;
  readonly #queued: ScriptedExit[] = [];

  /** @internal */
  constructor(backend: MockBackend, id: number) {
    this.#backend = backend;
    this.id = id;
  }

  /** The live vCPU state (of the newest VM with this vCPU id), if it exists yet. */
  get state(): MockVcpu | undefined {
    const vms = this.#backend.vms;
    for (let i = vms.length - 1; i >= 0; i--) {
      const v = vms[i].vcpus.get(this.id);
      if (v) return v;
    }
    return undefined;
  }

  /** Appends exits that `KVM_RUN` will return, in order. Returns `this`. */
  script(exits: ScriptedExit[]): this {
    const v = this.state;
    if (v) v.script.push(...exits);
    else this.#queued.push(...exits);
    return this;
  }

  /** @internal Moves queued exits to a vCPU that was just created. */
  take(): ScriptedExit[] {
    return this.#queued.splice(0);
  }

  /** The exits answered so far, with the answers (IoIn/MmioRead bytes, hypercall ret, MSR data). */
  get answers(): ReadonlyArray<{ exit: string; answer: unknown }> {
    return this.state?.answers ?? [];
  }

  /** How many times KVM_RUN was called on this vCPU. */
  get runs(): number {
    return this.state?.runs ?? 0;
  }

  /** Exits still waiting in the script. */
  get remaining(): number {
    return this.state?.script.length ?? this.#queued.length;
  }
}

/**
 * The mock backend. Pass it to any wrapper: `new Kvm({ backend })`.
 *
 * @example
 * ```ts
 * import { MockBackend, ioOut, ioIn, hlt } from 'kvm-rx/testing';
 * const backend = new MockBackend();
 * backend.vcpu(0).script([ioOut(0x3f8, 'H'), ioIn(0x3f8, 1), hlt()]);
 * const kvm = new Kvm({ backend });
 * ```
 */
export class MockBackend implements IoctlBackend {
  readonly kind = 'mock' as const;
  readonly pageSize: number;
  readonly config: Required<MockKernelConfig>;
  readonly #files = new Map<number, MockFile>();
  readonly #mappings = new Map<bigint, MockMapping>();
  readonly #pointers: Array<{ address: bigint; view: ArrayBufferView }> = [];
  #nextAddress = 0x7f00_0000_0000n;
  #nextPointer = 0x5500_0000_0000n;
  readonly #handles = new Map<number, MockVcpuHandle>();
  readonly #vms: MockVm[] = [];
  /** Every ioctl seen, in order: `[fd, request name]` (for assertions). */
  readonly calls: Array<{ fd: number; request: string }> = [];
  /** Threads registered through `threadSelf()`, and the kicks sent. */
  readonly kicks: Array<{ thread: bigint; runAddress: bigint }> = [];

  constructor(config: MockKernelConfig = {}) {
    this.config = { ...DEFAULTS, ...config, caps: { ...defaultCaps(config.arch ?? 'x86_64'), ...(config.caps ?? {}) } };
    this.pageSize = this.config.pageSize;
  }

  /** Every live VM, oldest first. */
  get vms(): MockVm[] {
    return this.#vms;
  }

  /** The scripting handle for vCPU `id` (of the newest VM that has it). */
  vcpu(id: number): MockVcpuHandle {
    let h = this.#handles.get(id);
    if (!h) {
      h = new MockVcpuHandle(this, id);
      this.#handles.set(id, h);
    }
    return h;
  }

  /** Open fds (for leak assertions). */
  get openFds(): number[] {
    return [...this.#files.keys()];
  }

  /** Live mappings (for leak assertions). */
  get mappings(): ReadonlyArray<Readonly<MockMapping>> {
    return [...this.#mappings.values()];
  }

  #ctx(): MockContext {
    return {
      config: this.config,
      userMemory: (address, length, request) => this.#user(address, length, request),
      install: (file) => this.#install(file),
      file: (fd) => this.#files.get(fd),
      bytes: (arg, request, minLength = 0) => {
        if (!ArrayBuffer.isView(arg)) fail('EFAULT', request);
        const b = new Uint8Array(arg.buffer, arg.byteOffset, arg.byteLength);
        if (b.length < minLength) fail('EFAULT', request, 'argument buffer too small');
        return b;
      },
      vms: this.#vms,
    };
  }

  #install(file: MockFile): number {
    let fd = 3;
    while (this.#files.has(fd)) fd++;
    this.#files.set(fd, file);
    if (file.kind === 'vm') this.#vms.push(file.vm);
    if (file.kind === 'vcpu') {
      const h = this.#handles.get(file.vcpu.id);
      if (h) file.vcpu.script.push(...h.take());
    }
    return fd;
  }

  #user(address: bigint, length: number, request: string): Uint8Array {
    for (const m of this.#mappings.values()) {
      if (address >= m.address && address + BigInt(length) <= m.address + BigInt(m.length)) {
        if (m.buffer.byteLength === 0) fail('EFAULT', request, 'mapping detached');
        return new Uint8Array(m.buffer, Number(address - m.address), length);
      }
    }
    for (const p of this.#pointers) {
      const len = p.view.byteLength;
      if (address >= p.address && address + BigInt(length) <= p.address + BigInt(len)) {
        return new Uint8Array(p.view.buffer, p.view.byteOffset + Number(address - p.address), length);
      }
    }
    return fail('EFAULT', request, `bad address 0x${address.toString(16)}`);
  }

  open(path: string, flags: number): number {
    if (path !== '/dev/kvm') throw new KvmError(errnoOf('ENOENT'), 'open', { path });
    return this.#install({ kind: 'system', path, flags });
  }

  close(fd: number): void {
    const f = this.#files.get(fd);
    if (!f) throw new KvmError(errnoOf('EBADF'), 'close');
    this.#files.delete(fd);
    // The kernel keeps a VM alive while any fd references it (its own, a vCPU's, a device's): the
    // mock drops it from the list when the last of them closes.
    const vm = this.#vmOf(f);
    if (vm !== undefined && ![...this.#files.values()].some((x) => this.#vmOf(x) === vm)) this.#dropVm(vm);
  }

  #vmOf(f: MockFile): MockVm | undefined {
    return f.kind === 'vm' || f.kind === 'device' ? f.vm : f.kind === 'vcpu' ? f.vcpu.vm : undefined;
  }

  #dropVm(vm: MockVm): void {
    const i = this.#vms.indexOf(vm);
    if (i >= 0) this.#vms.splice(i, 1);
  }

  dup(fd: number): number {
    const f = this.#files.get(fd);
    if (!f) throw new KvmError(errnoOf('EBADF'), 'dup');
    let n = 3;
    while (this.#files.has(n)) n++;
    this.#files.set(n, f);
    return n;
  }

  getFdFlags(fd: number): number {
    const f = this.#files.get(fd);
    if (!f) throw new KvmError(errnoOf('EBADF'), 'fcntl');
    return f.kind === 'system' ? (f.flags & sys.O_CLOEXEC ? sys.FD_CLOEXEC : 0) : sys.FD_CLOEXEC;
  }

  ioctl(fd: number, request: number, arg?: IoctlArg): number {
    const name = requestName(request);
    this.calls.push({ fd, request: name });
    const f = this.#files.get(fd);
    if (!f) return fail('EBADF', name);
    const table: Record<number, MockIoctl<never>> | undefined =
      f.kind === 'system'
        ? systemIoctls
        : f.kind === 'vm'
          ? vmIoctls
          : f.kind === 'vcpu'
            ? vcpuIoctls
            : f.kind === 'device'
              ? deviceIoctls
              : undefined;
    const archTable = this.config.arch === 'aarch64' ? ARM64_TABLES[f.kind] : undefined;
    const handler = (archTable?.[request] ?? table?.[request]) as MockIoctl | undefined;
    if (!handler) return fail('ENOTTY', name);
    return handler(this.#ctx(), f, arg);
  }

  mmap(length: number, flags: MmapFlags, fd: number, offset: number): bigint {
    if (!Number.isInteger(length) || length <= 0) throw new KvmError(errnoOf('EINVAL'), 'mmap');
    // The mock has no files to map over its memory (GuestMemory copies instead).
    if (flags.fixed !== undefined)
      throw new KvmError(errnoOf('EINVAL'), 'mmap', { detail: 'the mock does not map at a fixed address' });
    let buffer: ArrayBuffer;
    if (flags.anonymous) {
      buffer = new ArrayBuffer(length);
    } else {
      const f = this.#files.get(fd);
      if (!f) throw new KvmError(errnoOf('EBADF'), 'mmap');
      if (f.kind !== 'vcpu') throw new KvmError(errnoOf('ENODEV'), 'mmap');
      const run = f.vcpu.run;
      if (offset === kvm.KVM_COALESCED_MMIO_PAGE_OFFSET * this.pageSize && length <= this.pageSize) {
        buffer = coalescedRing(f.vcpu.vm, this.pageSize); // the VM's coalesced MMIO ring page
      } else {
        if (offset !== 0 || length > run.byteLength) throw new KvmError(errnoOf('EINVAL'), 'mmap');
        buffer = run;
      }
    }
    const address = this.#nextAddress;
    this.#nextAddress += BigInt(Math.ceil(length / this.pageSize) * this.pageSize) + BigInt(this.pageSize);
    this.#mappings.set(address, { address, length, buffer, fd: flags.anonymous ? -1 : fd });
    return address;
  }

  munmap(address: bigint, length: number): void {
    const m = this.#mappings.get(address);
    if (!m || m.length !== length) throw new KvmError(errnoOf('EINVAL'), 'munmap');
    this.#mappings.delete(address);
  }

  madvise(address: bigint, length: number, _advice: number): void {
    const m = this.#mappings.get(address);
    if (!m || length > m.length) throw new KvmError(errnoOf('ENOMEM'), 'madvise');
  }

  view(address: bigint, length: number): ArrayBuffer {
    const m = this.#mappings.get(address);
    if (!m || m.length !== length) throw new KvmError(errnoOf('EINVAL'), 'mmap', { detail: 'no such mapping' });
    return m.buffer;
  }

  detach(buffer: ArrayBuffer): void {
    // Detaching the buffer every view of a mapping shares models napi_detach_arraybuffer: any
    // later access through a stale view sees a zero-length buffer instead of memory.
    if (buffer.byteLength === 0) return;
    for (const m of this.#mappings.values()) if (m.buffer === buffer && m.fd >= 0) return; // kvm_run stays with the vCPU
    structuredClone(buffer, { transfer: [buffer] });
  }

  addressOf(view: ArrayBufferView): bigint {
    for (const m of this.#mappings.values()) {
      if (view.buffer === m.buffer) return m.address + BigInt(view.byteOffset);
    }
    const address = this.#nextPointer;
    this.#nextPointer += BigInt(view.byteLength) + 64n;
    this.#pointers.push({ address, view });
    if (this.#pointers.length > 256) this.#pointers.shift();
    return address;
  }

  eventfd(initval: number, flags: number): number {
    return this.#install({ kind: 'eventfd', counter: BigInt(initval), flags, watchers: new Set() });
  }

  read(fd: number, buffer: Uint8Array): number {
    const f = this.#files.get(fd);
    if (!f) throw new KvmError(errnoOf('EBADF'), 'read');
    if (f.kind !== 'eventfd') throw new KvmError(errnoOf('EINVAL'), 'read');
    return eventfdRead(f, buffer);
  }

  write(fd: number, buffer: Uint8Array): number {
    const f = this.#files.get(fd);
    if (!f) throw new KvmError(errnoOf('EBADF'), 'write');
    if (f.kind !== 'eventfd') throw new KvmError(errnoOf('EINVAL'), 'write');
    return eventfdWrite(f, buffer);
  }

  watchReadable(fd: number, onReadable: () => void): () => void {
    const f = this.#files.get(fd);
    if (!f) throw new KvmError(errnoOf('EBADF'), 'poll');
    if (f.kind !== 'eventfd') throw new KvmError(errnoOf('EPERM'), 'poll');
    const cb = () => onReadable();
    f.watchers.add(cb);
    if (f.counter > 0n) queueMicrotask(() => f.watchers.has(cb) && cb());
    return () => f.watchers.delete(cb);
  }

  kickSignal(): number {
    return 38;
  }

  threadSelf(): bigint {
    return 1n;
  }

  kick(thread: bigint, runAddress: bigint): void {
    const m = this.#mappings.get(runAddress);
    if (!m) throw new KvmError(errnoOf('EFAULT'), 'kick');
    new DataView(m.buffer).setUint8(offsetOf(kvm_run, 'immediate_exit'), 1);
    this.kicks.push({ thread, runAddress });
  }

  setThreadAffinity(cpu: number): void {
    if (!Number.isInteger(cpu) || cpu < -1) throw new KvmError(errnoOf('EINVAL'), 'sched_setaffinity');
  }

  runPosted(): number {
    // The fast path exists for worker threads, which run only the native backend.
    throw new KvmError(errnoOf('ENOSYS'), 'ioctl', { request: 'KVM_RUN', detail: 'the mock has no native fast path' });
  }

  runPostedLayout(): string[] {
    return [];
  }
}

/** Capabilities the mock reports by default: those of this project's PVM host (x86_64), or typical arm64 ones. */
function defaultCaps(arch: 'x86_64' | 'aarch64'): Record<number, number> {
  return arch === 'aarch64' ? { ...ARM64_CAPS } : { ...HOST_CAPS };
}
