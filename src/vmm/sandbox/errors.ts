/**
 * The errors of a sandbox: {@link SandboxError} (with a code) and {@link GuestError} (the guest's
 * function returned an error).
 *
 * @module
 */

/** Error codes of {@link SandboxError}. */
export type SandboxErrorCode =
  /** The image is not a sandbox guest this host can load (ELF, layout, size): nothing was run. */
  | 'ERR_SANDBOX_BAD_IMAGE'
  /** The guest stopped before its ready point (or made a call-time exit there). */
  | 'ERR_SANDBOX_BOOT'
  /** `call(name)` for a name the guest does not export. */
  | 'ERR_SANDBOX_NO_SUCH_FUNCTION'
  /** The guest's function returned an error ({@link GuestError}). */
  | 'ERR_SANDBOX_GUEST_ERROR'
  /** The guest gave up (`kvmrx_abort`). */
  | 'ERR_SANDBOX_GUEST_ABORT'
  /** A CPU exception in the guest (`fault` has the vector, RIP, CR2…). */
  | 'ERR_SANDBOX_FAULT'
  /** The vCPU shut down (a triple fault). */
  | 'ERR_SANDBOX_TRIPLE_FAULT'
  /** The call ran past its time limit; the vCPU was kicked out of the guest. */
  | 'ERR_SANDBOX_TIMEOUT'
  /** The call's `AbortSignal` aborted. */
  | 'ERR_SANDBOX_ABORTED'
  /** An exit the ABI does not have: another port, a port read, MMIO, an unknown exit code, … */
  | 'ERR_SANDBOX_BAD_EXIT'
  /** A call-area field out of range (offset, length, count, status). */
  | 'ERR_SANDBOX_BAD_CALL_AREA'
  /** A malformed value in the call area (tag, length, UTF-8, JSON). */
  | 'ERR_SANDBOX_BAD_VALUE'
  /** A host-function id the sandbox did not give the guest. */
  | 'ERR_SANDBOX_BAD_HOST_FUNCTION'
  /** An earlier error left the sandbox unusable (`cause` is that error). */
  | 'ERR_SANDBOX_POISONED'
  /** A call while another one is running on this sandbox. */
  | 'ERR_SANDBOX_BUSY'
  /** The sandbox is closed. */
  | 'ERR_SANDBOX_CLOSED';

/** Where a guest faulted: what the sandbox's ring-0 handler recorded. */
export interface SandboxFault {
  /** The exception vector (0–31). */
  vector: number;
  /** Its name, e.g. `'#PF page fault'`. */
  name: string;
  /** The error code the CPU pushed (0 for vectors without one). */
  errorCode: bigint;
  rip: bigint;
  cs: number;
  rflags: bigint;
  rsp: bigint;
  /** The faulting address of a page fault (CR2). */
  cr2: bigint;
}

/**
 * A sandbox call or boot that failed. `code` says why; `poisoned` says whether the sandbox is
 * unusable afterwards (its guest was stopped in the middle of something or broke the ABI): every
 * later call then rejects with `ERR_SANDBOX_POISONED`, this error as its `cause`.
 *
 * @example
 * ```ts
 * // @ts-setup: declare const sandbox: Sandbox;
 * try {
 *   await sandbox.call('eval', 'for (;;) {}');
 * } catch (e) {
 *   if (e instanceof SandboxError && e.code === 'ERR_SANDBOX_TIMEOUT') console.log('too slow');
 * }
 * ```
 */
export class SandboxError extends Error {
  override name = 'SandboxError';
  readonly code: SandboxErrorCode;
  /** Whether the sandbox can serve no more calls. */
  readonly poisoned: boolean;
  /** For `ERR_SANDBOX_FAULT`. */
  readonly fault?: SandboxFault;
  constructor(
    code: SandboxErrorCode,
    message: string,
    options: { poisoned?: boolean; fault?: SandboxFault; cause?: unknown } = {},
  ) {
    super(message, options.cause !== undefined ? { cause: options.cause } : undefined);
    this.code = code;
    this.poisoned = options.poisoned ?? false;
    if (options.fault !== undefined) this.fault = options.fault;
  }
}

/**
 * The guest's function returned an error: a C export's `kvmrx_ret_error(r, name, message)`, a
 * JavaScript exception in the Duktape guest. `message` is the guest's message, `guestName` its
 * name (`'TypeError'`, …). The sandbox stays usable.
 *
 * @example
 * ```ts
 * // @ts-setup: declare const sandbox: Sandbox;
 * await sandbox.call('eval', 'null.x').catch((e: GuestError) => e.guestName); // 'TypeError'
 * ```
 */
export class GuestError extends SandboxError {
  override name = 'GuestError';
  /** The name the guest gave its error (`'Error'`, `'TypeError'`, …). */
  readonly guestName: string;
  constructor(guestName: string, message: string) {
    super('ERR_SANDBOX_GUEST_ERROR', message);
    this.guestName = guestName;
  }
}
