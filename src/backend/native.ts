/**
 * The native backend: real system calls through the N-API addon (`native/`).
 *
 * @module
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { KvmError } from '../abi/errors';
import type { IoctlArg, IoctlBackend, MmapFlags } from './types';

/** The raw addon, as `native/src/addon.cc` defines it. Not public API. */
export interface NativeAddon {
  setErrorClass(ctor: typeof KvmError): void;
  abi(): {
    ioctls: Record<string, number>;
    sizes: Record<string, number>;
    offsets: Record<string, number>;
    constants: Record<string, number | bigint>;
  };
  pageSize(): number;
  open(path: string, flags: number): number;
  close(fd: number): void;
  dup(fd: number): number;
  getFdFlags(fd: number): number;
  ioctl(fd: number, request: number, arg?: IoctlArg): number;
  mmap(length: number, flags: MmapFlags, fd: number, offset: number): bigint;
  munmap(address: bigint, length: number): void;
  madvise(address: bigint, length: number, advice: number): void;
  view(address: bigint, length: number): ArrayBuffer;
  detach(buffer: ArrayBuffer): void;
  addressOf(view: ArrayBufferView): bigint;
  eventfd(initval: number, flags: number): number;
  read(fd: number, buffer: Uint8Array): number;
  write(fd: number, buffer: Uint8Array): number;
  watchReadable(fd: number, onReadable: () => void): () => void;
  kickSignal(): number;
  threadSelf(): bigint;
  kick(thread: bigint, runAddress: bigint): void;
  /** The native fast path of the worker run loop (see native/src/addon.cc RunFast). */
  runFast(
    fd: number,
    runAddress: bigint,
    portBitmap: Uint8Array,
    ring: Uint8Array,
    ctl: Int32Array,
    layout: Int32Array,
    maxBatch: number,
  ): number;
  /** The slot names of runFast's layout argument, in order. */
  runFastLayout(): string[];
  /** Pins the calling thread to a CPU (-1: any). */
  setAffinity(cpu: number): void;
}

/** @internal The package's root: the first folder above this file that holds binding.gyp. */
export function packageRoot(): string {
  let dir = __dirname;
  for (;;) {
    if (existsSync(join(dir, 'binding.gyp'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('kvm-rx: cannot find the package root (binding.gyp) above ' + __dirname);
    dir = up;
  }
}

let cached: NativeAddon | undefined;
let loadError: Error | undefined;

/**
 * Loads the addon once per thread (each worker thread gets its own instance, as Node-API
 * requires). Throws an Error that lists the usual fixes when it cannot be loaded.
 */
export function loadAddon(): NativeAddon {
  if (cached) return cached;
  if (loadError) throw loadError;
  try {
    if (process.platform !== 'linux') throw new Error(`KVM exists only on Linux (this is ${process.platform})`);
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const load = require('node-gyp-build') as (dir: string) => NativeAddon;
    const addon = load(packageRoot());
    addon.setErrorClass(KvmError);
    cached = addon;
    return addon;
  } catch (e) {
    const err = new Error(
      `kvm-rx: the native addon could not be loaded: ${(e as Error).message}\n` +
        '  - build it: `npm rebuild kvm-rx` (needs python3, make, g++ and Node headers; offline: `--nodedir=/usr`)\n' +
        '  - supported: Linux on x64 or arm64, Node >= 20.19\n' +
        '  - the mock backend needs no addon: `import { MockBackend } from "kvm-rx/testing"`',
      { cause: e },
    );
    (err as Error & { code: string }).code = 'ERR_KVM_ADDON';
    loadError = err;
    throw err;
  }
}

/** The real backend. One instance per thread is enough; it holds no state besides the addon. */
export class NativeBackend implements IoctlBackend {
  readonly kind = 'native' as const;
  readonly pageSize: number;
  /** @internal The raw addon (for the ABI table and the runtime's worker); not public API. */
  readonly addon: NativeAddon;

  /** Loads the native addon (once per thread). */
  constructor();
  /** @internal With a given addon object instead of the loaded one. */
  // eslint-disable-next-line @typescript-eslint/unified-signatures -- two signatures so that TypeDoc hides the internal one (NativeAddon is not public API)
  constructor(addon: NativeAddon);
  constructor(addon: NativeAddon = loadAddon()) {
    this.addon = addon;
    this.pageSize = addon.pageSize();
  }

  open(path: string, flags: number): number {
    return this.addon.open(path, flags);
  }
  close(fd: number): void {
    this.addon.close(fd);
  }
  dup(fd: number): number {
    return this.addon.dup(fd);
  }
  getFdFlags(fd: number): number {
    return this.addon.getFdFlags(fd);
  }
  ioctl(fd: number, request: number, arg?: IoctlArg): number {
    return this.addon.ioctl(fd, request, arg);
  }
  mmap(length: number, flags: MmapFlags, fd: number, offset: number): bigint {
    return this.addon.mmap(length, flags, fd, offset);
  }
  munmap(address: bigint, length: number): void {
    this.addon.munmap(address, length);
  }
  madvise(address: bigint, length: number, advice: number): void {
    this.addon.madvise(address, length, advice);
  }
  view(address: bigint, length: number): ArrayBuffer {
    return this.addon.view(address, length);
  }
  detach(buffer: ArrayBuffer): void {
    this.addon.detach(buffer);
  }
  addressOf(view: ArrayBufferView): bigint {
    return this.addon.addressOf(view);
  }
  eventfd(initval: number, flags: number): number {
    return this.addon.eventfd(initval, flags);
  }
  read(fd: number, buffer: Uint8Array): number {
    return this.addon.read(fd, buffer);
  }
  write(fd: number, buffer: Uint8Array): number {
    return this.addon.write(fd, buffer);
  }
  watchReadable(fd: number, onReadable: () => void): () => void {
    return this.addon.watchReadable(fd, onReadable);
  }
  kickSignal(): number {
    return this.addon.kickSignal();
  }
  threadSelf(): bigint {
    return this.addon.threadSelf();
  }
  kick(thread: bigint, runAddress: bigint): void {
    this.addon.kick(thread, runAddress);
  }
  setThreadAffinity(cpu: number): void {
    this.addon.setAffinity(cpu);
  }
  runPosted(
    fd: number,
    runAddress: bigint,
    portBitmap: Uint8Array,
    ring: Uint8Array,
    control: Int32Array,
    layout: Int32Array,
    maxBatch: number,
  ): number {
    return this.addon.runFast(fd, runAddress, portBitmap, ring, control, layout, maxBatch);
  }
  runPostedLayout(): string[] {
    return this.addon.runFastLayout();
  }
}

let defaultBackend: NativeBackend | undefined;

/** The process-wide (per-thread) native backend, created on first use. */
export function nativeBackend(): NativeBackend {
  return (defaultBackend ??= new NativeBackend());
}
