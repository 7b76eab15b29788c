/**
 * `linux.snapshot()` and `restoreLinux()` on real KVM with a crafted 64-bit "kernel" that echoes
 * COM1 input plus one (it polls the line status register): a session snapshotted with input still
 * in the UART's FIFO goes on byte for byte in the restored VM; hostile machine states (valid
 * checksums, malformed contents) are refused or fail cleanly; 100 snapshot/restore cycles leak no
 * fd and no mapping; a prepared VM (`prepareLinuxRestore`) takes a restore alike.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { firstValueFrom, filter } from 'rxjs';
import { VcpuRuntime } from '../../src/runtime/pool';
import { bootLinux, restoreLinux, type LinuxVm } from '../../src/vmm/linux';
import { prepareLinuxRestore } from '../../src/vmm/linux-snapshot';
import { SnapshotError } from '../../src/vmm/errors';
import { readSnapshotFile, writeSnapshotFile } from '../../src/vmm/snapshot-file';
import { Kvm } from '../../src/wrappers/kvm';
import { buildElf } from '../vmm/images';
import { describeKvm } from '../helpers/kvm';

// 0x1000000:    mov $0x3fa,%dx; mov $1,%al; out %al,(%dx)         (FCR: the 16-byte FIFOs on)
//               mov $0x3f8,%dx; mov $'>',%al; out %al,(%dx)       (ready: input typed from now on is kept)
//            1: mov $0x3fd,%dx; in (%dx),%al; test $1,%al; jz 1b      (wait for a received byte)
//               mov $0x3f8,%dx; in (%dx),%al; inc %al; out %al,(%dx); jmp 1b
const ECHO = Uint8Array.of(
  0x66, 0xba, 0xfa, 0x03, 0xb0, 0x01, 0xee,
  0x66, 0xba, 0xf8, 0x03, 0xb0, 0x3e, 0xee,
  0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74, 0xf7,
  0x66, 0xba, 0xf8, 0x03, 0xec, 0xfe, 0xc0, 0xee, 0xeb, 0xed,
); // prettier-ignore
const kernel = () => buildElf({ entry: 0x1000000n, segments: [{ paddr: 0x1000000, data: ECHO, memsz: 0x1000 }] });
const plusOne = (s: string) => Buffer.from(Buffer.from(s, 'latin1').map((c) => c + 1)).toString('latin1');

/** Collects a VM's COM1 output; `until(n)` resolves once n bytes have come. */
function collect(vm: LinuxVm) {
  let text = '';
  vm.output$.subscribe((b) => (text += Buffer.from(b).toString('latin1')));
  return {
    get text() {
      return text;
    },
    until: (n: number) =>
      firstValueFrom(vm.output$.pipe(filter(() => text.length >= n))).then(
        () => text,
        () => text,
      ),
  };
}

const fds = () => readdirSync('/proc/self/fd').length;
const maps = () => readFileSync('/proc/self/maps', 'utf8').split('\n').length;
/** The mappings of this process whose line mentions `what` (a file, `kvm-vcpu`). */
const mapped = (what: string) =>
  readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes(what));

describeKvm('Linux VM snapshots (crafted kernel)', () => {
  jest.setTimeout(300_000); // bounds, not speed claims
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'kvmrx-linux-snap-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('a session snapshotted with input still in the FIFO goes on byte for byte after restore', async () => {
    const vm = bootLinux({ kernel: kernel(), memSize: 32 << 20, signal: AbortSignal.timeout(60_000) });
    const out = collect(vm);
    await out.until(1); // '>': the guest has turned its FIFOs on
    vm.send('abc');
    await out.until(4);
    expect(out.text).toBe('>bcd');
    // Typed, then paused at once: some of it may still wait in the UART's receive FIFO.
    vm.send('hello, snapshot');
    await vm.pause();
    const before = out.text;
    const path = join(dir, 'echo.snap');
    const header = await vm.snapshot(path); // stays paused: it was paused before
    expect(header).toMatchObject({ kind: 'full', machine: 'linux' });
    await vm.stop();
    expect(out.text).toBe(before); // nothing echoed after the pause

    const restored = restoreLinux(path, { signal: AbortSignal.timeout(60_000) });
    const out2 = collect(restored);
    restored.send('!');
    const expected = `>${plusOne('abchello, snapshot!')}`;
    await out2.until(expected.length - before.length);
    expect(before + out2.text).toBe(expected);
    await restored.stop();
  });

  it('restores into a prepared VM alike; one that does not fit is refused and stays usable; used once', async () => {
    const vm = bootLinux({ kernel: kernel(), memSize: 32 << 20, signal: AbortSignal.timeout(60_000) });
    const out = collect(vm);
    await out.until(1);
    vm.send('ab');
    await out.until(3);
    const path = join(dir, 'prepared.snap');
    await vm.snapshot(path);
    await vm.stop();
    const before = fds();

    const small = prepareLinuxRestore({ memSize: 16 << 20 });
    expect(() => restoreLinux(path, { prepared: small })).toThrow(
      expect.objectContaining({
        code: 'ERR_KVM_SNAPSHOT_MISMATCH',
        message: expect.stringMatching(/33554432 bytes of RAM, not 16777216/),
      }),
    );
    expect(small.used).toBe(false);
    small.close();
    expect(small.used).toBe(true);
    expect(fds()).toBe(before);

    // With dirty tracking, as the prepared VM says: the restored VM takes a diff.
    const prepared = prepareLinuxRestore({ memSize: 32 << 20, trackDirtyPages: true });
    const restored = restoreLinux(path, { prepared, signal: AbortSignal.timeout(60_000) });
    expect(prepared.used).toBe(true);
    const out2 = collect(restored);
    restored.send('cd');
    expect(await out2.until(2)).toBe('de');
    const diff = await restored.snapshot(join(dir, 'prepared.diff.snap'), { diff: true });
    expect(diff.kind).toBe('diff');
    await restored.stop();
    expect(() => restoreLinux(path, { prepared })).toThrow(expect.objectContaining({ code: 'ERR_KVM_CLOSED' }));
    const other = new Kvm();
    const p3 = prepareLinuxRestore({ memSize: 32 << 20 });
    expect(() => restoreLinux(path, { prepared: p3, kvm: other })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }),
    );
    p3.close();
    other.close();
    expect(() => prepareLinuxRestore({ memSize: 4097 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => restoreLinux(path, { prepared: {} as never })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(fds()).toBe(before);
    expect(mapped(dir)).toEqual([]);
  });

  it('refuses restoring a snapshot of another machine, or with virtio devices that differ', async () => {
    const vm = bootLinux({ kernel: kernel(), memSize: 32 << 20, signal: AbortSignal.timeout(60_000) });
    const path = join(dir, 'plain.snap');
    await collect(vm).until(1);
    await vm.snapshot(path);
    await vm.stop();
    const file = readSnapshotFile(path);
    const other = join(dir, 'other.snap');
    writeSnapshotFile(other, {
      machine: 'demo',
      state: file.state,
      regions: [{ guestPhysAddr: 0n, bytes: new Uint8Array(32 << 20) }],
      host: file.header.host,
    });
    const before = fds();
    expect(() => restoreLinux(other)).toThrow(expect.objectContaining({ code: 'ERR_KVM_SNAPSHOT_MISMATCH' }));
    const { virtioRng } = await import('../../src/devices/virtio/rng');
    expect(() => restoreLinux(path, { virtio: [virtioRng()] })).toThrow(
      expect.objectContaining({ name: 'SnapshotError', code: 'ERR_KVM_SNAPSHOT_MISMATCH' }),
    );
    expect(fds()).toBe(before);
  });

  it('hostile machine states with valid checksums are refused with a clear error, or fail cleanly; nothing leaks', async () => {
    const vm = bootLinux({ kernel: kernel(), memSize: 32 << 20, signal: AbortSignal.timeout(60_000) });
    const path = join(dir, 'base.snap');
    const out = collect(vm);
    await out.until(1);
    vm.send('x');
    await out.until(2);
    await vm.snapshot(path);
    await vm.stop();
    const file = readSnapshotFile(path);
    const runtime = new VcpuRuntime({ maxVcpus: 1 });
    const kvm = new Kvm();
    const bytes = new Uint8Array(32 << 20);
    const hostile = join(dir, 'hostile.snap');
    /** Every path to a leaf of the state. */
    const leaves: string[][] = [];
    const walk = (v: unknown, at: string[]) => {
      if (v !== null && typeof v === 'object' && !(v instanceof Uint8Array) && at.length < 6) {
        for (const k of Object.keys(v)) walk((v as Record<string, unknown>)[k], [...at, k]);
      } else leaves.push(at);
    };
    walk(file.state, []);
    const baseline = fds();
    let refused = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.nat({ max: leaves.length - 1 }),
        fc.oneof(
          fc.constant(undefined),
          fc.constant(null),
          fc.integer(),
          fc.constant(-1),
          fc.constant(2 ** 53),
          fc.string({ maxLength: 8 }),
          fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n }),
          fc.uint8Array({ maxLength: 16 }),
          fc.array(fc.integer(), { maxLength: 4 }),
        ),
        async (leaf, value) => {
          const state = structuredClone(file.state) as Record<string, unknown>;
          const at = leaves[leaf];
          let obj = state;
          for (const k of at.slice(0, -1)) obj = obj[k] as Record<string, unknown>;
          if (at.length === 0) return;
          obj[at[at.length - 1]] = value;
          writeSnapshotFile(hostile, {
            machine: 'linux',
            state,
            regions: [{ guestPhysAddr: 0n, bytes }],
            host: file.header.host,
          });
          let restored: LinuxVm | undefined;
          try {
            restored = restoreLinux(hostile, { runtime, kvm, signal: AbortSignal.timeout(30_000) });
          } catch (e) {
            refused++;
            // A clear error: the file's (SnapshotError), an argument's or a KVM one; never a crash.
            expect(
              e instanceof SnapshotError ||
                e instanceof TypeError ||
                e instanceof RangeError ||
                (e as Error).name === 'KvmError',
            ).toBe(true);
            expect(typeof (e as { code?: unknown }).code).toBe('string');
            return;
          }
          // Accepted (a value KVM or the devices take): it runs or fails, and stops cleanly.
          const outcome = await restored.stop();
          expect(['stopped', 'error', 'reset', 'halt']).toContain(outcome.reason);
        },
      ),
      { numRuns: 60 },
    );
    await runtime.close();
    kvm.close();
    expect(refused).toBeGreaterThan(0);
    expect(fds()).toBeLessThanOrEqual(baseline);
    expect(mapped(dir)).toEqual([]);
  });

  it('100 snapshot/restore cycles (half of them into prepared VMs) leak no fd and no mapping', async () => {
    const runtime = new VcpuRuntime({ maxVcpus: 1 });
    const kvm = new Kvm();
    let path = join(dir, 'cycle-0.snap');
    const first = bootLinux({ kernel: kernel(), memSize: 32 << 20, runtime, kvm });
    await collect(first).until(1);
    await first.snapshot(path);
    await first.stop();
    let fdsAt10 = 0;
    let mapsAt10 = 0;
    for (let i = 1; i <= 100; i++) {
      // Every other cycle into a prepared VM (made with the same Kvm).
      const prepared = i % 2 === 0 ? prepareLinuxRestore({ memSize: 32 << 20, kvm }) : undefined;
      const vm = restoreLinux(path, {
        runtime,
        kvm,
        signal: AbortSignal.timeout(30_000),
        ...(prepared ? { prepared } : {}),
      });
      const out = collect(vm);
      vm.send(String.fromCharCode(0x40 + (i % 32)));
      expect(await out.until(1)).toBe(String.fromCharCode(0x41 + (i % 32)));
      const next = join(dir, `cycle-${i % 2}.snap`);
      await vm.snapshot(next);
      await vm.stop();
      path = next;
      if (i === 10) {
        fdsAt10 = fds();
        mapsAt10 = maps();
      }
    }
    // After a warm-up (the runtime's thread, lazily loaded modules), flat: not one per cycle.
    expect(fds()).toBeLessThanOrEqual(fdsAt10);
    // Guest RAM is a private mapping of the snapshot file, kvm_run a mapping of the vCPU fd:
    // none is left. (The process's total count also moves with the JS heap, so it only gets a
    // bound well under one mapping per cycle.)
    expect(mapped(dir)).toEqual([]);
    expect(mapped('kvm-vcpu')).toEqual([]);
    expect(maps()).toBeLessThan(mapsAt10 + 45);
    await runtime.close();
    kvm.close();
  });
});
