/**
 * The runtime as users meet it (real KVM): pipeline modules written the usual ways, errors that
 * keep their class across the thread hop, start()'s checks, main-thread pipelines that end the
 * run, and closing the VM right after start().
 */
import { readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { KvmError } from '../../src/abi/errors';
import { UnhandledExitError } from '../../src/runtime/errors';
import { untilHalt } from '../../src/runtime/operators/untilHalt';
import { onIoOut } from '../../src/runtime/operators/onIoOut';
import { VcpuRuntime } from '../../src/runtime/pool';
import { Kvm } from '../../src/wrappers/kvm';
import type { VcpuFd } from '../../src/wrappers/vcpu-fd';
import { describeKvm } from '../helpers/kvm';
import { realModeGuest, type RealModeGuest } from '../helpers/real-mode-guest';

const MODULES = join(__dirname, '../fixtures/modules');
const GUEST_ADDR = 0x1000n;
// mov al, 0x2a; out 0x10, al; out 0x10, al; hlt; then a second OUT the guest must never reach.
const GUEST = Uint8Array.of(0xb0, 0x2a, 0xe6, 0x10, 0xe6, 0x10, 0xf4, 0xe6, 0x11, 0xf4);

/** Descriptions of this process's KVM fds (anon_inode:kvm-vm, kvm-vcpu:N). */
const kvmFds = (): string[] =>
  readdirSync('/proc/self/fd')
    .map((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        return '';
      }
    })
    .filter((l) => l.includes('kvm-vm') || l.includes('kvm-vcpu'))
    .sort();

describeKvm('the runtime layer', () => {
  let runtime: VcpuRuntime;
  let guest: RealModeGuest;
  let kvm: Kvm;
  let vcpu: VcpuFd;
  beforeAll(() => {
    runtime = new VcpuRuntime({ maxVcpus: 1 });
  });
  afterAll(async () => {
    await runtime.close();
  });
  beforeEach(() => {
    guest = realModeGuest(GUEST, { guestPhysAddr: GUEST_ADDR, memSize: 0x2000 });
    ({ kvm, vcpu } = guest);
  });
  afterEach(() => guest.close());

  describe('pipeline modules load the ways users write them', () => {
    it.each([
      ['module.exports = fn', 'cjs-module-exports.js', undefined],
      ['exports.default (TypeScript compiled to CommonJS)', 'cjs-exports-default.js', undefined],
      ['a named export', 'cjs-named.js', 'devices'],
      ['an ES module default export', 'esm-default.mjs', undefined],
      ['TypeScript source', 'ts-default.ts', undefined],
    ])('%s', async (_form, file, pipelineExport) => {
      const run = runtime.start(vcpu, { pipeline: join(MODULES, file), pipelineExport });
      await expect(run.done).resolves.toEqual({ reason: 'completed', exits: 3, lastExit: 'Hlt' });
    });

    it('names what it looked for when the module exports no function', async () => {
      const run = runtime.start(vcpu, { pipeline: join(MODULES, 'cjs-named.js') });
      await expect(run.done).rejects.toMatchObject({
        name: 'TypeError',
        code: 'ERR_INVALID_ARG_VALUE',
        message: expect.stringMatching(/exports no function: .*it exports 'devices', 'notAFunction'/),
      });
      const named = runtime.start(vcpu, { pipeline: join(MODULES, 'cjs-named.js'), pipelineExport: 'notAFunction' });
      await expect(named.done).rejects.toMatchObject({
        code: 'ERR_INVALID_ARG_VALUE',
        message: expect.stringMatching(/no export 'notAFunction' that is a function/),
      });
    });

    it('start() refuses a missing module at once, naming the option and how paths resolve', () => {
      const missing = join(MODULES, 'no-such-pipeline.js');
      expect(() => runtime.start(vcpu, { pipeline: missing })).toThrow(
        expect.objectContaining({
          code: 'ERR_INVALID_ARG_VALUE',
          message: expect.stringMatching(/^options\.pipeline: no such file .*no-such-pipeline\.js.*process\.cwd\(\)/),
        }),
      );
      expect(() => runtime.start(vcpu, { pipeline: 'no-such-relative.js' })).toThrow(
        expect.objectContaining({ message: expect.stringContaining(join(process.cwd(), 'no-such-relative.js')) }),
      );
      expect(vcpu.running).toBe(false); // nothing started: the vCPU is usable here
      expect(vcpu.getRegs().rip).toBe(GUEST_ADDR);
    });

    it('a pipeline that returns no Observable ends the run with ERR_INVALID_RETURN_VALUE', async () => {
      const run = runtime.start(vcpu, { pipeline: join(MODULES, 'returns-undefined.js') });
      await expect(run.done).rejects.toMatchObject({
        name: 'TypeError',
        code: 'ERR_INVALID_RETURN_VALUE',
        message: 'the pipeline must return an Observable (got undefined)',
      });
    });
  });

  describe('errors keep their class across threads', () => {
    it('a KvmError thrown in the worker rejects done with a KvmError: code, errno, syscall, request, stack', async () => {
      const run = runtime.start(vcpu, { pipeline: join(MODULES, 'throws-kvm-error.ts') });
      const error = (await run.done.catch((e: unknown) => e)) as KvmError;
      expect(error).toBeInstanceOf(KvmError);
      expect(error).toBeInstanceOf(Error);
      expect(error).toMatchObject({
        name: 'KvmError',
        code: 'EEXIST',
        errno: -17,
        syscall: 'ioctl',
        request: 'KVM_CREATE_VCPU',
      });
      expect(error.message).toBe('EEXIST: file already exists, ioctl KVM_CREATE_VCPU');
      expect(error.stack).toContain('throws-kvm-error.ts'); // the worker's stack
    });

    it('failOnUnhandled() in the worker rejects with an UnhandledExitError carrying the exit and its RIP', async () => {
      const run = runtime.start(vcpu, { pipeline: join(MODULES, 'fails-unhandled.ts') });
      const error = (await run.done.catch((e: unknown) => e)) as UnhandledExitError;
      expect(error).toBeInstanceOf(UnhandledExitError);
      expect(error.code).toBe('ERR_KVM_UNHANDLED_EXIT');
      expect(error.exit).toMatchObject({ kind: 'IoOut', port: 0x10, size: 1, count: 1, data: Uint8Array.of(0x2a) });
      // KVM reports the OUT with RIP past the instruction: 0x1000 + mov (2) + out (2).
      expect(error.rip).toBe(GUEST_ADDR + 4n);
      expect(error.message).toBe('unhandled IoOut exit: port 0x10, size 1, rip 0x1004');
    });
  });

  describe('main-thread pipelines', () => {
    it('exits$ completed by untilHalt() ends the run at HLT: the guest does not run on', async () => {
      const run = runtime.start(vcpu);
      const seen: string[] = [];
      run.exits$
        .pipe(
          onIoOut(0x10, (e) => void seen.push(`out ${e.data[0]}`)),
          untilHalt(),
        )
        .subscribe({
          complete: () => seen.push('complete'),
        });
      await expect(run.done).resolves.toEqual({ reason: 'completed', exits: 3, lastExit: 'Hlt' });
      expect(seen).toEqual(['out 42', 'out 42', 'complete']);
      expect(vcpu.getRegs().rip).toBe(GUEST_ADDR + 7n); // stopped at the hlt, not past the OUT to 0x11
    });

    it('unsubscribing the last exits$ subscriber between exits stops the run', async () => {
      const run = runtime.start(vcpu);
      const sub = run.exits$.subscribe((e) => {
        if (e.kind === 'IoOut') setImmediate(() => sub.unsubscribe()); // after this exit was answered
      });
      const outcome = await run.done;
      expect(outcome.reason).toBe('stopped');
      expect(outcome.exits).toBeLessThanOrEqual(3);
    });
  });

  it('closing the VM right after start() stops the run and leaves no KVM fd open', async () => {
    const before = kvmFds();
    const run = runtime.start(vcpu);
    kvm.close(); // closes the VM and its vCPU while the worker may not have started yet
    await expect(run.done).resolves.toMatchObject({ reason: 'stopped' });
    const after = kvmFds();
    // Our VM and vCPU fds (and the worker's duplicates of them) are all gone.
    expect(after.length).toBeLessThan(before.length);
    expect(after.filter((l) => !before.includes(l))).toEqual([]);
  });
});
