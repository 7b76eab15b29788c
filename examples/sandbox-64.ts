/**
 * A 64-bit sandbox in a few lines: no bootloader, no Linux. The guest sums 1..n in long mode,
 * rings a doorbell (`out 0xf4`) every 256 iterations, stores the sum at guest-physical 0x200 and
 * says so with `out 0x10` before it halts.
 *
 * - `enterLongMode` sets up the GDT, the identity page tables and the vCPU's long-mode state.
 * - `fromIoEvent` counts the doorbells through an ioeventfd: the kernel takes them without a single
 *   vCPU exit, and the guest runs on.
 * - A handler pipeline (`onIoOut`, `untilHalt`, `failOnUnhandled`) takes the two exits that remain.
 *
 * Run it with `npm run example:sandbox` (after `npm install`).
 */
import {
  GuestMemory,
  IoEventAddress,
  Kvm,
  enterLongMode,
  failOnUnhandled,
  fromIoEvent,
  onIoOut,
  runInThread,
  untilHalt,
} from '../src/index';

/** Where the guest's code goes (above the long-mode tables at 0x500–0xefff) and its result. */
export const CODE_ADDR = 0x100000;
export const RESULT_ADDR = 0x200;

/** The guest for a given n (1 ≤ n < 2^31). */
export function sandboxGuest(n: number): Uint8Array {
  const imm32 = [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
  const code = [
    ...[0x48, 0xc7, 0xc1, ...imm32], //        mov  $n, %rcx
    ...[0x31, 0xc0], //                        xor  %eax, %eax
  ];
  const loop = code.length;
  code.push(
    ...[0x48, 0x01, 0xc8], //                  1: add %rcx, %rax
    ...[0x84, 0xc9], //                        test %cl, %cl
    ...[0x75, 0x02], //                        jnz  2f
    ...[0xe6, 0xf4], //                        out  %al, $0xf4      (the doorbell, every 256)
    ...[0x48, 0xff, 0xc9], //                  2: dec %rcx
  );
  code.push(0x75, (loop - (code.length + 2)) & 0xff); // jnz 1b
  code.push(
    ...[0x48, 0x89, 0x04, 0x25, RESULT_ADDR & 0xff, RESULT_ADDR >> 8, 0, 0], // mov %rax, RESULT_ADDR
    ...[0xe6, 0x10], //                        out  %al, $0x10      (result ready)
    0xf4, //                                   hlt
  );
  return Uint8Array.from(code);
}

export interface SandboxResult {
  /** What the guest stored. */
  sum: bigint;
  /** Doorbells counted through the ioeventfd. */
  doorbells: bigint;
  /** vCPU exits taken (the doorbells are not among them). */
  exits: number;
}

/** Runs the guest for `n` on this thread and returns what it computed and what it cost in exits. */
export async function runSandbox(n = 100_000): Promise<SandboxResult> {
  using mem = GuestMemory.anonymous(2 << 20);
  using kvm = new Kvm();
  using vm = kvm.createVm();
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory: mem });
  mem.bytes.set(sandboxGuest(n), CODE_ADDR);
  const vcpu = enterLongMode(vm.createVcpu(0), { rip: BigInt(CODE_ADDR), rsp: 0x80000n });

  let doorbells = 0n;
  const bell = fromIoEvent(vm, IoEventAddress.pio(0xf4)).subscribe((count) => (doorbells += count));
  let sum = -1n;
  const outcome = await runInThread(vcpu, (exits$) =>
    exits$.pipe(
      onIoOut(0x10, () => {
        sum = new DataView(vm.guestMemory.read(BigInt(RESULT_ADDR), 8).buffer).getBigUint64(0, true);
      }),
      untilHalt(),
      failOnUnhandled(),
    ),
  );
  // The last doorbells may still be on their way through the event loop.
  const expected = BigInt(Math.floor(n / 256));
  for (let i = 0; i < 100 && doorbells < expected; i++) await new Promise((r) => setTimeout(r, 5));
  bell.unsubscribe();
  return { sum, doorbells, exits: outcome.exits };
}

if (require.main === module) {
  const n = 100_000;
  runSandbox(n).then(
    (r) => {
      const expected = (BigInt(n) * BigInt(n + 1)) / 2n;
      process.stdout.write(
        `64-bit guest: sum(1..${n}) = ${r.sum} (${r.sum === expected ? 'correct' : `expected ${expected}`})\n` +
          `${r.doorbells} doorbells counted through an ioeventfd; vCPU exits: ${r.exits} (out 0x10, hlt)\n`,
      );
    },
    (e: unknown) => {
      process.stderr.write(`sandbox failed: ${(e as Error)?.stack ?? String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
