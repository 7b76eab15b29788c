/**
 * Errors raised by the exit operators.
 *
 * @module
 */
import type { VcpuExit } from '../wrappers/vcpu-exit';
import { checkObject } from '../abi/validate';

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
 * exits$.pipe(onIoOut(0x3f8, print), failOnUnhandled()).subscribe({
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
