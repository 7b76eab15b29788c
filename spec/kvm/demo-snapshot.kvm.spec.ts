/**
 * Snapshots of the demo VM (`startDemo`, `restoreDemo`) on the real kernel:
 *
 * - a session snapshotted mid-echo and restored in a new process (a child node process through
 *   ts-node) goes on with exactly the bytes an uninterrupted session gives for the same input,
 *   measured against one in this process. Two meanings of mid-echo, both without timing
 *   assumptions: (A) the vCPU paused with bytes typed after the pause waiting in the UART's FIFO,
 *   not yet read by the guest (the snapshot file shows them in COM1's state); (B) the vCPU paused
 *   as soon as the first byte of a line's echo is out, wherever the guest then is (in its ISR
 *   between reading a byte and writing it, between bytes, or done; usually right after the `out`
 *   of that byte, which KVM completes only at the next KVM_RUN): what the original printed before
 *   the pause plus what the restored one prints must be the uninterrupted output;
 * - input typed before the guest's banner is out (held on the main thread) is in the snapshot;
 * - snapshots back to back and `pause()` right after `resume()` do not hang;
 * - corrupt and truncated files, a bad device or vCPU state and a `bootLinux()` snapshot are
 *   refused with `SnapshotError`, with not one fd or mapping left behind (the process's own counts,
 *   exactly: the refusals are synchronous);
 * - 190 cycles of snapshot, stop, `restoreDemo` of it and a line typed and echoed across the
 *   restore (paused at its first echoed byte each time) leave kvm-rx's fds and mappings exactly as
 *   they were, the process's fds exactly and its map lines within a bound (justified at the
 *   check) flat, and RSS, arrayBuffers and the heap without growth batch after batch.
 *
 * Waits are for output conditions (a deadline only turns a hang into a failure naming what was
 * awaited); nothing sleeps to synchronise.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { bootLinux, restoreLinux } from '../../src/vmm/linux';
import { restoreDemo, startDemo, type DemoVm } from '../../src/vmm/demo';
import { SnapshotError } from '../../src/vmm/errors';
import { mapSnapshotMemory, readSnapshotChain, readSnapshotFile, writeSnapshotFile } from '../../src/vmm/snapshot-file';
import type { DemoSnapshotState } from '../../src/vmm/demo-snapshot';
import { VcpuRuntime } from '../../src/runtime/pool';
import { buildElf } from '../vmm/images';
import { describeKvm } from '../helpers/kvm';
import { fdCensus, linearGrowth, mapCensus } from '../helpers/resources';

/** The end of the demo guest's banner (it ends with an empty line). */
const BANNER_END = 'Ctrl-A x quits.\r\n\r\n';
const ROOT = join(__dirname, '../..');

// A full collection before each memory sample (jest's process has no --expose-gc).
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** What a demo VM printed (Latin-1), with waits for conditions on it. */
class Console {
  text = '';
  readonly #waiters: Array<{ pred: (t: string) => boolean; resolve: () => void }> = [];
  readonly output = (bytes: Uint8Array): void => {
    this.text += Buffer.from(bytes).toString('latin1');
    for (const w of [...this.#waiters]) {
      if (!w.pred(this.text)) continue;
      this.#waiters.splice(this.#waiters.indexOf(w), 1);
      w.resolve();
    }
  };
  /** Resolves once `pred(text)` holds; rejects after `ms` (a hang, not a synchronisation). */
  until(pred: (t: string) => boolean, what: string, ms = 30_000): Promise<void> {
    if (pred(this.text)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        reject(new Error(`timed out waiting for ${what}; output so far ends ${JSON.stringify(this.text.slice(-200))}`));
      }, ms);
      const waiter = {
        pred,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      this.#waiters.push(waiter);
    });
  }
  banner(): Promise<void> {
    return this.until((t) => t.includes(BANNER_END), 'the banner');
  }
}

/** The guest's echo of typed text: CR becomes CR LF, Ctrl-D prints bye. */
const echo = (typed: string): string => typed.replace(/\r/g, '\r\n').replace(/\x04/g, '\r\nbye\r\n');

/** What restoreDemo refuses, and that it leaves nothing open behind it. */
function expectRefused(path: string, code: string, detail?: RegExp): void {
  const fds = fdCensus();
  const maps = ownMaps();
  let thrown: unknown;
  try {
    restoreDemo(path, { output: () => undefined });
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeInstanceOf(SnapshotError);
  expect({ code: (thrown as SnapshotError).code, path: (thrown as SnapshotError).path }).toEqual({ code, path });
  if (detail) expect((thrown as SnapshotError).detail).toMatch(detail);
  expect({ fds: fdCensus(), maps: ownMaps() }).toEqual({ fds, maps });
}

/** A demo snapshot file of this machine (and its state) rewritten with `change` applied to the state. */
function rewrite(from: string, to: string, change: (s: DemoSnapshotState) => void): void {
  const chain = readSnapshotChain(from);
  const file = chain[chain.length - 1];
  const state = structuredClone(file.state) as DemoSnapshotState;
  change(state);
  const [ram] = mapSnapshotMemory(chain);
  try {
    writeSnapshotFile(to, {
      machine: file.header.machine,
      state,
      regions: [{ guestPhysAddr: 0n, bytes: ram.bytes }],
      host: file.header.host,
    });
  } finally {
    ram.close();
  }
}

/**
 * kvm-rx's mappings: kvm_run pages (`anon_inode:kvm-vcpu`) and the snapshot files a restored VM's
 * RAM maps privately. (The process's other map lines change under other threads' feet, V8's
 * concurrent GC among them, even while this thread runs synchronous code.)
 */
function ownMaps(): { kvmRun: number; snapshots: number } {
  const lines = readFileSync('/proc/self/maps', 'latin1').split('\n');
  return {
    kvmRun: lines.filter((l) => l.includes('anon_inode:kvm-vcpu')).length,
    snapshots: lines.filter((l) => l.includes('kvmrx-demo-snap-')).length,
  };
}

/** Map lines of files under `dir` (a restored VM's RAM is a private mapping of its snapshot). */
function fileMaps(dir: string): number {
  return readFileSync('/proc/self/maps', 'latin1')
    .split('\n')
    .filter((l) => l.includes(dir)).length;
}

/** Restores each snapshot in a child node process, types `sends` into it and returns what it printed until the guest reset. */
function restoreInChild(jobs: Array<{ path: string; sends: string[] }>): Array<{
  output: string;
  reason: string;
  reset: boolean;
  pid: number;
}> {
  const script = `
    const { restoreDemo } = require(${JSON.stringify(join(ROOT, 'src/index.ts'))});
    (async () => {
      const results = [];
      for (const job of JSON.parse(process.env.KVMRX_DEMO_JOBS)) {
        const chunks = [];
        const demo = restoreDemo(job.path, { output: (b) => chunks.push(Buffer.from(b)), signal: AbortSignal.timeout(60000) });
        for (const s of job.sends) demo.send(s);
        const outcome = await demo.done;
        results.push({ output: Buffer.concat(chunks).toString('latin1'), reason: outcome.reason, reset: outcome.reset, pid: process.pid });
      }
      process.stdout.write('DEMO_RESULT ' + JSON.stringify(results) + '\\n');
    })().catch((e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });
  `;
  const r = spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', '-e', script], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { ...process.env, KVMRX_DEMO_JOBS: JSON.stringify(jobs) },
    timeout: 120_000,
  });
  const line = r.stdout.split('\n').find((l) => l.startsWith('DEMO_RESULT '));
  if (r.status !== 0 || line === undefined)
    throw new Error(
      `the child ended with ${r.signal ?? `status ${r.status}`}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`,
    );
  return JSON.parse(line.slice('DEMO_RESULT '.length)) as ReturnType<typeof restoreInChild>;
}

describeKvm('demo VM snapshots', () => {
  let dir = '';
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'kvmrx-demo-snap-'));
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // The session: 'hello' (echoed before any snapshot), a line typed mid-session, then CR and Ctrl-D
  // (the guest prints bye and resets the machine: a deterministic end).
  const FIRST = 'hello';
  const LINE = ' wonderful world of snapshots'; // < 64 bytes: the UART's FIFO holds it all
  const REST = ['\r', '\x04'];

  it('a session paused mid-echo and restored in a new process echoes exactly what the uninterrupted one does', async () => {
    // The reference: the same input to a demo VM that is never interrupted.
    const ref = new Console();
    const refVm = startDemo({ output: ref.output, signal: AbortSignal.timeout(60_000) });
    await ref.banner();
    const head = ref.text; // the banner
    refVm.send(FIRST);
    await ref.until((t) => t === head + FIRST, 'the echo of hello');
    refVm.send(LINE);
    for (const s of REST) refVm.send(s);
    expect(await refVm.done).toMatchObject({ reason: 'completed', reset: true });
    expect(ref.text).toBe(head + echo(FIRST + LINE + REST.join('')));

    // (A) Paused after 'hello' is echoed; LINE typed while paused waits in the UART's FIFO.
    const a = new Console();
    const vmA = startDemo({ output: a.output, signal: AbortSignal.timeout(60_000) });
    await a.banner();
    vmA.send(FIRST);
    await a.until((t) => t === head + FIRST, 'the echo of hello');
    await vmA.pause();
    expect(vmA.paused).toBe(true);
    vmA.send(LINE);
    const snapA = join(dir, 'a.snap');
    const header = await vmA.snapshot(snapA);
    expect(header).toMatchObject({ machine: 'demo', kind: 'full' });
    expect(vmA.paused).toBe(true); // a snapshot of a paused VM leaves it paused
    expect(await vmA.stop()).toMatchObject({ reason: 'stopped', reset: false });
    expect(a.text).toBe(head + FIRST); // nothing of LINE echoed: it is in the snapshot, unread
    const savedA = readSnapshotFile(snapA).state as DemoSnapshotState;
    expect(Buffer.from((savedA.legacyDevices as { com1: { rx: number[] } }).com1.rx).toString('latin1')).toBe(LINE);
    expect(savedA.console).toEqual({ ready: true, banner: '', held: [] });

    // (B) Paused as soon as the first byte of LINE's echo is out: wherever the guest then is.
    const b = new Console();
    const vmB = startDemo({ output: b.output, signal: AbortSignal.timeout(60_000) });
    await b.banner();
    vmB.send(FIRST);
    await b.until((t) => t === head + FIRST, 'the echo of hello');
    vmB.send(LINE);
    await b.until((t) => t.length > (head + FIRST).length, "the first byte of LINE's echo");
    await vmB.pause();
    const keptB = b.text; // everything it printed before the pause has arrived
    const snapB = join(dir, 'b.snap');
    await vmB.snapshot(snapB);
    expect(await vmB.stop()).toMatchObject({ reason: 'stopped' });
    expect(b.text).toBe(keptB);
    expect(ref.text.startsWith(keptB)).toBe(true);
    const echoedB = keptB.length - (head + FIRST).length;
    console.log(`(B) paused with ${echoedB} of ${LINE.length} bytes of the line echoed`);

    const [childA, childB] = restoreInChild([
      { path: snapA, sends: REST },
      { path: snapB, sends: REST },
    ]);
    expect(childA.pid).not.toBe(process.pid);
    // byte for byte what the uninterrupted session printed from the same point on
    expect({ reason: childA.reason, reset: childA.reset }).toEqual({ reason: 'completed', reset: true });
    expect(childA.output).toBe(ref.text.slice((head + FIRST).length));
    expect({ reason: childB.reason, reset: childB.reset }).toEqual({ reason: 'completed', reset: true });
    expect(keptB + childB.output).toBe(ref.text);
  }, 180_000);

  it('input typed before the banner is out is kept in the snapshot and reaches the restored guest after it', async () => {
    const con = new Console();
    const vm = startDemo({ output: con.output, signal: AbortSignal.timeout(60_000) });
    vm.send('early');
    await con.until((t) => t.length > 0, 'the first byte of the banner');
    await vm.pause();
    const kept = con.text;
    const path = join(dir, 'early.snap');
    await vm.snapshot(path);
    await vm.stop();
    // held on the main thread until the banner's end is out; given to the guest from then on
    const state = readSnapshotFile(path).state as DemoSnapshotState;
    const ready = kept.includes('Ctrl-A x quits.\r\n');
    expect({
      ready: state.console.ready,
      held: state.console.held.map((h) => Buffer.from(h).toString('latin1')),
    }).toEqual({ ready, held: ready ? [] : ['early'] });
    const again = new Console();
    const restored = restoreDemo(path, { output: again.output, signal: AbortSignal.timeout(60_000) });
    await again.until((t) => (kept + t).endsWith(`${BANNER_END}early`), 'the banner, then the echo of early');
    restored.send('\x04');
    expect(await restored.done).toMatchObject({ reason: 'completed', reset: true });
    expect(kept + again.text).toMatch(/^\r\nkvm-rx demo guest: [\s\S]*Ctrl-A x quits\.\r\n\r\nearly\r\nbye\r\n$/);
  }, 60_000);

  it('snapshots back to back, and pause() right after resume(), neither hang nor lose input', async () => {
    const con = new Console();
    const vm = startDemo({ output: con.output, signal: AbortSignal.timeout(60_000) });
    await con.banner();
    const head = con.text;
    vm.send('one');
    for (let i = 0; i < 20; i++) await vm.snapshot(join(dir, `back-to-back-${i % 2}.snap`));
    for (let i = 0; i < 20; i++) {
      await vm.pause();
      vm.resume();
    }
    expect(vm.paused).toBe(false);
    vm.send('two\x04');
    expect(await vm.done).toMatchObject({ reason: 'completed', reset: true });
    expect(con.text).toBe(head + echo('onetwo\x04'));
  }, 60_000);

  it('refuses corrupt, truncated and inconsistent demo snapshots with SnapshotError, leaving no fd or mapping', async () => {
    const con = new Console();
    const vm = startDemo({ output: con.output, signal: AbortSignal.timeout(60_000) });
    await con.banner();
    const good = join(dir, 'good.snap');
    await vm.snapshot(good, { checksumMemory: true });
    // ERR_KVM_BUSY while one is written, ERR_KVM_CLOSED after the end
    const first = vm.snapshot(join(dir, 'busy1.snap'));
    await expect(vm.snapshot(join(dir, 'busy2.snap'))).rejects.toMatchObject({ code: 'ERR_KVM_BUSY' });
    await first;
    await vm.stop();
    await expect(vm.snapshot(join(dir, 'late.snap'))).rejects.toMatchObject({ code: 'ERR_KVM_CLOSED' });
    expect(vm.paused).toBe(false);

    const bytes = readFileSync(good);
    const header = readSnapshotFile(good).header;
    const variant = (name: string, mutate: (b: Buffer) => Buffer): string => {
      const p = join(dir, name);
      writeFileSync(p, mutate(Buffer.from(bytes)));
      return p;
    };
    expectRefused(
      variant('half.snap', (b) => b.subarray(0, b.length >> 1)),
      'ERR_KVM_SNAPSHOT_TRUNCATED',
    );
    expectRefused(
      variant('tiny.snap', (b) => b.subarray(0, 30)),
      'ERR_KVM_SNAPSHOT_TRUNCATED',
    );
    expectRefused(
      variant('state-bit.snap', (b) => {
        b[header.state.offset + 10] ^= 0x20;
        return b;
      }),
      'ERR_KVM_SNAPSHOT_CORRUPT',
      /state checksum/,
    );
    expectRefused(
      variant('header-bit.snap', (b) => {
        b[b.length - 20] ^= 0x01;
        return b;
      }),
      'ERR_KVM_SNAPSHOT_CORRUPT',
      /header/,
    );
    expectRefused(
      variant('empty.snap', () => Buffer.alloc(0)),
      'ERR_KVM_SNAPSHOT_CORRUPT',
    );
    // a memory byte changed: found with verifyMemory (the checksum written with checksumMemory)
    const memBit = variant('memory-bit.snap', (b) => {
      b[(header.memory[0].offset ?? 0) + 0x1000] ^= 0x01; // the guest's first instruction
      return b;
    });
    {
      const fds = fdCensus();
      expect(() => restoreDemo(memBit, { output: () => undefined, verifyMemory: true })).toThrow(
        expect.objectContaining({ code: 'ERR_KVM_SNAPSHOT_CORRUPT', detail: expect.stringMatching(/checksum/) }),
      );
      expect(fdCensus()).toEqual(fds);
    }
    // well-formed files whose state the restore refuses: before anything is created (the machine
    // outline, the devices on a throwaway set) and after the VM, RAM and vCPU are (KVM's MSRs)
    const bad = (name: string, change: (s: DemoSnapshotState) => void): string => {
      const p = join(dir, name);
      rewrite(good, p, change);
      return p;
    };
    expectRefused(
      bad('mem-size.snap', (s) => (s.memSize = 0x20000)),
      'ERR_KVM_SNAPSHOT_CORRUPT',
      /memSize/,
    );
    expectRefused(
      bad('no-console.snap', (s) => delete (s as Partial<DemoSnapshotState>).console),
      'ERR_KVM_SNAPSHOT_CORRUPT',
      /console/,
    );
    expectRefused(
      bad(
        'uart.snap',
        (s) => ((s.legacyDevices as { com1: { rx: number[] } }).com1.rx = new Array<number>(65).fill(0x41)),
      ),
      'ERR_KVM_SNAPSHOT_CORRUPT',
      /device state is refused: .*com1\.rx/,
    );
    expectRefused(
      bad('msr.snap', (s) => s.vcpu.msrs.push({ index: 0x4b56_ffff, data: 0n })),
      'ERR_KVM_SNAPSHOT_CORRUPT',
      /KVM state is refused: .*MSR 0x4b56ffff/,
    );
    // and the good one restores
    const again = new Console();
    const restored = restoreDemo(good, {
      output: again.output,
      verifyMemory: true,
      signal: AbortSignal.timeout(30_000),
    });
    restored.send('ok\x04');
    expect(await restored.done).toMatchObject({ reason: 'completed', reset: true });
    expect(again.text).toBe(echo('ok\x04'));
  }, 60_000);

  it('refuses a bootLinux() snapshot with ERR_KVM_SNAPSHOT_MISMATCH (and restoreLinux a demo one)', async () => {
    // a crafted 64-bit "kernel" spinning in jmp $: enough for a real bootLinux() snapshot
    const kernel = buildElf({
      entry: 0x1000000n,
      segments: [{ paddr: 0x1000000, data: Uint8Array.of(0xeb, 0xfe), memsz: 0x1000 }],
    });
    const linux = bootLinux({ kernel, memSize: 32 << 20, signal: AbortSignal.timeout(60_000) });
    const linuxSnap = join(dir, 'linux.snap');
    expect(await linux.snapshot(linuxSnap)).toMatchObject({ machine: 'linux' });
    await linux.stop();
    expectRefused(linuxSnap, 'ERR_KVM_SNAPSHOT_MISMATCH', /'linux' machine/);

    const con = new Console();
    const demo = startDemo({ output: con.output, signal: AbortSignal.timeout(60_000) });
    await con.banner();
    const demoSnap = join(dir, 'demo-for-linux.snap');
    await demo.snapshot(demoSnap);
    await demo.stop();
    const fds = fdCensus();
    expect(() => restoreLinux(demoSnap)).toThrow(expect.objectContaining({ code: 'ERR_KVM_SNAPSHOT_MISMATCH' }));
    expect(fdCensus()).toEqual(fds);
  }, 60_000);

  it('190 cycles of snapshot, restoreDemo and a line echoed across the restore: no fd, mapping or memory left behind', async () => {
    const WARM_UP = 10;
    const BATCH = 30;
    // 10 + 6 × 30 = 190 cycles. Six batches, not three: this process's RSS (glibc's arenas, V8's
    // pages) still grows in bursts over the first ~100 cycles and then settles (measured
    // 2026-12-03, AMD host, 250 cycles: +4.5, +1.4, +2.3 MB in the batches up to cycle 100, then
    // +0, +0.08, +0.2, +0.24, -0.05 MB), which three batches took for a leak in one fresh-clone
    // run. A leak grows every batch alike; settling leaves some batch flat.
    const BATCHES = 6;
    const CYCLES = WARM_UP + BATCH * BATCHES;
    const path = join(dir, 'cycle.snap');
    const before = { fds: fdCensus(), maps: mapCensus() };
    // One runtime for the loop (a runtime's own threads are runtime-leaks.kvm.spec.ts's subject;
    // a fresh one per VM would start a thread and load the pipeline every cycle).
    const runtime = new VcpuRuntime({ maxVcpus: 1 });
    const con = new Console();
    let vm: DemoVm = startDemo({ output: con.output, runtime });
    await con.banner();
    let expected = con.text;
    let midEcho = 0;
    const samples: Array<{
      cycle: number;
      fds: ReturnType<typeof fdCensus>;
      maps: ReturnType<typeof mapCensus>;
      files: number;
      rss: number;
      ab: number;
      heap: number;
    }> = [];
    const sample = (cycle: number) => {
      gc(); // what is still referenced, not what the collector has not got round to
      const m = process.memoryUsage();
      samples.push({
        cycle,
        fds: fdCensus(),
        maps: mapCensus(),
        files: fileMaps(dir),
        rss: m.rss,
        ab: m.arrayBuffers,
        heap: m.heapUsed,
      });
    };
    try {
      for (let cycle = 0; cycle < CYCLES; cycle++) {
        // the line before is echoed in full (by the VM restored from its snapshot)
        await con.until((t) => t.length >= expected.length, `the echo of cycle ${cycle - 1}`);
        if (cycle === 0 || (cycle >= WARM_UP && (cycle - WARM_UP) % BATCH === 0)) sample(cycle);
        const line = `cycle ${cycle}: typed, snapshotted, restored\r`;
        const from = expected.length;
        expected += echo(line);
        vm.send(line);
        await con.until((t) => t.length > from, `the first byte of cycle ${cycle}'s echo`);
        await vm.pause();
        if (con.text.length < expected.length) midEcho++;
        await vm.snapshot(path);
        expect(await vm.stop()).toMatchObject({ reason: 'stopped' });
        vm = restoreDemo(path, { output: con.output, runtime });
      }
      await con.until((t) => t.length >= expected.length, 'the echo of the last cycle');
      sample(CYCLES);
      expect(con.text).toBe(expected); // every restore: not a byte lost or repeated
    } finally {
      await vm.stop();
      await runtime.close();
    }
    const after = { fds: fdCensus(), maps: mapCensus(), files: fileMaps(dir) };
    const base = samples[1]; // after the warm-up
    const last = samples[samples.length - 1];
    const mapsGrowth = linearGrowth(
      samples.map((s) => s.maps.total),
      BATCH,
      1,
    );
    const rssGrowth = linearGrowth(
      samples.map((s) => s.rss),
      BATCH,
      4096,
    );
    // 4 KiB a cycle: a heap-snapshot diff of cycles 40 and 140 of this loop (2026-12-03, AMD
    // host) showed +168 KB, of which ~130 KB was V8's optimised code (code, deopt data, relocation
    // info) and 33 KB the cons strings of the transcript this spec keeps (`expected`, the
    // console's text): 1.7 KB a cycle that is not kvm-rx's, and that a 1 KiB unit took for a leak
    // in one fresh-clone run. A restore left behind (its VM handle, run, subjects and closures)
    // keeps more than that; its buffers are the arrayBuffers check's.
    const heapGrowth = linearGrowth(
      samples.map((s) => s.heap),
      BATCH,
      4096,
    );
    const abGrowth = linearGrowth(
      samples.map((s) => s.ab),
      BATCH,
      4096,
    );
    console.log(
      `${samples.length - 1} samples; paused mid-echo in ${midEcho} of ${CYCLES} cycles; ` +
        `fds ${samples.map((s) => s.fds.total).join(' ')}; map lines ${samples.map((s) => s.maps.total).join(' ')}; ` +
        `RSS MiB ${samples.map((s) => (s.rss / 2 ** 20).toFixed(1)).join(' ')}\n` +
        `  maps: ${mapsGrowth.detail}\n  rss: ${rssGrowth.detail}\n  arrayBuffers: ${abGrowth.detail}\n  heap: ${heapGrowth.detail}`,
    );
    // kvm-rx's own, exactly: with one VM running, at every point as after the first cycles; its
    // RAM is one private mapping of the snapshot file; and nothing once it is stopped
    for (const s of samples.slice(1)) {
      expect({ cycle: s.cycle, own: s.fds.own, kvmRun: s.maps.kvmRun, files: s.files }).toEqual({
        cycle: s.cycle,
        own: base.fds.own,
        kvmRun: base.maps.kvmRun,
        files: 1,
      });
    }
    expect({ own: after.fds.own, kvmRun: after.maps.kvmRun, files: after.files }).toEqual({
      own: before.fds.own,
      kvmRun: 0,
      files: 0,
    });
    // The rest of the process. fds: exactly flat. Map lines: fewer more than the cycles after the
    // warm-up, i.e. under one line per cycle, where one mapping leaked per cycle adds at least one
    // a cycle and a leaked thread (stack and guard page) two. kvm-rx's own mappings are counted
    // exactly above; the other lines are V8's heap and glibc's arenas, which come and go in bursts
    // (+7 to +48 over 90 cycles in the runs measured on the 2-core host, +18 over 240; 1,000 cycles
    // outside jest settle at about 2 lines per 100 cycles). And no growth batch after batch of map
    // lines, RSS, arrayBuffers or the heap after a full collection (linearGrowth:
    // spec/helpers/resources.ts).
    expect(last.fds.total).toBe(base.fds.total);
    expect(last.maps.total - base.maps.total).toBeLessThan(CYCLES - WARM_UP);
    expect(mapsGrowth.linear).toBe(false);
    expect(rssGrowth.linear).toBe(false);
    expect(abGrowth.linear).toBe(false);
    expect(heapGrowth.linear).toBe(false);
  }, 300_000);
});
