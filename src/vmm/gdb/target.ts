/**
 * What the GDB stub debugs: {@link GdbTarget}, an abstract all-stop target (threads, registers as
 * the target description lays them out, memory by virtual or physical address, breakpoints,
 * resume and interrupt). `KvmGdbTarget` (kvm-target.ts) is the one for kvm-rx machines; the
 * specs drive the stub with a mock one.
 *
 * @module
 */

/** gdb's `Z`/`z` types: 0 software breakpoint, 1 hardware breakpoint, 2 write, 3 read, 4 access watchpoint. */
export type BreakpointType = 0 | 1 | 2 | 3 | 4;

/** Why the target stopped, as the stop reply tells gdb. */
export interface StopReason {
  /** The gdb thread id (1-based) that stopped. */
  thread: number;
  /** The signal gdb sees: 5 (SIGTRAP) for a breakpoint, a step or the first stop, 2 (SIGINT) for an interrupt. */
  signal: number;
  /** A breakpoint hit, for the `swbreak`/`hwbreak` stop reply fields. */
  breakpoint?: 'sw' | 'hw';
  /** A watchpoint hit: its kind and the data address. */
  watch?: { kind: 'watch' | 'rwatch' | 'awatch'; addr: bigint };
}

/** The target ended while running (the guest reset the machine, the VM was stopped). */
export interface TargetExited {
  exited: true;
  /** The exit status gdb reports (`W<code>`). */
  code: number;
}

/** An error with the errno the stub sends back (`Exx`). */
export class GdbTargetError extends Error {
  override readonly name = 'GdbTargetError';
  /** The errno in the `Exx` reply (EFAULT 14 for memory that cannot be reached, EINVAL 22, ENOSPC 28, …). */
  readonly errno: number;
  constructor(errno: number, message: string) {
    super(message);
    this.errno = errno;
  }
}

export const EFAULT = 14;
export const EINVAL = 22;
export const ENOSPC = 28;

/** Where a memory access goes: guest-virtual (through the thread's page tables) or guest-physical. */
export type AddressSpace = 'virtual' | 'physical';

/**
 * An all-stop debug target. The stub calls these only while the target is stopped, except
 * {@link interrupt} (while running) and {@link detach} (any time). Methods may return a value or a
 * Promise of it; throwing a {@link GdbTargetError} gives gdb that errno, any other error `E01`.
 */
export interface GdbTarget {
  /** The thread ids (1-based: thread n is vCPU n - 1). */
  readonly threads: readonly number[];
  /** The target description XML (`qXfer:features:read:target.xml`). */
  readonly targetXml: string;
  /** Stops everything (when gdb attaches); resolves with the reason to report. */
  halt(): Promise<StopReason | TargetExited>;
  /** Every register of `thread`, in the order and sizes of {@link targetXml}, as gdb's `g` packet. */
  readRegisters(thread: number): Uint8Array | Promise<Uint8Array>;
  writeRegisters(thread: number, bytes: Uint8Array): void | Promise<void>;
  /** Register `n` of `thread` (its bytes), or `undefined` for a register that does not exist. */
  readRegister(thread: number, n: number): Uint8Array | undefined | Promise<Uint8Array | undefined>;
  writeRegister(thread: number, n: number, bytes: Uint8Array): void | Promise<void>;
  /** Guest memory; throws {@link GdbTargetError} EFAULT for an address that is not mapped or not backed. */
  readMemory(thread: number, addr: bigint, length: number, space: AddressSpace): Uint8Array | Promise<Uint8Array>;
  writeMemory(thread: number, addr: bigint, data: Uint8Array, space: AddressSpace): void | Promise<void>;
  /** Inserts a breakpoint or watchpoint; `false` when this type is not supported at all (gdb then falls back). */
  insertBreakpoint(type: BreakpointType, addr: bigint, kind: number): boolean | Promise<boolean>;
  removeBreakpoint(type: BreakpointType, addr: bigint, kind: number): boolean | Promise<boolean>;
  /**
   * Lets the target run: `step` single-steps that thread (the others stay stopped or run, as the
   * target can); otherwise every thread continues. Resolves when it stops again.
   */
  resume(step: number | undefined): Promise<StopReason | TargetExited>;
  /** Asks a running target to stop (gdb's Ctrl-C): the pending {@link resume} resolves with signal 2. */
  interrupt(): void;
  /** Removes every breakpoint and lets the target run on: gdb left. Never rejects. */
  detach(): Promise<void>;
  /** gdb's `kill`: ends the target. Never rejects. */
  kill(): Promise<void>;
  /** A `monitor` command's output, or `undefined` for a command the target does not know. */
  monitor?(command: string): string | undefined | Promise<string | undefined>;
  /** A short description of a thread (`info threads`). */
  threadInfo?(thread: number): string;
}
