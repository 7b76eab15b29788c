/**
 * The GDB target of a kvm-rx machine: its vCPUs (each a gdb thread) run in the runtime's worker
 * threads; the target stops them with `VcpuRun.pause()`, reads and writes their state with the
 * vCPU ioctls while they are parked, arms breakpoints, watchpoints and single-step with
 * `KVM_SET_GUEST_DEBUG`, and takes the resulting `Debug` exits from `VcpuRun.debug$`.
 *
 * @module
 */
import { existsSync } from 'node:fs';
import { Subscription } from 'rxjs';
import { kvm as K } from '../../abi/kvm-constants';
import { KvmError } from '../../abi/errors';
import { checkObject, invalidType, invalidValue } from '../../abi/validate';
import type { VcpuRun } from '../../runtime/vcpu-run';
import type { GuestMemoryMap } from '../../wrappers/guest-memory';
import type { DebugExit } from '../../wrappers/vcpu-exit';
import { translate } from './paging';
import {
  EFAULT,
  EINVAL,
  ENOSPC,
  GdbTargetError,
  type AddressSpace,
  type BreakpointType,
  type GdbTarget,
  type StopReason,
  type TargetExited,
} from './target';
import {
  X86_64_TARGET_XML,
  readX86Register,
  readX86Registers,
  writeX86Register,
  writeX86Registers,
  type X86Part,
  type X86State,
} from './x86-64';

/** What the GDB stub needs of a machine: its vCPUs' runs and guest-physical memory. */
export interface GdbMachine {
  /** The runs of the machine's vCPUs, vCPU 0 first (gdb thread n is `runs[n - 1]`). */
  readonly runs: readonly VcpuRun[];
  /** Guest-physical memory (`vm.guestMemory`). */
  readonly memory: GuestMemoryMap;
  /** Settles when the machine has ended. */
  readonly done: Promise<unknown>;
  /** Stops the machine (gdb's `kill`). */
  stop(): Promise<unknown>;
}

/** The key under which `bootLinux()`'s and `startDemo()`'s handles give their {@link GdbMachine}. */
export const GDB_MACHINE: unique symbol = Symbol.for('kvm-rx.gdbMachine') as never;

/** A machine handle a GDB stub can attach to (`LinuxVm`, `DemoVm`, or your own). */
export interface Debuggable {
  [GDB_MACHINE](): GdbMachine;
}

/**
 * How software breakpoints (`Z0`) are made: `'hardware'` puts them in the debug-register slots
 * they share with hardware breakpoints and watchpoints (4 in all); `'memory'` writes `int3` (0xCC)
 * into guest memory and has KVM intercept it (`KVM_GUESTDBG_USE_SW_BP`). `'auto'`: `'hardware'` on
 * PVM hosts, where the intercept does not work (measured: an `int3` at CPL 0 ends in an emulation
 * failure, at CPL 3 it goes to the guest), `'memory'` elsewhere.
 */
export type SoftwareBreakpoints = 'auto' | 'hardware' | 'memory';

/** Options of {@link KvmGdbTarget}. */
export interface KvmGdbTargetOptions {
  softwareBreakpoints?: SoftwareBreakpoints;
  /** Whether this host is PVM (for `'auto'`); default: asks `/sys/module/kvm_pvm`. */
  pvm?: boolean;
}

interface Slot {
  /** What gdb asked for (Z type, address, length): several slots may serve one request. */
  request: { type: BreakpointType; addr: bigint; kind: number };
  addr: bigint;
  /** DR7 RW bits: 0 execute, 1 write, 3 read/write. */
  rw: 0 | 1 | 3;
  len: 1 | 2 | 4 | 8;
}

const DR7_LEN: Record<number, bigint> = { 1: 0n, 2: 1n, 8: 2n, 4: 3n };
const ERRNO_OF = (e: unknown): number => (e instanceof GdbTargetError ? e.errno : EFAULT);

/** Splits [addr, addr + length) into naturally aligned pieces of 1, 2, 4 or 8 bytes. */
export function alignedPieces(addr: bigint, length: number): Array<{ addr: bigint; len: 1 | 2 | 4 | 8 }> {
  const out: Array<{ addr: bigint; len: 1 | 2 | 4 | 8 }> = [];
  let a = addr;
  const end = addr + BigInt(length);
  while (a < end) {
    let len: 1 | 2 | 4 | 8 = 8;
    while (len > 1 && (a % BigInt(len) !== 0n || a + BigInt(len) > end)) len = (len / 2) as 1 | 2 | 4;
    out.push({ addr: a, len });
    a += BigInt(len);
  }
  return out;
}

/**
 * The {@link GdbTarget} of a kvm-rx machine.
 *
 * @example
 * ```ts
 * // @ts-setup: declare const machine: GdbMachine;
 * const target = new KvmGdbTarget(machine);
 * const stop = await target.halt(); // every vCPU parked: { thread: 1, signal: 5 }
 * await target.detach();            // and running again
 * ```
 */
export class KvmGdbTarget implements GdbTarget {
  readonly threads: readonly number[];
  readonly targetXml = X86_64_TARGET_XML;
  readonly softwareBreakpoints: 'hardware' | 'memory';
  readonly #m: GdbMachine;
  readonly #slots: Array<Slot | undefined> = [undefined, undefined, undefined, undefined];
  /** `int3` breakpoints written into memory: guest-physical address -> the byte it replaced. */
  readonly #patched = new Map<bigint, { byte: number; virt: bigint }>();
  #subscriptions = new Subscription();
  #pending: { resolve: (r: StopReason | TargetExited) => void; thread: number } | undefined;
  #exited = false;
  #blockIrq = true;
  #detached = false;

  constructor(machine: GdbMachine, options: KvmGdbTargetOptions = {}) {
    checkObject('machine', machine);
    const runs: unknown = machine.runs;
    if (!Array.isArray(runs) || runs.length === 0) invalidType('machine.runs', 'a non-empty array of VcpuRun', runs);
    if (typeof machine.memory !== 'object' || machine.memory === null || typeof machine.stop !== 'function')
      invalidType('machine', 'a GdbMachine (runs, memory, done, stop)', machine);
    checkObject('options', options);
    if (
      options.softwareBreakpoints !== undefined &&
      !['auto', 'hardware', 'memory'].includes(options.softwareBreakpoints)
    )
      invalidValue(
        'options.softwareBreakpoints',
        "must be 'auto', 'hardware' or 'memory'",
        options.softwareBreakpoints,
      );
    this.#m = machine;
    this.threads = machine.runs.map((_, i) => i + 1);
    const mode = options.softwareBreakpoints ?? 'auto';
    const pvm = options.pvm ?? existsSync('/sys/module/kvm_pvm');
    this.softwareBreakpoints = mode === 'auto' ? (pvm ? 'hardware' : 'memory') : mode;
    machine.runs.forEach((run, i) =>
      this.#subscriptions.add(run.debug$.subscribe((exit) => this.#onDebug(i + 1, exit))),
    );
    void machine.done.then(
      () => this.#onExit(),
      () => this.#onExit(),
    );
  }

  #onExit(): void {
    this.#exited = true;
    const p = this.#pending;
    this.#pending = undefined;
    p?.resolve({ exited: true, code: 0 });
  }

  #run(thread: number): VcpuRun {
    const run = this.#m.runs[thread - 1];
    if (run === undefined) throw new GdbTargetError(EINVAL, `no thread ${thread}`);
    return run;
  }

  /** Parks every vCPU (those already parked stay so). */
  async #pauseAll(): Promise<void> {
    await Promise.all(this.#m.runs.filter((r) => !r.paused).map((r) => r.pause().catch(() => undefined)));
  }

  async halt(): Promise<StopReason | TargetExited> {
    if (this.#exited) return { exited: true, code: 0 };
    await this.#pauseAll();
    if (this.#exited) return { exited: true, code: 0 };
    return { thread: 1, signal: 5 };
  }

  #state(thread: number): X86State {
    const vcpu = this.#run(thread).vcpu;
    let fpu;
    try {
      fpu = vcpu.getFpu();
    } catch (e) {
      if (!(e instanceof KvmError)) throw e;
      fpu = undefined; // the host gives no FPU state: zeros, not writable
    }
    return { regs: vcpu.getRegs(), sregs: vcpu.getSregs(), fpu };
  }

  #store(thread: number, s: X86State, parts: Iterable<X86Part>): void {
    const vcpu = this.#run(thread).vcpu;
    for (const p of parts) {
      if (p === 'regs') vcpu.setRegs(s.regs);
      else if (p === 'sregs') vcpu.setSregs(s.sregs);
      else if (s.fpu !== undefined) vcpu.setFpu(s.fpu);
    }
  }

  readRegisters(thread: number): Uint8Array {
    return readX86Registers(this.#state(thread));
  }

  writeRegisters(thread: number, bytes: Uint8Array): void {
    const s = this.#state(thread);
    const parts = writeX86Registers(s, bytes);
    if (parts === undefined) throw new GdbTargetError(EINVAL, `a register block of ${bytes.length} bytes`);
    this.#store(thread, s, parts);
  }

  readRegister(thread: number, n: number): Uint8Array | undefined {
    return readX86Register(this.#state(thread), n);
  }

  writeRegister(thread: number, n: number, bytes: Uint8Array): void {
    const s = this.#state(thread);
    const part = writeX86Register(s, n, bytes);
    if (part === undefined) throw new GdbTargetError(EINVAL, `register ${n} cannot take ${bytes.length} bytes`);
    this.#store(thread, s, [part]);
  }

  /** The guest-physical address of `addr` and the bytes left in its page. */
  #physical(thread: number, addr: bigint, space: AddressSpace): { phys: bigint; rest: number } {
    if (space === 'physical') return { phys: addr, rest: Number(0x1000n - (addr & 0xfffn)) };
    const sregs = this.#run(thread).vcpu.getSregs();
    const mem = this.#m.memory;
    return translate(addr, sregs, (gpa, size) => {
      const b = mem.read(gpa, size);
      const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
      return size === 8 ? v.getBigUint64(0, true) : BigInt(v.getUint32(0, true));
    });
  }

  /** Calls `fn` for each piece of [addr, addr + length) within one page, with its guest-physical address. */
  #pages(
    thread: number,
    addr: bigint,
    length: number,
    space: AddressSpace,
    fn: (phys: bigint, done: number, n: number) => void,
  ): number {
    let done = 0;
    while (done < length) {
      const { phys, rest } = this.#physical(thread, addr + BigInt(done), space);
      const n = Math.min(rest, length - done);
      fn(phys, done, n);
      done += n;
    }
    return done;
  }

  readMemory(thread: number, addr: bigint, length: number, space: AddressSpace): Uint8Array {
    const out = new Uint8Array(length);
    let got = 0;
    try {
      this.#pages(thread, addr, length, space, (phys, done, n) => {
        out.set(this.#readPhys(phys, n), done);
        got = done + n;
      });
    } catch (e) {
      if (got === 0) throw new GdbTargetError(ERRNO_OF(e), (e as Error).message);
      return out.slice(0, got); // gdb takes a short read up to the first unreadable byte
    }
    return out;
  }

  #readPhys(phys: bigint, n: number): Uint8Array {
    let bytes: Uint8Array;
    try {
      bytes = this.#m.memory.read(phys, n);
    } catch (e) {
      throw new GdbTargetError(EFAULT, (e as Error).message);
    }
    // Show the bytes int3 breakpoints replaced, not the int3s.
    for (const [at, p] of this.#patched) if (at >= phys && at < phys + BigInt(n)) bytes[Number(at - phys)] = p.byte;
    return bytes;
  }

  writeMemory(thread: number, addr: bigint, data: Uint8Array, space: AddressSpace): void {
    const pieces: Array<{ phys: bigint; done: number; n: number }> = [];
    // Translate and check all of it first: nothing is written unless all of it can be.
    this.#pages(thread, addr, data.length, space, (phys, done, n) => {
      if (this.#m.memory.find(phys) === undefined || this.#m.memory.find(phys + BigInt(n - 1)) === undefined)
        throw new GdbTargetError(EFAULT, `guest-physical 0x${phys.toString(16)} is outside guest memory`);
      pieces.push({ phys, done, n });
    });
    for (const { phys, done, n } of pieces) {
      const chunk = data.slice(done, done + n);
      // Under an int3 breakpoint the new byte is what the breakpoint restores.
      for (const [at, p] of this.#patched)
        if (at >= phys && at < phys + BigInt(n)) {
          p.byte = chunk[Number(at - phys)];
          chunk[Number(at - phys)] = 0xcc;
        }
      this.#m.memory.write(phys, chunk);
    }
  }

  insertBreakpoint(type: BreakpointType, addr: bigint, kind: number): boolean {
    if (type === 3) return false; // x86 has no read-only data breakpoints
    if (type === 0 && this.softwareBreakpoints === 'memory') {
      const { phys } = this.#physical(this.threads[0], addr, 'virtual');
      if (this.#patched.has(phys)) return true;
      const byte = this.#readPhys(phys, 1)[0];
      this.#m.memory.write(phys, Uint8Array.of(0xcc));
      this.#patched.set(phys, { byte, virt: addr });
      return true;
    }
    const request = { type, addr, kind };
    if (this.#slots.some((s) => s && s.request.type === type && s.request.addr === addr && s.request.kind === kind))
      return true;
    const pieces = type <= 1 ? [{ addr, len: 1 as const }] : alignedPieces(addr, kind);
    if (kind < 1 || (type >= 2 && kind > 32)) throw new GdbTargetError(EINVAL, `a length of ${kind}`);
    const free = this.#slots.flatMap((s, i) => (s === undefined ? [i] : []));
    if (pieces.length > free.length)
      throw new GdbTargetError(ENOSPC, `needs ${pieces.length} debug registers, ${free.length} are free`);
    pieces.forEach((p, k) => {
      this.#slots[free[k]] = { request, addr: p.addr, len: p.len, rw: type <= 1 ? 0 : type === 2 ? 1 : 3 };
    });
    return true;
  }

  removeBreakpoint(type: BreakpointType, addr: bigint, kind: number): boolean {
    if (type === 3) return false;
    if (type === 0 && this.softwareBreakpoints === 'memory') {
      for (const [phys, p] of this.#patched)
        if (p.virt === addr) {
          this.#m.memory.write(phys, Uint8Array.of(p.byte));
          this.#patched.delete(phys);
        }
      return true;
    }
    this.#slots.forEach((s, i) => {
      if (s && s.request.type === type && s.request.addr === addr && s.request.kind === kind)
        this.#slots[i] = undefined;
    });
    return true;
  }

  /** Arms each vCPU's debug state: the breakpoints for all, single-step for `step`. */
  #arm(step: number | undefined): void {
    const debugreg = [0n, 0n, 0n, 0n, 0n, 0n, 0n, 0n];
    let dr7 = 0n;
    this.#slots.forEach((s, i) => {
      if (s === undefined) return;
      debugreg[i] = s.addr;
      dr7 |= (2n << BigInt(2 * i)) | (BigInt(s.rw) << BigInt(16 + 4 * i)) | (DR7_LEN[s.len] << BigInt(18 + 4 * i));
    });
    if (dr7 !== 0n) dr7 |= 0x400n; // bit 10 reads as 1
    debugreg[7] = dr7;
    this.#m.runs.forEach((run, i) => {
      let control = 0;
      if (dr7 !== 0n) control |= K.KVM_GUESTDBG_ENABLE | K.KVM_GUESTDBG_USE_HW_BP;
      if (this.#patched.size > 0) control |= K.KVM_GUESTDBG_ENABLE | K.KVM_GUESTDBG_USE_SW_BP;
      if (step === i + 1) control |= K.KVM_GUESTDBG_ENABLE | K.KVM_GUESTDBG_SINGLESTEP;
      const blockIrq = step === i + 1 && this.#blockIrq ? K.KVM_GUESTDBG_BLOCKIRQ : 0;
      try {
        run.vcpu.setGuestDebug({ control: control | blockIrq, arch: { debugreg } });
      } catch (e) {
        // Older kernels refuse KVM_GUESTDBG_BLOCKIRQ: step without it (an interrupt may then
        // stop the step in its handler).
        if (blockIrq === 0 || !(e instanceof KvmError) || e.code !== 'EINVAL') throw e;
        this.#blockIrq = false;
        run.vcpu.setGuestDebug({ control, arch: { debugreg } });
      }
    });
  }

  resume(step: number | undefined): Promise<StopReason | TargetExited> {
    if (this.#exited) return Promise.resolve({ exited: true, code: 0 });
    if (step !== undefined) this.#run(step);
    this.#arm(step);
    const stopped = new Promise<StopReason | TargetExited>((resolve) => {
      this.#pending = { resolve, thread: step ?? 1 };
    });
    for (const r of this.#m.runs) r.resume();
    return stopped.then(async (r) => {
      if ('exited' in r) return r;
      await this.#pauseAll(); // all-stop: the others stop too
      return r;
    });
  }

  #onDebug(thread: number, exit: DebugExit): void {
    const p = this.#pending;
    if (p === undefined) return; // a late exit after the stop: that vCPU stays parked
    this.#pending = undefined;
    const hit = this.#slots.findIndex((s, i) => s !== undefined && (exit.dr6 >> BigInt(i)) & 1n);
    const slot = hit >= 0 ? this.#slots[hit] : undefined;
    if (slot !== undefined && slot.rw !== 0) {
      const kind = slot.request.type === 2 ? 'watch' : 'awatch';
      p.resolve({ thread, signal: 5, watch: { kind, addr: slot.request.addr } });
    } else if (slot !== undefined) {
      p.resolve({ thread, signal: 5, breakpoint: slot.request.type === 0 ? 'sw' : 'hw' });
    } else if (exit.exception === 3) {
      p.resolve({ thread, signal: 5, breakpoint: 'sw' });
    } else {
      // A single step (DR6.BS), or a trap of the guest's own: SIGTRAP either way.
      p.resolve({ thread, signal: 5 });
    }
  }

  interrupt(): void {
    const p = this.#pending;
    if (p === undefined) return;
    this.#pending = undefined;
    void this.#pauseAll().then(() => p.resolve({ thread: p.thread, signal: 2 }));
  }

  async detach(): Promise<void> {
    if (this.#detached) return;
    this.#detached = true;
    const p = this.#pending;
    this.#pending = undefined;
    try {
      if (!this.#exited) {
        await this.#pauseAll();
        for (const [phys, patch] of this.#patched) {
          try {
            this.#m.memory.write(phys, Uint8Array.of(patch.byte));
          } catch {
            /* the memory is gone with the machine */
          }
        }
        this.#patched.clear();
        this.#slots.fill(undefined);
        for (const run of this.#m.runs) {
          try {
            if (run.paused) run.vcpu.setGuestDebug({ control: 0 });
          } catch {
            /* the run has ended */
          }
        }
      }
    } finally {
      this.#subscriptions.unsubscribe();
      for (const run of this.#m.runs) run.resume();
      p?.resolve({ thread: p.thread, signal: 2 });
    }
  }

  async kill(): Promise<void> {
    await this.detach();
    await this.#m.stop().catch(() => undefined);
  }

  threadInfo(thread: number): string {
    const run = this.#m.runs[thread - 1];
    return `vCPU ${thread - 1}${run?.paused ? '' : ' (running)'}`;
  }

  monitor(command: string): string | undefined {
    if (command === 'help')
      return 'breakpoints    the debug-register slots in use and how software breakpoints are made\n';
    if (command === 'breakpoints') {
      const lines = this.#slots.map((s, i) =>
        s === undefined
          ? `dr${i}: free`
          : `dr${i}: ${['exec', 'write', '', 'access'][s.rw]} 0x${s.addr.toString(16)} len ${s.len} (Z${s.request.type})`,
      );
      lines.push(`software breakpoints: ${this.softwareBreakpoints}; int3s in memory: ${this.#patched.size}`);
      return `${lines.join('\n')}\n`;
    }
    return undefined;
  }
}
