/**
 * Human-readable exit descriptions and the error for an exit nobody handled.
 *
 * @module
 */
import type { VcpuExit } from '../wrappers/vcpu-exit';

/** `IoIn exit: port 0x3fd, size 1` and the like. */
export function describeExit(exit: VcpuExit): string {
  switch (exit.kind) {
    case 'IoIn':
    case 'IoOut':
      return `${exit.kind} exit: port 0x${exit.port.toString(16)}, size ${exit.size}${exit.count > 1 ? `, count ${exit.count}` : ''}`;
    case 'MmioRead':
    case 'MmioWrite':
      return `${exit.kind} exit: address 0x${exit.addr.toString(16)}, size ${exit.data.length}`;
    case 'X86Rdmsr':
    case 'X86Wrmsr':
      return `${exit.kind} exit: msr 0x${exit.index.toString(16)}`;
    case 'Hypercall':
      return `Hypercall exit: nr ${exit.nr}`;
    case 'Unsupported':
      return `Unsupported exit: reason ${exit.reason}`;
    case 'InternalError':
      return `InternalError exit: suberror ${exit.suberror}`;
    default:
      return `${exit.kind} exit`;
  }
}

/** An exit reached the end of every pipeline (code `ERR_KVM_UNHANDLED_EXIT`). */
export class UnhandledExitError extends Error {
  readonly code = 'ERR_KVM_UNHANDLED_EXIT';
  readonly exitKind: string;
  constructor(exit: VcpuExit, detail = describeExit(exit)) {
    super(`unhandled ${detail}`);
    this.name = 'UnhandledExitError';
    this.exitKind = exit.kind;
  }
}
