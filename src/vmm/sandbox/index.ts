/**
 * Sandboxes: guests built with the guest SDK (`guest/sdk/`), called function by function
 * (docs/sandbox.md).
 *
 * @module
 */
export { Sandbox } from './sandbox';
export type { SandboxOptions, CallOptions, HostFunction } from './sandbox';
export { SandboxError, GuestError } from './errors';
export type { SandboxErrorCode, SandboxFault } from './errors';
export type { SandboxValue, JsonValue } from './values';
export { SANDBOX_ABI_VERSION, SANDBOX_LAYOUT, SANDBOX_FAULT_PORT, SandboxExit, ValueTag } from './abi';
