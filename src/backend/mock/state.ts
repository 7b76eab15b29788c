/**
 * The mock kernel's state: what a `MockBackend` knows about its open files, mappings, VMs and
 * vCPUs. Instance-scoped (no globals), synchronous, inspectable from tests.
 *
 * @module
 */
import { KvmError, errnoOf } from '../../abi/errors';
import { ioctls } from '../../abi/kvm-constants';
import type { IoctlArg } from '../types';

/** Throws the KvmError the kernel would give for `code` on `request`. */
export function fail(code: string, request: string, detail?: string): never {
  throw new KvmError(errnoOf(code), 'ioctl', detail === undefined ? { request } : { request, detail });
}

/** A mapping of the mock process's address space. */
export interface MockMapping {
  address: bigint;
  length: number;
  buffer: ArrayBuffer;
  /** The file mapped (vCPU kvm_run, guest_memfd), or none for anonymous memory. */
  fd: number;
}

/** One memory slot of a mock VM. */
export interface MockSlot {
  slot: number;
  flags: number;
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
  /** Dirty page numbers (relative to the slot) since the last KVM_GET_DIRTY_LOG. */
  dirty: Set<number>;
}

/** A scripted exit: what the mock's KVM_RUN reports next (see `exits.ts` for builders). */
export interface ScriptedExit {
  /** Fills kvm_run for this exit. */
  write(run: DataView, bytes: Uint8Array): void;
  /** Name for messages and records, e.g. `IoIn(0x3f8)`. */
  label: string;
  /** Reads the answer the handler wrote (for exits that take one) before the next run. */
  answer?(run: DataView, bytes: Uint8Array): unknown;
  /** Applies the answer to the vCPU's registers, as the kernel would on the next KVM_RUN. */
  complete?(vcpu: MockVcpu, run: DataView, bytes: Uint8Array): void;
  /** Guest writes performed before the exit (mark pages dirty). */
  writes?: Array<{ gpa: bigint; data: Uint8Array }>;
  /** Make KVM_RUN fail with this errno name instead of exiting. */
  error?: string;
}

/** What the mock recorded for one completed exit. */
export interface AnsweredExit {
  exit: string;
  answer: unknown;
}

/** Per-vCPU state. Register files are kept as the kernel's struct bytes. */
export interface MockVcpu {
  id: number;
  fd: number;
  vm: MockVm;
  /** Struct bytes by C struct name (`kvm_regs`, `kvm_sregs`, `kvm_fpu`, …). */
  state: Map<string, Uint8Array>;
  /** The kvm_run page(s). */
  run: ArrayBuffer;
  script: ScriptedExit[];
  /** The exit KVM_RUN last returned, whose answer is collected on the next run. */
  pending: ScriptedExit | undefined;
  answers: AnsweredExit[];
  runs: number;
  /** Anything a handler wants to keep (cpuid, msrs, lapic, …). */
  extra: Map<string, unknown>;
}

/** Per-VM state. */
export interface MockVm {
  fd: number;
  type: bigint;
  slots: Map<number, MockSlot>;
  vcpus: Map<number, MockVcpu>;
  /** Anything a handler wants to keep (irqchip, pit, clock, ioeventfds, irqfds, …). */
  extra: Map<string, unknown>;
}

/** Open files of the mock process. */
export type MockFile =
  | { kind: 'system'; path: string; flags: number }
  | { kind: 'vm'; vm: MockVm }
  | { kind: 'vcpu'; vcpu: MockVcpu }
  | { kind: 'device'; vm: MockVm; type: number; extra: Map<string, unknown> }
  | { kind: 'eventfd'; counter: bigint; flags: number; watchers: Set<() => void> }
  | { kind: 'other'; name: string; extra: Map<string, unknown> };

/** A handler for one ioctl request on one kind of file. Returns the ioctl's result. */
export type MockIoctl<F extends MockFile = MockFile> = (ctx: MockContext, file: F, arg: IoctlArg) => number;

/** What handlers can reach: the backend's memory, files and tunables. */
export interface MockContext {
  readonly config: Required<MockKernelConfig>;
  /** The bytes behind a user pointer (a mapping or a view passed through `addressOf`). */
  userMemory(address: bigint, length: number, request: string): Uint8Array;
  /** Allocates an fd for a new file. */
  install(file: MockFile): number;
  /** The open file behind an fd, if any. */
  file(fd: number): MockFile | undefined;
  /** The struct argument of an ioctl as bytes (EFAULT when it is not a buffer). */
  bytes(arg: IoctlArg, request: string, minLength?: number): Uint8Array;
  /** Every VM created so far, oldest first (closed ones removed). */
  readonly vms: MockVm[];
}

/** Tunables of the modelled kernel; defaults are what this project's PVM host reports. */
export interface MockKernelConfig {
  apiVersion?: number;
  vcpuMmapSize?: number;
  nrVcpus?: number;
  maxVcpus?: number;
  maxVcpuId?: number;
  nrMemslots?: number;
  /** Address spaces (x86 with SMM: 2). */
  addressSpaces?: number;
  /** KVM_CHECK_EXTENSION answers by cap number; unlisted caps answer 0. */
  caps?: Record<number, number>;
  pageSize?: number;
  /**
   * The modelled architecture (default `'x86_64'`). `'aarch64'` adds the experimental arm64 model
   * (`arm64.ts`: IPA-sized VMs, vCPU init/finalize, reg list, one-reg, device attributes) and
   * answers KVM_CHECK_EXTENSION with typical arm64 caps instead of the x86 host's.
   */
  arch?: 'x86_64' | 'aarch64';
  /**
   * What `KVM_GET_FPU` reports as MXCSR: `'as-set'` (default, as KVM: the value last set) or a
   * fixed number whatever was set (as a PVM host does: 0 on this project's Intel host).
   */
  fpuMxcsr?: 'as-set' | number;
}

/** Convert an ioctl arg that must be an integer. */
export function argInt(arg: IoctlArg): bigint {
  if (typeof arg === 'bigint') return arg;
  if (typeof arg === 'number') return BigInt(arg);
  if (arg === undefined) return 0n;
  return 0n;
}

/** The unsigned little-endian value of `bytes` (a guest's PIO/MMIO data). */
export function leValue(bytes: Uint8Array): bigint {
  let v = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]);
  return v;
}

const names = new Map<number, string>(Object.entries(ioctls).map(([k, v]) => [v, k]));

/** The name of an ioctl request number, or its hex. */
export function requestName(request: number): string {
  return names.get(request) ?? `0x${(request >>> 0).toString(16)}`;
}
