/**
 * The sandbox ABI, host side: the numbers of `guest/sdk/kvmrx.h` (docs/sandbox.md).
 * `spec/vmm/sandbox-abi.spec.ts` checks that the two agree.
 *
 * @module
 */

/** The ABI version a guest is built for (`KVMRX_ABI_VERSION`). */
export const SANDBOX_ABI_VERSION = 1;
/** `KVMRX_MAGIC` ("KVRX"): the host writes it at the start of the call area. */
export const SANDBOX_MAGIC = 0x5852564b;

/** Guest-physical addresses (identity-mapped) of a sandbox. */
export const SANDBOX_LAYOUT = {
  /** GDT: null, ring-0 code 0x08, ring-0 data 0x10, ring-3 data 0x18, ring-3 code 0x20, TSS 0x28. */
  gdt: 0x1000,
  /** IDT: 32 interrupt gates to the ring-0 stubs. */
  idt: 0x2000,
  /** The 64-bit TSS: RSP0 and IST1 (double fault). */
  tss: 0x3000,
  /** The fault record the ring-0 stubs write (supervisor page). */
  faultRecord: 0x4000,
  pml4: 0x5000,
  pdpt: 0x6000,
  pd: 0x7000,
  /** The page table of the first 2 MiB (4 KiB pages). */
  pt: 0x8000,
  /** The page directory of 1–2 GiB, which maps the doorbell. */
  doorbellPd: 0xe000,
  /** The ring-0 stubs (`RING0_CODE`). */
  ring0Code: 0x9000,
  /** Ring-0 stack: 0xa000–0xbfff (RSP0 = 0xc000). */
  ring0StackTop: 0xc000,
  /** Double-fault stack: 0xc000–0xcfff (IST1 = 0xd000). */
  istStackTop: 0xd000,
  /** `KVMRX_TLS`: the user page FS.base points at (qword 0 holds its own address). */
  tls: 0x10000,
  /** `KVMRX_AREA`: the call area's header page. */
  area: 0x200000,
  /** `KVMRX_IN`: call arguments (host → guest). */
  in: 0x201000,
  inSize: 0xff000,
  /** `KVMRX_OUT`: results, host-call data, output (guest → host; host-call answers too). */
  out: 0x300000,
  outSize: 0x100000,
  /** `KVMRX_IMAGE_BASE`: the lowest address a guest image may load at. */
  imageBase: 0x400000,
  /** `KVMRX_STACK_SIZE`: the top of guest RAM is the guest's stack. */
  stackSize: 0x200000,
  /** `KVMRX_DOORBELL`: a guest exits with a 4-byte write of a `KVMRX_EXIT_*` code here (MMIO: no RAM behind it). */
  doorbell: 0x4000_0000,
} as const;

/** The port of the ring-0 fault stubs (`out` at CPL 0). */
export const SANDBOX_FAULT_PORT = 0xe1;

/** `KVMRX_EXIT_*`: what the guest writes to the doorbell. */
export const SandboxExit = {
  ready: 1,
  return: 2,
  hostCall: 3,
  output: 4,
  abort: 5,
} as const;

export const SANDBOX_OP_CALL = 1;
export const SANDBOX_STATUS_OK = 0;
export const SANDBOX_STATUS_ERROR = 1;

/** `KVMRX_T_*`: value tags. */
export const ValueTag = {
  undefined: 0,
  null: 1,
  bool: 2,
  f64: 3,
  i64: 4,
  string: 5,
  bytes: 6,
  json: 7,
  error: 8,
} as const;

export const SANDBOX_MAX_ARGS = 64;
export const SANDBOX_MAX_HOST_FNS = 64;

/** Offsets of `struct kvmrx_area`'s fields. */
export const AREA = {
  magic: 0x00,
  abi: 0x04,
  memSize: 0x08,
  op: 0x10,
  func: 0x14,
  argc: 0x18,
  inLen: 0x1c,
  status: 0x20,
  outLen: 0x24,
  outOff: 0x28,
  hostFn: 0x2c,
  outCount: 0x30,
  nowMs: 0x38,
  hostFns: 0x800,
  hostFnsSize: 0x800,
} as const;
