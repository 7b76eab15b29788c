/**
 * The GDB remote serial protocol stub: `attachGdb(machine, { listen })` and its parts (the packet
 * codec, the session state machine over an abstract target, the x86-64 registers and page walk,
 * the target of kvm-rx machines).
 *
 * @module
 */
export { attachGdb, parseGdbListen } from './server';
export type { AttachGdbOptions, GdbListen, GdbServer } from './server';
export { GdbSession, stopReply, MAX_READ } from './session';
export type { GdbSessionOptions, GdbTransport, SessionEnd } from './session';
export { GdbTargetError } from './target';
export type { AddressSpace, BreakpointType, GdbTarget, StopReason, TargetExited } from './target';
export { KvmGdbTarget, GDB_MACHINE, alignedPieces } from './kvm-target';
export type { Debuggable, GdbMachine, KvmGdbTargetOptions, SoftwareBreakpoints } from './kvm-target';
export { translate } from './paging';
export type { PagingRegisters, Translation } from './paging';
export { X86_64_REGISTERS, X86_64_TARGET_XML, X86_64_G_BYTES } from './x86-64';
export {
  PacketDecoder,
  framePacket,
  checksum,
  escapeBinary,
  unescapeBinary,
  compressRunLength,
  expandRunLength,
  MAX_PACKET,
} from './packet';
export type { DecodedEvent } from './packet';
