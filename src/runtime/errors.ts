/**
 * Errors raised by the exit operators.
 *
 * @module
 */
import type { VcpuExit } from '../wrappers/vcpu-exit';
import { checkObject } from '../abi/validate';
import { KvmClosedError, KvmError, KvmRangeError, KvmTypeError } from '../abi/errors';

const hex = (v: number | bigint): string => `0x${v.toString(16)}`;

/** A one-line description of an exit: its kind and where it went (port, address, size, …). */
export function describeExit(exit: VcpuExit): string {
  checkObject('exit', exit);
  switch (exit.kind) {
    case 'IoIn':
    case 'IoOut':
      return `${exit.kind} exit: port ${hex(exit.port)}, size ${exit.size}${exit.count === 1 ? '' : `, count ${exit.count}`}`;
    case 'MmioRead':
    case 'MmioWrite':
      return `${exit.kind} exit: address ${hex(exit.addr)}, size ${exit.data.length}`;
    case 'Hypercall':
      return `Hypercall exit: nr ${hex(exit.nr)}`;
    case 'X86Rdmsr':
    case 'X86Wrmsr':
      return `${exit.kind} exit: msr ${hex(exit.index)}`;
    case 'Exception':
      return `Exception exit: vector ${exit.exception}, error code ${hex(exit.errorCode)}`;
    case 'Unsupported':
      return `Unsupported exit: reason ${exit.reason}`;
    default:
      return `${exit.kind} exit`;
  }
}

/**
 * An exit reached the end of a pipeline that required every exit to be handled
 * (see `failOnUnhandled`).
 *
 * @example
 * ```ts
 * exits$.pipe(onIoOut(0x3f8, (e) => process.stdout.write(e.data)), failOnUnhandled()).subscribe({
 *   error: (e) => { if (e instanceof UnhandledExitError) console.log(e.exit.kind, e.message); },
 * });
 * // IoIn unhandled IoIn exit: port 0x3fd, size 1
 * ```
 */
export class UnhandledExitError extends Error {
  /** Always `'ERR_KVM_UNHANDLED_EXIT'`. */
  readonly code = 'ERR_KVM_UNHANDLED_EXIT';
  /** The exit nobody handled. */
  readonly exit: VcpuExit;
  /** The vCPU's RIP at that exit, when a runner knew it (then the message ends with it too). */
  rip?: bigint;

  /**
   * @param exit - the exit nobody handled
   * @param detail - the description (default: {@link describeExit}; runners append the RIP)
   */
  constructor(exit: VcpuExit, detail: string = describeExit(exit)) {
    super(`unhandled ${detail}`);
    this.name = 'UnhandledExitError';
    this.exit = exit;
  }
}

/** An error as it crosses from a vCPU's worker thread to the main thread (structured-cloneable). */
export interface SerializedError {
  /** Which class to rebuild it as (see {@link reviveError}). */
  kind: ErrorKind;
  name: string;
  message: string;
  /** The stack, as it was in the thread that threw. */
  stack?: string;
  /** Its own enumerable properties of primitive type (`code`, `errno`, `syscall`, `request`, …). */
  props: Record<string, string | number | boolean | bigint>;
  /** For an `UnhandledExitError`: a copy of the exit (its data bytes copied out of kvm_run). */
  exit?: Record<string, unknown>;
}

type ErrorKind =
  | 'KvmError'
  | 'KvmClosedError'
  | 'KvmTypeError'
  | 'KvmRangeError'
  | 'UnhandledExitError'
  | 'TypeError'
  | 'RangeError'
  | 'SyntaxError'
  | 'ReferenceError'
  | 'Error';

// Most specific first: every class here is an Error, and KvmTypeError is a TypeError.
const CLASSES: Array<[ErrorKind, abstract new (...args: never[]) => Error]> = [
  ['KvmError', KvmError],
  ['KvmClosedError', KvmClosedError],
  ['KvmTypeError', KvmTypeError],
  ['KvmRangeError', KvmRangeError],
  ['UnhandledExitError', UnhandledExitError],
  ['TypeError', TypeError],
  ['RangeError', RangeError],
  ['SyntaxError', SyntaxError],
  ['ReferenceError', ReferenceError],
  ['Error', Error],
];

function copyExit(exit: VcpuExit): Record<string, unknown> {
  const copy: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(exit)) copy[k] = ArrayBuffer.isView(v) ? (v as Uint8Array).slice() : v;
  return copy;
}

/**
 * Turns what a worker caught into a structured-cloneable description that {@link reviveError}
 * rebuilds on the main thread as the same class, with the same `code`, `errno`, `syscall`,
 * `request` (and any other primitive own property) and the worker's stack.
 */
export function serializeError(e: unknown): SerializedError {
  if (!(e instanceof Error)) return { kind: 'Error', name: 'Error', message: String(e), props: {} };
  const kind = CLASSES.find(([, C]) => e instanceof C)?.[0] ?? 'Error';
  const props: SerializedError['props'] = {};
  for (const [k, v] of Object.entries(e)) {
    if (['string', 'number', 'boolean', 'bigint'].includes(typeof v)) props[k] = v as string;
  }
  const out: SerializedError = { kind, name: e.name, message: e.message, props };
  if (e.stack !== undefined) out.stack = e.stack;
  if (e instanceof UnhandledExitError) out.exit = copyExit(e.exit);
  return out;
}

/**
 * Rebuilds an error described by {@link serializeError}: `instanceof` the same class (`KvmError`,
 * `UnhandledExitError`, `TypeError`, …) and carrying its properties. The stack is the thrower's.
 *
 * @example
 * ```ts
 * const e = reviveError(serializeError(KvmError.fromCode('EEXIST', 'ioctl', 'KVM_CREATE_VCPU')));
 * // e instanceof KvmError, e.code === 'EEXIST', e.errno === -17, e.request === 'KVM_CREATE_VCPU'
 * ```
 */
export function reviveError(s: SerializedError): Error {
  const C = CLASSES.find(([k]) => k === s.kind)?.[1] ?? Error;
  const e = Object.create(C.prototype as object) as Error;
  const hidden = (value: unknown): PropertyDescriptor => ({
    value,
    writable: true,
    configurable: true,
    enumerable: false,
  });
  Object.defineProperty(e, 'message', hidden(s.message));
  Object.defineProperty(e, 'stack', hidden(s.stack ?? `${s.name}: ${s.message}`));
  for (const [k, v] of Object.entries(s.props))
    Object.defineProperty(e, k, { value: v, writable: true, configurable: true, enumerable: true });
  if (e.name !== s.name) Object.defineProperty(e, 'name', hidden(s.name));
  if (s.exit !== undefined) Object.defineProperty(e, 'exit', { value: s.exit, enumerable: true, configurable: true });
  return e;
}
