/**
 * `npm run bench:sandbox`: what a sandbox call costs, side by side in one run (docs/sandbox.md):
 *
 * - the floor: a C `KVM_RUN` loop around the exit a call makes (bench/c/sandbox-exit.c: the
 *   sandbox's own memory image and sregs, a CPL-3 guest ringing the MMIO doorbell in a loop);
 * - the same loop through kvm-rx's `vcpu.run()` on this thread;
 * - `await sandbox.call('nop')`: the empty call round trip (example guest, and the Duktape guest);
 * - `await sandbox.call('eval', '6*7')` and a recursive fib(25) in the Duktape guest;
 * - creating a sandbox (new VM, load, boot to the ready point) for both guests.
 *
 * Rounds alternate the cases; medians over the rounds. The guests are built (or taken from the
 * cache) by scripts/sandbox-guest.sh.
 *
 *   npm run bench:sandbox                 # ROUNDS=5 EXITS=5000 CALLS=2000 by default
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { kvm_sregs } from '../src/abi/layouts';
import { structBytes } from '../src/abi/codec';
import { GuestMemory } from '../src/wrappers/guest-memory';
import { Kvm } from '../src/wrappers/kvm';
import { Sandbox } from '../src/vmm/sandbox/index';
import { SANDBOX_LAYOUT as L } from '../src/vmm/sandbox/abi';
import { sandboxRegs, sandboxSregs, writeSandboxSystem } from '../src/vmm/sandbox/layout';
import { hostVirtualization } from '../src/vmm/host';
import { median } from './stats';

const ROUNDS = Number(process.env.ROUNDS ?? 5);
const EXITS = Number(process.env.EXITS ?? 5000);
const CALLS = Number(process.env.CALLS ?? 2000);
const MEM = 16 << 20;
const root = join(__dirname, '..');

// 1: mov %eax, (0x40000000) ; inc %eax ; jmp 1b   (CPL 3, the doorbell is MMIO)
const LOOP = Uint8Array.of(0x89, 0x04, 0x25, 0x00, 0x00, 0x00, 0x40, 0xff, 0xc0, 0xeb, 0xf5);

function guest(name: 'hello' | 'duktape'): Uint8Array {
  const path = execFileSync('bash', [join(root, 'scripts/sandbox-guest.sh'), name], { encoding: 'utf8' })
    .trim()
    .split('\n')
    .pop()!;
  return readFileSync(path);
}

const dir = mkdtempSync(join(tmpdir(), 'kvm-rx-bench-sandbox-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

function buildC(): string {
  const bin = join(dir, 'sandbox-exit');
  const r = spawnSync('gcc', ['-O2', '-Wall', '-o', bin, join(__dirname, 'c', 'sandbox-exit.c')], { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`gcc failed: ${r.error?.message ?? r.stderr}`);
  return bin;
}

/** The doorbell loop's machine, for C (files) and for kvm-rx (a vCPU on this thread). */
function loopMachine(kvm: Kvm) {
  const memory = GuestMemory.anonymous(MEM);
  const vm = kvm.createVm();
  vm.setTssAddress(0xfffb_d000);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory });
  const vcpu = vm.createVcpu(0);
  writeSandboxSystem(memory.bytes, MEM);
  memory.bytes.set(LOOP, L.imageBase);
  const sregs = sandboxSregs(vcpu.getSregs());
  vcpu.setSregs(sregs);
  vcpu.setRegs(sandboxRegs(L.imageBase, MEM));
  return { memory, vm, vcpu, sregs };
}

function perExitC(bin: string, image: string, sregs: string): number {
  const r = spawnSync(bin, [image, sregs, String(MEM), String(EXITS)], { encoding: 'utf8', timeout: 120_000 });
  if (r.error || r.status !== 0) throw new Error(`sandbox-exit failed: ${r.error?.message ?? r.stderr}`);
  const o = JSON.parse(r.stdout) as { ns: number; exits: number };
  return o.ns / o.exits / 1000;
}

function perExitTs(kvm: Kvm): number {
  const m = loopMachine(kvm);
  try {
    for (let i = 0; i < 100; i++) m.vcpu.run();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < EXITS; i++) {
      const e = m.vcpu.run();
      if (e.kind !== 'MmioWrite' || e.addr !== BigInt(L.doorbell)) throw new Error(`unexpected exit ${e.kind}`);
    }
    return Number(process.hrtime.bigint() - t0) / EXITS / 1000;
  } finally {
    m.vm.close();
    m.memory.close();
  }
}

async function perCall(s: Sandbox, n: number, name: string, ...args: string[]): Promise<number> {
  for (let i = 0; i < 20; i++) await s.call(name, ...args);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await s.call(name, ...args);
  return Number(process.hrtime.bigint() - t0) / n / 1000;
}

async function createMs(image: Uint8Array, kvm: Kvm, n: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) (await Sandbox.create(image, { kvm, memSize: 64 << 20 })).close();
  return Number(process.hrtime.bigint() - t0) / n / 1e6;
}

async function main(): Promise<void> {
  const hello = guest('hello');
  const duktape = guest('duktape');
  const bin = buildC();
  const kvm = new Kvm();
  // The C loop's inputs: the same memory image and sregs the kvm-rx loop runs.
  {
    const m = loopMachine(kvm);
    writeFileSync(join(dir, 'mem.img'), m.memory.bytes.subarray(0, L.imageBase + 0x1000));
    writeFileSync(join(dir, 'sregs.bin'), structBytes(kvm_sregs, m.sregs));
    m.vm.close();
    m.memory.close();
  }
  const image = join(dir, 'mem.img');
  const sregsFile = join(dir, 'sregs.bin');
  const hs = await Sandbox.create(hello, { kvm, memSize: MEM });
  const ds = await Sandbox.create(duktape, { kvm });
  await ds.call('eval', 'function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }');

  const rows: Record<string, number[]> = {
    'C KVM_RUN loop, doorbell exit from CPL 3 (µs/exit)': [],
    'kvm-rx vcpu.run() loop, same exit (µs/exit)': [],
    "await sandbox.call('nop'), example guest (µs)": [],
    "await sandbox.call('nop'), Duktape guest (µs)": [],
    "await sandbox.call('eval', '6*7'), Duktape (µs)": [],
    "await sandbox.call('eval', 'fib(25)'), Duktape (ms)": [],
    'Sandbox.create(), example guest, 64 MiB (ms)': [],
    'Sandbox.create(), Duktape guest, 64 MiB (ms)': [],
  };
  const keys = Object.keys(rows);
  for (let r = 0; r < ROUNDS; r++) {
    rows[keys[0]].push(perExitC(bin, image, sregsFile));
    rows[keys[1]].push(perExitTs(kvm));
    rows[keys[2]].push(await perCall(hs, CALLS, 'nop'));
    rows[keys[3]].push(await perCall(ds, CALLS, 'nop'));
    rows[keys[4]].push(await perCall(ds, CALLS, 'eval', '6*7'));
    rows[keys[5]].push((await perCall(ds, 5, 'eval', 'fib(25)')) / 1000);
    rows[keys[6]].push(await createMs(hello, kvm, 10));
    rows[keys[7]].push(await createMs(duktape, kvm, 5));
    process.stderr.write(`round ${r + 1}/${ROUNDS} done\n`);
  }
  hs.close();
  ds.close();
  kvm.close();

  const floor = median(rows[keys[0]]);
  const host = `${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} CPUs, ${hostVirtualization()}`;
  console.log(`bench:sandbox  ${new Date().toISOString()}  host: ${host}  node ${process.version}`);
  console.log(`rounds ${ROUNDS}, ${EXITS} exits / ${CALLS} calls per round; medians (min–max over rounds)\n`);
  for (const k of keys) {
    const xs = rows[k];
    const m = median(xs);
    const ratio = k.includes('(µs') && k !== keys[0] && !k.includes('eval') ? `  ${(m / floor).toFixed(2)}× C` : '';
    console.log(
      `${k.padEnd(56)} ${m.toFixed(2).padStart(9)}  (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)})${ratio}`,
    );
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
