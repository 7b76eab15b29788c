/**
 * A hostile-guest fuzz of the sandbox boundary on real KVM: raw guests (no SDK) that write random
 * bytes over the call area's header and OUT, ring the doorbell with random codes, touch wild ports
 * and addresses, or run random code. The host must never crash or hang: every boot and call ends
 * with a SandboxError of a known code (or a result), and a healthy sandbox next to them is
 * unaffected.
 */
import fc from 'fast-check';
import { readdirSync } from 'node:fs';
import { Sandbox, SandboxError } from '../../src/vmm/sandbox/index';
import { SANDBOX_LAYOUT as L } from '../../src/vmm/sandbox/abi';
import { asm, describeSandbox, rawElf } from '../helpers/sandbox-guest';

const CODES = new Set([
  'ERR_SANDBOX_BOOT',
  'ERR_SANDBOX_GUEST_ERROR',
  'ERR_SANDBOX_GUEST_ABORT',
  'ERR_SANDBOX_FAULT',
  'ERR_SANDBOX_TRIPLE_FAULT',
  'ERR_SANDBOX_TIMEOUT',
  'ERR_SANDBOX_BAD_EXIT',
  'ERR_SANDBOX_BAD_CALL_AREA',
  'ERR_SANDBOX_BAD_VALUE',
  'ERR_SANDBOX_BAD_HOST_FUNCTION',
  'ERR_SANDBOX_NO_SUCH_FUNCTION',
  'ERR_SANDBOX_POISONED',
]);

type Step =
  | { kind: 'doorbell'; code: number; header: Uint8Array; out: Uint8Array }
  | { kind: 'port'; port: number; read: boolean }
  | { kind: 'mmio'; offset: number; read: boolean }
  | { kind: 'store'; addr: number }
  | { kind: 'code'; bytes: Uint8Array };

const step: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('doorbell' as const),
      code: fc.oneof(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 0, max: 0xffff_ffff })),
      header: fc.oneof(fc.uint8Array({ maxLength: 0x24 }), fc.uint8Array({ minLength: 0x24, maxLength: 0x24 })),
      out: fc.uint8Array({ maxLength: 96 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('port' as const),
      port: fc.integer({ min: 0, max: 0xffff }),
      read: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('mmio' as const),
      offset: fc.integer({ min: 0, max: 0x1f_fffc }),
      read: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('store' as const), addr: fc.integer({ min: 0, max: 0x7fff_ffff }) }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('code' as const), bytes: fc.uint8Array({ maxLength: 24 }) }) },
);

const CODE_BASE = 0x400078;

/** A well-formed READY (one export, 'f'), so that the steps after it run as calls. */
function readyStep(): Step {
  const header = new Uint8Array(0x24); // from 0x10: op, func, argc, in_len, status, out_len, out_off, hostfn, out_count
  const h = new DataView(header.buffer);
  h.setUint32(0x14, 16, true); // out_len
  h.setUint32(0x20, 1, true); // out_count
  const out = Uint8Array.of(5, 0, 0, 0, 1, 0, 0, 0, 0x66, 0, 0, 0, 0, 0, 0, 0);
  return { kind: 'doorbell', code: 1, header, out };
}

/** The guest: each step in turn (each exit resumes at the next step), then `jmp $`. */
function program(steps: Step[]): Uint8Array {
  const code: number[] = [];
  const data: Array<{ at: number; bytes: Uint8Array; fix: number }> = [];
  const copy = (bytes: Uint8Array, to: number) => {
    if (bytes.length === 0) return;
    code.push(...asm.movEsi(0)); // patched below with the data address
    data.push({ at: code.length - 4, bytes, fix: 0 });
    code.push(...asm.movEdi(to), ...asm.movEcx(bytes.length), ...asm.repMovsb());
  };
  for (const s of steps) {
    if (s.kind === 'doorbell') {
      copy(s.header, L.area + 0x10);
      copy(s.out, L.out);
      code.push(...asm.movEax(s.code), ...asm.storeEax(L.doorbell));
    } else if (s.kind === 'port') code.push(...(s.read ? asm.inDx(s.port) : asm.outDx(s.port)));
    else if (s.kind === 'mmio')
      code.push(...(s.read ? asm.loadEax(L.doorbell + s.offset) : asm.storeEax(L.doorbell + s.offset)));
    else if (s.kind === 'store') code.push(...asm.storeAl(s.addr));
    else code.push(...s.bytes, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90); // let a cut instruction end
  }
  code.push(...asm.spin());
  const bytes = [...code];
  for (const d of data) {
    const addr = CODE_BASE + bytes.length;
    bytes[d.at] = addr & 0xff;
    bytes[d.at + 1] = (addr >>> 8) & 0xff;
    bytes[d.at + 2] = (addr >>> 16) & 0xff;
    bytes[d.at + 3] = (addr >>> 24) & 0xff;
    bytes.push(...d.bytes);
  }
  return rawElf(Uint8Array.from(bytes));
}

function expectSandboxError(e: unknown): void {
  if (!(e instanceof SandboxError) || !CODES.has(e.code)) throw e;
}

const openFds = () => readdirSync('/proc/self/fd').length;

describeSandbox('Sandbox: hostile guests (fuzz)', 'hello', (image) => {
  it('never crashes or hangs the host; a healthy sandbox next to them is unaffected', async () => {
    await using healthy = await Sandbox.create(image, { memSize: 16 << 20 });
    await healthy.call('nop');
    const fds = openFds();
    const seen = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(fc.boolean(), fc.array(step, { minLength: 1, maxLength: 6 }), async (ready, hostile) => {
        const steps = ready ? [readyStep(), ...hostile] : hostile;
        let s: Sandbox | undefined;
        try {
          s = await Sandbox.create(program(steps), { memSize: 8 << 20, bootTimeLimitMs: 100, timeLimitMs: 50 });
          seen.set('booted', (seen.get('booted') ?? 0) + 1);
          for (let i = 0; i < 3; i++) {
            const name = s.exports[i % Math.max(1, s.exports.length)] ?? 'none';
            try {
              await s.call(name, i, 'x', Uint8Array.of(i));
              seen.set('returned', (seen.get('returned') ?? 0) + 1);
            } catch (e) {
              expectSandboxError(e);
              seen.set((e as SandboxError).code, (seen.get((e as SandboxError).code) ?? 0) + 1);
            }
          }
        } catch (e) {
          expectSandboxError(e);
          seen.set((e as SandboxError).code, (seen.get((e as SandboxError).code) ?? 0) + 1);
        } finally {
          s?.close();
        }
        await expect(healthy.call('add', 1, 2)).resolves.toBe(3);
      }),
      {
        numRuns: Number(process.env.KVMRX_SANDBOX_FUZZ_RUNS ?? 150),
        seed: Number(process.env.KVMRX_FUZZ_SEED ?? 0x5eed),
      },
    );
    expect(openFds()).toBe(fds); // every VM, vCPU and memory closed
    // The fuzz reached the checks it is meant for (not only faults).
    console.log('sandbox fuzz outcomes:', Object.fromEntries(seen));
    for (const code of [
      'ERR_SANDBOX_FAULT',
      'ERR_SANDBOX_BAD_EXIT',
      'ERR_SANDBOX_BAD_CALL_AREA',
      'ERR_SANDBOX_BAD_VALUE',
    ])
      expect([code, (seen.get(code) ?? 0) > 0]).toEqual([code, true]);
  }, 240_000);
});
