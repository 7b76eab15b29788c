/**
 * `Sandbox`: a guest built with kvm-rx's guest SDK (`guest/sdk/`), booted once in a micro-VM of
 * its own at CPL 3, whose exported functions are called with `await sandbox.call(name, ...args)`
 * (docs/sandbox.md).
 *
 * The vCPU runs on the calling thread: `KVM_RUN` is entered from `call()` and the guest's exits
 * (its return, host calls, output) are answered on this thread, with no thread hop. A call blocks
 * the thread while the guest computes (host functions that return a Promise let the event loop run
 * while they settle); a watchdog thread enforces the time limit by kicking the vCPU.
 *
 * @module
 */
import { KvmError } from '../../abi/errors';
import { checkInt, checkObject, invalidType, outOfRange } from '../../abi/validate';
import { KVM_MAX_CPUID_ENTRIES } from '../../wrappers/fam';
import { GuestMemory } from '../../wrappers/guest-memory';
import { Kvm } from '../../wrappers/kvm';
import type { VcpuExit } from '../../wrappers/vcpu-exit';
import type { VcpuFd } from '../../wrappers/vcpu-fd';
import type { VmFd } from '../../wrappers/vm-fd';
import { loadElf, parseElf, type ElfKernel } from '../elf';
import { BootImageError } from '../errors';
import {
  AREA,
  SANDBOX_ABI_VERSION,
  SANDBOX_FAULT_PORT,
  SANDBOX_LAYOUT as L,
  SANDBOX_MAGIC,
  SANDBOX_MAX_ARGS,
  SANDBOX_MAX_HOST_FNS,
  SANDBOX_OP_CALL,
  SANDBOX_STATUS_ERROR,
  SANDBOX_STATUS_OK,
  SandboxExit,
} from './abi';
import { GuestError, SandboxError, type SandboxErrorCode, type SandboxFault } from './errors';
import { EXCEPTION_NAMES, sandboxRegs, sandboxSregs, writeSandboxSystem } from './layout';
import { DecodedError, decodeValue, encodeValue, type SandboxValue } from './values';
import { Watchdog } from './watchdog';

/** A function the guest may call (`kvmrx_host_call`). It may return a Promise. */
export type HostFunction = (...args: SandboxValue[]) => SandboxValue | Promise<SandboxValue>;

/** Options of {@link Sandbox.create}. */
export interface SandboxOptions {
  /** Guest RAM in bytes: a multiple of 2 MiB, 8 MiB to 1 GiB. Default 64 MiB. It is the guest's memory limit. */
  memSize?: number;
  /** Host functions by name, callable from the guest. At most 64; names of 1 to 255 bytes. */
  hostFunctions?: Record<string, HostFunction>;
  /** Receives what the guest writes with `kvmrx_write` (a copy). */
  output?: (bytes: Uint8Array) => void;
  /** Time limit of each call, in ms (default 5000). Per call: {@link CallOptions.timeLimitMs}. */
  timeLimitMs?: number;
  /** Time limit of the boot to the ready point, in ms (default 10000). */
  bootTimeLimitMs?: number;
  /** The `/dev/kvm` handle to use (default: one of its own, closed with the sandbox). */
  kvm?: Kvm;
}

/** Options of one call ({@link Sandbox.callWith}). */
export interface CallOptions {
  /** This call's time limit in ms (default: the sandbox's `timeLimitMs`). */
  timeLimitMs?: number;
  /**
   * Stops the call. Checked before the call starts and whenever the guest exits (host calls,
   * output) or waits for a host function; a guest that computes without exiting is stopped by
   * the time limit.
   */
  signal?: AbortSignal;
}

const DEFAULT_MEM = 64 << 20;
const DOORBELL = BigInt(L.doorbell);
const MAX_MEM = 1 << 30;
const MIN_MEM = 8 << 20;
const MAX_EXPORTS = 1024;
const MAX_NAME = 255;

type Phase = 'boot' | 'call';

const encoder = new TextEncoder();

function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`;
}

function fail(code: SandboxErrorCode, message: string, extra: { fault?: SandboxFault; cause?: unknown } = {}): never {
  throw new SandboxError(code, message, { poisoned: true, ...extra });
}

/** @internal For specs: a sandbox's guest RAM (to break its ring-0 structures on purpose). */
export let memoryOf: (sandbox: Sandbox) => Uint8Array;

const CREATE = Symbol('Sandbox.create');

/**
 * A sandbox: one guest ELF in a micro-VM of its own (one vCPU, no devices), booted to its ready
 * point. Its exports are called with {@link call}; one call at a time.
 *
 * @example
 * ```ts
 * // @ts-setup: import { readFileSync } from 'node:fs';
 * await using sandbox = await Sandbox.create(readFileSync('duktape.elf'));
 * await sandbox.call('eval', '6*7'); // 42, computed inside the VM
 * ```
 */
export class Sandbox implements Disposable, AsyncDisposable {
  /** The names the guest exports, in its order. */
  readonly exports: readonly string[];
  readonly #kvm: Kvm;
  readonly #ownKvm: boolean;
  readonly #vm: VmFd;
  readonly #vcpu: VcpuFd;
  readonly #memory: GuestMemory;
  readonly #memSize: number;
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  readonly #hostFns: Array<[string, HostFunction]>;
  readonly #output: ((bytes: Uint8Array) => void) | undefined;
  readonly #timeLimitMs: number;
  #exportIndex = new Map<string, number>();
  #busy = false;
  #closed = false;
  #poison: SandboxError | undefined;
  #watchdog: Watchdog;

  static {
    memoryOf = (s) => s.#bytes;
  }

  private constructor(
    token: symbol,
    kvm: Kvm,
    ownKvm: boolean,
    image: Uint8Array,
    elf: ElfKernel,
    options: SandboxOptions,
  ) {
    // `private` is TypeScript's; from JavaScript the constructor is reachable.
    if (token !== CREATE)
      throw Object.assign(new TypeError('a Sandbox is made by Sandbox.create()'), { code: 'ERR_ILLEGAL_CONSTRUCTOR' });
    this.#kvm = kvm;
    this.#ownKvm = ownKvm;
    this.#memSize = options.memSize ?? DEFAULT_MEM;
    this.#hostFns = Object.entries(options.hostFunctions ?? {});
    this.#output = options.output;
    this.#timeLimitMs = options.timeLimitMs ?? 5000;
    this.#watchdog = Watchdog.get();
    this.exports = [];
    const memory = GuestMemory.anonymous(this.#memSize);
    let vm: VmFd | undefined;
    try {
      vm = kvm.createVm();
      vm.setTssAddress(0xfffb_d000);
      vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory });
      const vcpu = vm.createVcpu(0);
      vcpu.setCpuid2(kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES));
      this.#bytes = memory.bytes;
      this.#view = new DataView(this.#bytes.buffer, this.#bytes.byteOffset, this.#bytes.byteLength);
      loadElf(image, elf, { write: (gpa, data) => this.#bytes.set(data, Number(gpa)) }, this.#memSize);
      writeSandboxSystem(this.#bytes, this.#memSize);
      this.#writeHeader();
      vcpu.setSregs(sandboxSregs(vcpu.getSregs()));
      vcpu.setRegs(sandboxRegs(elf.entry, this.#memSize));
      this.#vcpu = vcpu;
      this.#vm = vm;
      this.#memory = memory;
    } catch (e) {
      vm?.close();
      memory.close();
      throw e;
    }
  }

  /**
   * Loads the guest ELF `image` into a new VM, sets up its CPL-3 machine and runs it to its
   * ready point (`kvmrx_init()` done, exports listed).
   *
   * @example
   * ```ts
   * // @ts-setup: import { readFileSync } from 'node:fs';
   * const sandbox = await Sandbox.create(readFileSync('hello.elf'), {
   *   hostFunctions: { double: (x) => 2 * (x as number) },
   *   output: (bytes) => process.stdout.write(bytes),
   * });
   * sandbox.exports; // ['add', 'greet', …]
   * sandbox.close();
   * ```
   * @throws (rejects) {@link SandboxError} `ERR_SANDBOX_BAD_IMAGE` (with the loader's error as
   *   `cause`) for an image that is not an x86-64 ELF or does not fit the sandbox layout; the
   *   boot's error (`ERR_SANDBOX_FAULT`, `ERR_SANDBOX_TIMEOUT`, `ERR_SANDBOX_GUEST_ABORT`,
   *   `ERR_SANDBOX_BOOT`, …) when the guest does not reach its ready point (everything is closed
   *   then); `TypeError`/`RangeError` with `ERR_*` codes for bad options; {@link KvmError} from KVM
   */
  static async create(image: Uint8Array, options: SandboxOptions = {}): Promise<Sandbox> {
    if (!(image instanceof Uint8Array)) invalidType('image', 'a Uint8Array', image);
    checkOptions(options);
    const memSize = options.memSize ?? DEFAULT_MEM;
    const elf = checkImage(image, memSize);
    const ownKvm = options.kvm === undefined;
    const kvm = options.kvm ?? new Kvm();
    let sandbox: Sandbox;
    try {
      sandbox = new Sandbox(CREATE, kvm, ownKvm, image, elf, options);
    } catch (e) {
      if (ownKvm) kvm.close();
      throw e;
    }
    try {
      await sandbox.#boot(options.bootTimeLimitMs ?? 10_000);
    } catch (e) {
      sandbox.close();
      throw e;
    }
    return sandbox;
  }

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** The error that made the sandbox unusable, if one did. */
  get poisoned(): SandboxError | undefined {
    return this.#poison;
  }

  /**
   * Calls the guest's export `name` with `args` and resolves with its result.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const sandbox: Sandbox;
   * await sandbox.call('add', 2, 3); // 5
   * await sandbox.call('eval', 'JSON.parse(\'{"a":[1,2]}\')'); // { a: [1, 2] }
   * ```
   * @throws (rejects) {@link GuestError} when the export returns an error (the sandbox stays
   *   usable); {@link SandboxError} with `ERR_SANDBOX_NO_SUCH_FUNCTION`, `ERR_SANDBOX_BUSY`,
   *   `ERR_SANDBOX_CLOSED`, `ERR_SANDBOX_POISONED`, or what poisoned it now (`ERR_SANDBOX_TIMEOUT`,
   *   `ERR_SANDBOX_FAULT`, `ERR_SANDBOX_TRIPLE_FAULT`, `ERR_SANDBOX_BAD_EXIT`,
   *   `ERR_SANDBOX_BAD_CALL_AREA`, `ERR_SANDBOX_BAD_VALUE`, `ERR_SANDBOX_BAD_HOST_FUNCTION`,
   *   `ERR_SANDBOX_GUEST_ABORT`, `ERR_SANDBOX_ABORTED`); `TypeError`/`RangeError` for arguments
   *   that cannot cross (nothing ran then); the output callback's error, after the call finished
   */
  call(name: string, ...args: SandboxValue[]): Promise<SandboxValue> {
    return this.callWith({}, name, ...args);
  }

  /**
   * {@link call} with per-call options: a time limit and an `AbortSignal`.
   *
   * @example
   * ```ts
   * // @ts-setup: declare const sandbox: Sandbox;
   * await sandbox.callWith({ timeLimitMs: 50, signal: AbortSignal.timeout(1000) }, 'eval', 'fib(20)');
   * ```
   * @throws (rejects) as {@link call}
   */
  async callWith(options: CallOptions, name: string, ...args: SandboxValue[]): Promise<SandboxValue> {
    checkObject('options', options);
    const limit =
      options.timeLimitMs === undefined ? this.#timeLimitMs : checkLimit('options.timeLimitMs', options.timeLimitMs);
    if (options.signal !== undefined && !(options.signal instanceof AbortSignal))
      invalidType('options.signal', 'an AbortSignal', options.signal);
    if (typeof name !== 'string') invalidType('name', 'of type string', name);
    if (this.#closed) throw new SandboxError('ERR_SANDBOX_CLOSED', 'the sandbox is closed');
    if (this.#poison !== undefined)
      throw new SandboxError('ERR_SANDBOX_POISONED', `the sandbox is unusable: ${this.#poison.message}`, {
        poisoned: true,
        cause: this.#poison,
      });
    if (this.#busy) throw new SandboxError('ERR_SANDBOX_BUSY', 'another call is running on this sandbox');
    const index = this.#exportIndex.get(name);
    if (index === undefined)
      throw new SandboxError('ERR_SANDBOX_NO_SUCH_FUNCTION', `the guest exports no function '${name}'`);
    if (args.length > SANDBOX_MAX_ARGS) outOfRange('args.length', `at most ${SANDBOX_MAX_ARGS}`, args.length);
    let at = 0;
    for (let i = 0; i < args.length; i++)
      at = encodeValue(this.#bytes, this.#view, L.in + at, L.in + L.inSize, args[i], `args[${i}]`) - L.in;
    if (options.signal?.aborted)
      throw new SandboxError('ERR_SANDBOX_ABORTED', 'the call was aborted before it started', {
        cause: options.signal.reason,
      });
    const v = this.#view;
    v.setUint32(L.area + AREA.op, SANDBOX_OP_CALL, true);
    v.setUint32(L.area + AREA.func, index, true);
    v.setUint32(L.area + AREA.argc, args.length, true);
    v.setUint32(L.area + AREA.inLen, at, true);
    v.setFloat64(L.area + AREA.nowMs, Date.now(), true);
    this.#busy = true;
    try {
      return await this.#run('call', limit, options.signal);
    } catch (e) {
      if (e instanceof SandboxError && e.poisoned && this.#poison === undefined) this.#poison = e;
      throw e;
    } finally {
      this.#busy = false;
    }
  }

  /** Closes the VM and frees its memory. Idempotent. A call waiting on a host function rejects with `ERR_SANDBOX_CLOSED`. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#vm.close();
    this.#memory.close();
    if (this.#ownKvm) this.#kvm.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }

  #writeHeader(): void {
    const v = this.#view;
    const a = L.area;
    v.setUint32(a + AREA.magic, SANDBOX_MAGIC, true);
    v.setUint32(a + AREA.abi, SANDBOX_ABI_VERSION, true);
    v.setBigUint64(a + AREA.memSize, BigInt(this.#memSize), true);
    let at = a + AREA.hostFns + 4;
    v.setUint32(a + AREA.hostFns, this.#hostFns.length, true);
    for (const [name] of this.#hostFns) {
      const b = encoder.encode(name);
      v.setUint32(at, b.length, true);
      this.#bytes.set(b, at + 4);
      at += (4 + b.length + 3) & ~3;
    }
  }

  async #boot(limitMs: number): Promise<void> {
    this.#busy = true;
    try {
      await this.#run('boot', limitMs, undefined);
    } finally {
      this.#busy = false;
    }
  }

  /** Runs the guest until it returns (a call) or is ready (the boot). */
  async #run(phase: Phase, limitMs: number, signal: AbortSignal | undefined): Promise<SandboxValue> {
    const deadline = process.hrtime.bigint() + BigInt(Math.round(limitMs * 1e6));
    let outputError: { error: unknown } | undefined;
    for (;;) {
      const exit = this.#enter(deadline, limitMs, phase);
      const code = this.#exitCode(exit, phase);
      if (code === SandboxExit.output) {
        const bytes = this.#outData();
        try {
          this.#output?.(bytes);
        } catch (error) {
          outputError ??= { error };
        }
      } else if (code === SandboxExit.hostCall) {
        const answer = this.#hostCall();
        if (answer instanceof Promise) await this.#wait(answer, deadline, limitMs, signal);
        else this.#answer(answer);
      } else if (code === SandboxExit.abort) {
        fail(
          'ERR_SANDBOX_GUEST_ABORT',
          `the guest aborted${phase === 'boot' ? ' while booting' : ''}: ${this.#abortMessage()}`,
        );
      } else if (code === SandboxExit.ready) {
        if (phase !== 'boot') fail('ERR_SANDBOX_BAD_EXIT', 'the guest reported READY during a call');
        this.#readExports();
        return undefined;
      } else {
        if (phase !== 'call') fail('ERR_SANDBOX_BOOT', 'the guest returned from a call before it was ready');
        const result = this.#result();
        if (outputError !== undefined) throw outputError.error;
        if (result instanceof DecodedError) throw new GuestError(result.name, result.message);
        return result;
      }
      if (this.#closed) throw new SandboxError('ERR_SANDBOX_CLOSED', 'the sandbox was closed during the call');
      if (signal?.aborted) fail('ERR_SANDBOX_ABORTED', 'the call was aborted', { cause: signal.reason });
    }
  }

  /** KVM_RUN under the time limit. */
  #enter(deadline: bigint, limitMs: number, phase: Phase): VcpuExit {
    this.#watchdog.arm(deadline);
    try {
      for (;;) {
        if (process.hrtime.bigint() >= deadline)
          fail(
            'ERR_SANDBOX_TIMEOUT',
            `the ${phase === 'boot' ? 'boot' : 'call'} ran past its time limit of ${limitMs} ms`,
          );
        try {
          return this.#vcpu.run();
        } catch (e) {
          // EINTR: the watchdog's kick (the deadline is checked above), or another signal.
          if (e instanceof KvmError && e.code === 'EINTR') continue;
          throw e;
        }
      }
    } finally {
      this.#watchdog.disarm();
    }
  }

  /** What the exit is: one of the ABI's exit codes, or an error. */
  #exitCode(exit: VcpuExit, phase: Phase): number {
    if (exit.kind === 'MmioWrite' && exit.addr === DOORBELL && exit.data.length === 4) {
      const code = exit.data[0] | (exit.data[1] << 8) | (exit.data[2] << 16) | (exit.data[3] << 24);
      if (code >= SandboxExit.ready && code <= SandboxExit.abort) return code;
      fail('ERR_SANDBOX_BAD_EXIT', `unknown exit code ${hex(code >>> 0)} at ${this.#rip()}`);
    }
    if (exit.kind === 'IoOut' && exit.port === SANDBOX_FAULT_PORT) this.#fault(phase);
    if (exit.kind === 'Shutdown')
      fail(
        'ERR_SANDBOX_TRIPLE_FAULT',
        `the guest's vCPU shut down (a triple fault)${phase === 'boot' ? ' while booting' : ''}`,
      );
    let what: string;
    switch (exit.kind) {
      case 'IoOut':
      case 'IoIn':
        what = `${exit.kind === 'IoIn' ? 'a read of' : 'a write to'} port ${hex(exit.port)} (${exit.size} bytes × ${exit.count})`;
        break;
      case 'MmioRead':
      case 'MmioWrite':
        what = `${exit.kind === 'MmioRead' ? 'an MMIO read at' : 'an MMIO write to'} ${hex(exit.addr)}`;
        break;
      default:
        what = `a ${exit.kind} exit`;
    }
    return fail(
      'ERR_SANDBOX_BAD_EXIT',
      `the guest made ${what} at ${this.#rip()}, which the sandbox ABI does not have`,
    );
  }

  #rip(): string {
    try {
      return `RIP ${hex(this.#vcpu.getRegs().rip)}`;
    } catch {
      return 'an unknown RIP';
    }
  }

  #fault(phase: Phase): never {
    const v = this.#view;
    const r = L.faultRecord;
    const vector = Number(v.getBigUint64(r, true) & 0xffn);
    const fault: SandboxFault = {
      vector,
      name: EXCEPTION_NAMES[vector] ?? `vector ${vector}`,
      errorCode: v.getBigUint64(r + 8, true),
      rip: v.getBigUint64(r + 16, true),
      cs: Number(v.getBigUint64(r + 24, true) & 0xffffn),
      rflags: v.getBigUint64(r + 32, true),
      rsp: v.getBigUint64(r + 40, true),
      cr2: v.getBigUint64(r + 56, true),
    };
    const where = vector === 14 ? ` accessing ${hex(fault.cr2)}` : '';
    return fail(
      'ERR_SANDBOX_FAULT',
      `the guest faulted${phase === 'boot' ? ' while booting' : ''}: ${fault.name}${where} at RIP ${hex(fault.rip)} (error code ${hex(fault.errorCode)})`,
      { fault },
    );
  }

  /** The [start, end) of the data an OUTPUT/HOSTCALL/ABORT exit points at in OUT, checked. */
  #outRange(): [number, number] {
    const off = this.#view.getUint32(L.area + AREA.outOff, true);
    const len = this.#view.getUint32(L.area + AREA.outLen, true);
    if (off % 8 !== 0 || off > L.outSize)
      fail(
        'ERR_SANDBOX_BAD_CALL_AREA',
        `out_off ${hex(off)} is not an 8-aligned offset in OUT (${hex(L.outSize)} bytes)`,
      );
    if (len > L.outSize - off)
      fail(
        'ERR_SANDBOX_BAD_CALL_AREA',
        `out_len ${len} at out_off ${hex(off)} runs past OUT (${hex(L.outSize)} bytes)`,
      );
    return [L.out + off, L.out + off + len];
  }

  #outData(): Uint8Array {
    const [start, end] = this.#outRange();
    return this.#bytes.slice(start, end);
  }

  #abortMessage(): string {
    try {
      const [start, end] = this.#outRange();
      const { value } = decodeValue(this.#bytes, this.#view, start, end);
      if (typeof value === 'string') return value;
    } catch {
      // a malformed message: say so below
    }
    return '(no readable message)';
  }

  #values(start: number, end: number, count: number, what: string): SandboxValue[] {
    const max = what === 'exports' ? MAX_EXPORTS : SANDBOX_MAX_ARGS;
    if (count > max) fail('ERR_SANDBOX_BAD_CALL_AREA', `out_count ${count}: at most ${max} ${what}`);
    const out: SandboxValue[] = [];
    let at = start;
    for (let i = 0; i < count; i++) {
      const { value, next } = decodeValue(this.#bytes, this.#view, at, end);
      if (value instanceof DecodedError) fail('ERR_SANDBOX_BAD_VALUE', `an error value among the ${what}`);
      out.push(value);
      at = next;
    }
    return out;
  }

  #readExports(): void {
    const [start, end] = this.#outRange();
    const count = this.#view.getUint32(L.area + AREA.outCount, true);
    const names = this.#values(start, end, count, 'exports');
    const list: string[] = [];
    for (const name of names) {
      if (typeof name !== 'string' || name.length === 0 || encoder.encode(name).length > MAX_NAME)
        fail('ERR_SANDBOX_BOOT', `an export name that is not a string of 1 to ${MAX_NAME} bytes`);
      if (this.#exportIndex.has(name)) fail('ERR_SANDBOX_BOOT', `the export '${name}' is listed twice`);
      this.#exportIndex.set(name, list.length);
      list.push(name);
    }
    (this as { exports: readonly string[] }).exports = Object.freeze(list);
  }

  /** Runs the host function the guest asked for: its answer (a value or an error), or a Promise of it. */
  #hostCall(): HostAnswer | Promise<HostAnswer> {
    const id = this.#view.getUint32(L.area + AREA.hostFn, true);
    if (id >= this.#hostFns.length)
      fail(
        'ERR_SANDBOX_BAD_HOST_FUNCTION',
        `the guest called host function id ${id}; it has ${this.#hostFns.length} (0–${this.#hostFns.length - 1})`,
      );
    const [start, end] = this.#outRange();
    const count = this.#view.getUint32(L.area + AREA.outCount, true);
    const args = this.#values(start, end, count, 'host-call arguments');
    const [name, fn] = this.#hostFns[id];
    let result: SandboxValue | Promise<SandboxValue>;
    try {
      result = fn(...args);
    } catch (error) {
      return { error, name };
    }
    if (result instanceof Promise)
      return result.then(
        (value): HostAnswer => ({ value, name }),
        (error: unknown): HostAnswer => ({ error, name }),
      );
    return { value: result, name };
  }

  async #wait(
    answer: Promise<HostAnswer>,
    deadline: bigint,
    limitMs: number,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const left = Number(deadline - process.hrtime.bigint()) / 1e6;
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const stop = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new SandboxError(
              'ERR_SANDBOX_TIMEOUT',
              `the call ran past its time limit of ${limitMs} ms (in a host function)`,
              { poisoned: true },
            ),
          ),
        Math.max(0, left),
      );
      onAbort = () =>
        reject(
          new SandboxError('ERR_SANDBOX_ABORTED', 'the call was aborted (in a host function)', {
            poisoned: true,
            cause: signal?.reason,
          }),
        );
      signal?.addEventListener('abort', onAbort, { once: true });
      if (signal?.aborted) onAbort();
    });
    try {
      const a = await Promise.race([answer, stop]);
      if (this.#closed) throw new SandboxError('ERR_SANDBOX_CLOSED', 'the sandbox was closed during the call');
      this.#answer(a);
    } finally {
      clearTimeout(timer);
      if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Writes a host function's answer where the guest's arguments were. */
  #answer(a: HostAnswer): void {
    const v = this.#view;
    const off = v.getUint32(L.area + AREA.outOff, true); // checked by #outRange
    const start = L.out + off;
    const end = L.out + L.outSize;
    let len: number;
    let status = SANDBOX_STATUS_OK;
    if ('error' in a) {
      status = SANDBOX_STATUS_ERROR;
      len = this.#putError(start, end, a.error);
    } else {
      try {
        len = encodeValue(this.#bytes, v, start, end, a.value, `the result of host function '${a.name}'`) - start;
      } catch (e) {
        status = SANDBOX_STATUS_ERROR;
        len = this.#putError(start, end, e);
      }
    }
    v.setUint32(L.area + AREA.status, status, true);
    v.setUint32(L.area + AREA.outLen, len, true);
  }

  #putError(start: number, end: number, error: unknown): number {
    const name = error instanceof Error ? error.name : 'Error';
    const message = error instanceof Error ? error.message : String(error);
    const n = encoder.encode(name.slice(0, 64));
    const m = encoder.encode(message.slice(0, 4096));
    const room = end - start - 16;
    const mm = m.subarray(0, Math.max(0, Math.min(m.length, room - 4 - n.length)));
    const len = 4 + n.length + mm.length;
    const v = this.#view;
    v.setUint32(start, 8, true); // KVMRX_T_ERROR
    v.setUint32(start + 4, len, true);
    v.setUint32(start + 8, n.length, true);
    this.#bytes.set(n, start + 12);
    this.#bytes.set(mm, start + 12 + n.length);
    const next = (start + 8 + len + 1 + 7) & ~7;
    this.#bytes.fill(0, start + 8 + len, next);
    return next - start;
  }

  /** The result of a RETURN exit: at OUT[0..out_len), one value; status OK or ERROR. */
  #result(): SandboxValue | DecodedError {
    const v = this.#view;
    const status = v.getUint32(L.area + AREA.status, true);
    const len = v.getUint32(L.area + AREA.outLen, true);
    if (status !== SANDBOX_STATUS_OK && status !== SANDBOX_STATUS_ERROR)
      fail('ERR_SANDBOX_BAD_CALL_AREA', `status ${status} (0 ok or 1 error expected)`);
    if (len > L.outSize)
      fail('ERR_SANDBOX_BAD_CALL_AREA', `out_len ${len} is larger than OUT (${hex(L.outSize)} bytes)`);
    const { value } = decodeValue(this.#bytes, v, L.out, L.out + len);
    if (status === SANDBOX_STATUS_ERROR && !(value instanceof DecodedError))
      fail('ERR_SANDBOX_BAD_VALUE', 'the status says error, but the result is not an error value');
    if (status === SANDBOX_STATUS_OK && value instanceof DecodedError)
      fail('ERR_SANDBOX_BAD_VALUE', 'the status says ok, but the result is an error value');
    return value;
  }
}

type HostAnswer = { value: SandboxValue; name: string } | { error: unknown; name: string };

function checkLimit(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || value > 2 ** 31)
    outOfRange(name, 'a number of milliseconds > 0 and <= 2^31', value);
  return value;
}

function checkOptions(options: SandboxOptions): void {
  checkObject('options', options);
  if (options.memSize !== undefined) {
    checkInt('options.memSize', options.memSize, MIN_MEM, MAX_MEM);
    if (options.memSize % 0x20_0000 !== 0) outOfRange('options.memSize', 'a multiple of 2 MiB', options.memSize);
  }
  if (options.timeLimitMs !== undefined) checkLimit('options.timeLimitMs', options.timeLimitMs);
  if (options.bootTimeLimitMs !== undefined) checkLimit('options.bootTimeLimitMs', options.bootTimeLimitMs);
  if (options.output !== undefined && typeof options.output !== 'function')
    invalidType('options.output', 'a function', options.output);
  if (options.kvm !== undefined && !(options.kvm instanceof Kvm)) invalidType('options.kvm', 'a Kvm', options.kvm);
  if (options.hostFunctions !== undefined) {
    checkObject('options.hostFunctions', options.hostFunctions);
    const entries = Object.entries(options.hostFunctions);
    if (entries.length > SANDBOX_MAX_HOST_FNS)
      outOfRange('options.hostFunctions', `at most ${SANDBOX_MAX_HOST_FNS} functions`, entries.length);
    let bytes = 4;
    for (const [name, fn] of entries) {
      if (typeof fn !== 'function') invalidType(`options.hostFunctions.${name}`, 'a function', fn);
      const n = encoder.encode(name).length;
      if (n === 0 || n > MAX_NAME) outOfRange('options.hostFunctions', `names of 1 to ${MAX_NAME} bytes`, name);
      bytes += (4 + n + 3) & ~3;
    }
    if (bytes > AREA.hostFnsSize)
      outOfRange('options.hostFunctions', `names that fit in ${AREA.hostFnsSize} bytes`, bytes);
  }
}

/** Parses the ELF and checks it against the sandbox layout (before anything is created). */
function checkImage(image: Uint8Array, memSize: number): ElfKernel {
  let elf: ElfKernel;
  try {
    elf = parseElf(image);
  } catch (e) {
    if (e instanceof BootImageError)
      throw new SandboxError('ERR_SANDBOX_BAD_IMAGE', `not a sandbox guest: ${e.detail}`, { cause: e });
    throw e;
  }
  const top = memSize - L.stackSize;
  for (const s of elf.segments) {
    if (s.paddr < L.imageBase)
      throw new SandboxError(
        'ERR_SANDBOX_BAD_IMAGE',
        `a segment at ${hex(s.paddr)} is below the image base ${hex(L.imageBase)} (link with guest/sdk/kvmrx.ld)`,
      );
    if (s.paddr + s.memsz > top)
      throw new SandboxError(
        'ERR_SANDBOX_BAD_IMAGE',
        `a segment ending at ${hex(s.paddr + s.memsz)} does not fit below the stack (${hex(top)}) in ${memSize >>> 20} MiB of guest RAM`,
      );
  }
  return elf;
}
