/**
 * kvm-ioctls' README example in TypeScript: a real-mode guest at 0x1000 that adds two registers,
 * prints the sum to the serial port, reads it back, writes and reads an MMIO address, stores to
 * guest RAM at 0x2000 and halts. The slot logs dirty pages: at the halt, the bitmap shows the page
 * the guest wrote (page 1 of the slot).
 *
 * Run it with `npm start`.
 */
import { extname, join } from 'node:path';
import {
  GuestMemory,
  KVM_MEM_LOG_DIRTY_PAGES,
  Kvm,
  VcpuRuntime,
  type VcpuExit,
  type VcpuFd,
  type VmFd,
} from '../src/index';

/** The guest: rax = 2 and rbx = 3 on entry. */
export const SEED_GUEST = Uint8Array.of(
  0xba,
  0xf8,
  0x03, //       mov $0x3f8, %dx
  0x00,
  0xd8, //             add %bl, %al
  0x04,
  0x30, //             add $'0', %al
  0xee, //                   out %al, (%dx)
  0xec, //                   in (%dx), %al
  0xc6,
  0x06,
  0x00,
  0x80,
  0x00, // movb $0, (0x8000)   -> MMIO write
  0x8a,
  0x16,
  0x00,
  0x80, // mov (0x8000), %dl       -> MMIO read
  0xc6,
  0x06,
  0x00,
  0x20,
  0x00, // movb $0, (0x2000)   -> dirties the slot's page 1
  0xf4, //                   hlt
);

export const GUEST_ADDR = 0x1000n;
export const MEM_SIZE = 0x4000;

export interface SeedResult {
  exits: VcpuExit['kind'][];
  output: string;
  dirtyPagesAtMmioWrite: number;
  /** The slot's dirty bitmap read at the halt. */
  dirtyBitmapAtHlt: bigint[];
  regs: { rax: bigint; rdx: bigint };
}

/** vCPU 0 in real mode with CS base 0, at the guest's first instruction, with rax 2 and rbx 3. */
export function seedVcpu(vm: VmFd): VcpuFd {
  const vcpu = vm.createVcpu(0);
  const sregs = vcpu.getSregs();
  sregs.cs.base = 0n;
  sregs.cs.selector = 0;
  vcpu.setSregs(sregs);
  vcpu.setRegs({ ...vcpu.getRegs(), rip: GUEST_ADDR, rax: 2n, rbx: 3n, rflags: 2n });
  return vcpu;
}

function popcount(x: bigint): number {
  let n = 0;
  for (; x > 0n; x >>= 1n) n += Number(x & 1n);
  return n;
}

/** Runs the guest and returns what happened; `answerIn`/`answerMmio` are what the guest reads. */
export function runSeed(answerIn = 0x42, answerMmio = 0x77, log: (s: string) => void = () => undefined): SeedResult {
  // Disposed in reverse order: the VM (and its vCPU) first, then the memory it used.
  using mem = GuestMemory.anonymous(MEM_SIZE, { shared: true, noreserve: true });
  using kvm = new Kvm();
  using vm = kvm.createVm();
  {
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: GUEST_ADDR, memory: mem, flags: KVM_MEM_LOG_DIRTY_PAGES });
    mem.bytes.set(SEED_GUEST);

    const vcpu = seedVcpu(vm);

    const result: SeedResult = {
      exits: [],
      output: '',
      dirtyPagesAtMmioWrite: -1,
      dirtyBitmapAtHlt: [],
      regs: { rax: 0n, rdx: 0n },
    };
    for (;;) {
      const exit = vcpu.run();
      result.exits.push(exit.kind);
      switch (exit.kind) {
        case 'IoOut': {
          const text = Buffer.from(exit.data).toString('latin1');
          result.output += text;
          log(`IoOut  port 0x${exit.port.toString(16)} data ${JSON.stringify(text)}`);
          break;
        }
        case 'IoIn':
          exit.data[0] = answerIn;
          log(`IoIn   port 0x${exit.port.toString(16)} answered 0x${answerIn.toString(16)}`);
          break;
        case 'MmioWrite': {
          const bitmap = vm.getDirtyLog(0, MEM_SIZE);
          result.dirtyPagesAtMmioWrite = bitmap.reduce((n, w) => n + popcount(w), 0);
          log(
            `MmioWrite addr 0x${exit.addr.toString(16)} data [${[...exit.data].join(', ')}]; dirty pages: ${result.dirtyPagesAtMmioWrite}`,
          );
          break;
        }
        case 'MmioRead':
          exit.data.fill(0);
          exit.data[0] = answerMmio;
          log(`MmioRead  addr 0x${exit.addr.toString(16)} answered 0x${answerMmio.toString(16)}`);
          break;
        case 'Hlt': {
          const regs = vcpu.getRegs();
          result.regs = { rax: regs.rax, rdx: regs.rdx };
          result.dirtyBitmapAtHlt = [...vm.getDirtyLog(0, MEM_SIZE)];
          log(
            `Hlt    rax=0x${regs.rax.toString(16)} rdx=0x${regs.rdx.toString(16)}; dirty bitmap ${result.dirtyBitmapAtHlt.map((w) => '0b' + w.toString(2)).join(' ')}`,
          );
          return result;
        }
        default:
          throw new Error(`unexpected exit ${exit.kind}`);
      }
    }
  }
}

/** The same guest through the worker runtime: its devices run in the vCPU's own thread. */
export async function runSeedOnRuntime(
  log: (s: string) => void = () => undefined,
): Promise<{ rax: bigint; rdx: bigint; exits: number }> {
  const runtime = new VcpuRuntime({ maxVcpus: 1 });
  using mem = GuestMemory.anonymous(MEM_SIZE);
  using kvm = new Kvm();
  using vm = kvm.createVm();
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: GUEST_ADDR, memory: mem });
  mem.bytes.set(SEED_GUEST);
  const vcpu = seedVcpu(vm);
  try {
    const run = runtime.start(vcpu, { pipeline: join(__dirname, `seed-devices${extname(__filename)}`) });
    run.events$.subscribe(({ data }) => log(String(data)));
    const outcome = await run.done;
    const regs = vcpu.getRegs();
    log(
      `${outcome.lastExit}    rax=0x${regs.rax.toString(16)} rdx=0x${regs.rdx.toString(16)}; ${outcome.exits} exits, run ${outcome.reason}`,
    );
    return { rax: regs.rax, rdx: regs.rdx, exits: outcome.exits };
  } finally {
    await runtime.close();
  }
}

if (require.main === module) {
  console.log('kvm-ioctls style: vcpu.run() in a loop on this thread');
  const r = runSeed(0x42, 0x77, (s) => console.log('  ' + s));
  console.log(`  exits: ${r.exits.join(' -> ')}`);
  console.log('kvm-rx runtime: the vCPU in a worker thread, devices as an RxJS pipeline there');
  runSeedOnRuntime((s) => console.log('  ' + s)).catch((e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  });
}
