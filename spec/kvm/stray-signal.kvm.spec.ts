/**
 * A signal meant for the process that lands while the calling thread is inside KVM_RUN (SIGCHLD,
 * SIGWINCH, a profiler's SIGPROF…) makes KVM_RUN return EINTR without an exit. The in-thread
 * runners (`runInThread`, `vcpuExits`) go back into the guest then; a kick (`immediate_exit` = 1)
 * still ends them with EINTR.
 *
 * How: a child process sends this process the addon's kick signal (a real-time signal whose handler
 * is empty, so it interrupts KVM_RUN; jest's sandboxed `process` cannot install real signal
 * handlers) every 5 ms, without setting `immediate_exit`, while the guest counts down in real mode
 * for about 0.3 s without an exit (the iterations are calibrated once per host: a PVM host
 * emulates real mode, hardware runs it far faster). The kernel gives a process-wide signal to a
 * thread that is running: this one, inside KVM_RUN. That the signals land there is checked, not
 * timed: the same loop run bare (`vcpu.run()`) fails with EINTR. Without the retry the runners
 * would too.
 *
 * KVM_CREATE_VM also fails with EINTR under signals (6–10 % of calls with one signal per ms
 * here): `createVm` retries it. That part is shown on the mock, which fails it on demand.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { lastValueFrom, takeWhile, toArray } from 'rxjs';
import { KvmError, errnoOf } from '../../src/abi/errors';
import { ioctls } from '../../src/abi/kvm-constants';
import { MockBackend } from '../../src/backend/mock/index';
import type { IoctlArg } from '../../src/backend/types';
import { nativeBackend } from '../../src/backend/native';
import { runInThread, vcpuExits } from '../../src/runtime/in-thread';
import { untilHalt } from '../../src/runtime/operators/untilHalt';
import { Kvm } from '../../src/wrappers/kvm';
import type { VcpuFd } from '../../src/wrappers/vcpu-fd';
import { describeKvm, expectKvmError } from '../helpers/kvm';
import { realModeGuest, type RealModeGuest } from '../helpers/real-mode-guest';

/** mov $n,%ecx ; 1: dec %ecx ; jnz 1b ; hlt */
function countdown(n: number): number[] {
  return [0x66, 0xb9, n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24, 0x66, 0x49, 0x75, 0xfc, 0xf4];
}

/** A VM whose vCPU 0 runs `countdown(n)` in real mode from 0. */
const countdownVm = (n: number): RealModeGuest => realModeGuest(countdown(n), { guestPhysAddr: 0n, memSize: 0x1000 });

/**
 * Iterations for a loop of about 0.3 s without an exit on this host (a probe, not an assertion):
 * KVM emulating real mode (PVM) takes about a second per million, the CPU running it microseconds.
 */
function calibrate(): number {
  for (let n = 10_000; ; n *= 10) {
    using guest = countdownVm(n);
    const t0 = process.hrtime.bigint();
    guest.vcpu.run();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (ms >= 20 || n >= 100_000_000) return Math.min(0xffff_ffff, Math.ceil((n * 300) / Math.max(ms, 0.001)));
  }
}

describeKvm('stray signals during KVM_RUN on the calling thread', () => {
  let sender: ChildProcess | undefined;
  let guest: RealModeGuest;
  let vcpu: VcpuFd;

  let iterations = 0;

  beforeAll(() => {
    iterations = calibrate();
  });

  beforeEach(() => {
    guest = countdownVm(iterations);
    ({ vcpu } = guest);
  });

  afterEach(async () => {
    if (sender !== undefined && sender.exitCode === null) {
      sender.kill();
      await once(sender, 'exit');
    }
    sender = undefined;
    guest.close();
  });

  /** Starts the child that signals this process every 5 ms; resolves once it has sent one. */
  async function startSignals(): Promise<void> {
    const sig = nativeBackend().kickSignal();
    sender = spawn(
      process.execPath,
      ['-e', `setInterval(() => { process.kill(${process.pid}, ${sig}); process.stdout.write('.'); }, 5)`],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await once(sender.stdout!, 'data');
  }

  /** The control: under the same signals, the same loop run bare is interrupted (EINTR, no exit). */
  function expectSignalsInsideKvmRun(): void {
    using bare = countdownVm(iterations);
    expectKvmError(() => bare.vcpu.run(), 'EINTR', 'KVM_RUN');
    expect(bare.vcpu.getRegs().rcx & 0xffffffffn).not.toBe(0n); // interrupted before the end
  }

  it('runInThread goes back into the guest and reaches the halt', async () => {
    await startSignals();
    expectSignalsInsideKvmRun();
    const outcome = await runInThread(vcpu, (exits$) => exits$.pipe(untilHalt()));
    expect(outcome).toEqual({ reason: 'completed', exits: 1, lastExit: 'Hlt' });
    expect(vcpu.getRegs().rcx & 0xffffffffn).toBe(0n);
  });

  it('vcpuExits goes back into the guest and emits only the halt', async () => {
    await startSignals();
    expectSignalsInsideKvmRun();
    const exits = await lastValueFrom(
      vcpuExits(vcpu).pipe(
        takeWhile((e) => e.kind !== 'Hlt', true),
        toArray(),
      ),
    );
    expect(exits.map((e) => e.kind)).toEqual(['Hlt']);
    expect(vcpu.getRegs().rcx & 0xffffffffn).toBe(0n);
  });

  it('a kick (immediate_exit = 1) still ends runInThread with EINTR', async () => {
    vcpu.setKvmImmediateExit(1);
    await expect(runInThread(vcpu, (exits$) => exits$.pipe(untilHalt()))).rejects.toMatchObject({
      code: 'EINTR',
      errno: -4,
      syscall: 'ioctl',
      request: 'KVM_RUN',
    });
    expect(vcpu.getRegs().rip).toBe(0n); // it never entered the guest
  });
});

/** The mock, with KVM_CREATE_VM failing with EINTR the first `failures` times. */
class InterruptedCreateVm extends MockBackend {
  createVmCalls = 0;
  constructor(readonly failures: number) {
    super();
  }
  override ioctl(fd: number, request: number, arg?: IoctlArg): number {
    if (request === ioctls.KVM_CREATE_VM && ++this.createVmCalls <= this.failures)
      throw new KvmError(errnoOf('EINTR'), 'ioctl', { request: 'KVM_CREATE_VM' });
    return super.ioctl(fd, request, arg);
  }
}

describe('KVM_CREATE_VM interrupted by a signal', () => {
  it('is retried: createVm succeeds after 3 EINTRs', () => {
    const backend = new InterruptedCreateVm(3);
    const kvm = new Kvm({ backend });
    try {
      const vm = kvm.createVm();
      expect(backend.createVmCalls).toBe(4);
      expect(vm.createVcpu(0).id).toBe(0);
    } finally {
      kvm.close();
    }
  });

  it('gives up after 100 interrupted attempts with the EINTR KvmError', () => {
    const backend = new InterruptedCreateVm(Infinity);
    const kvm = new Kvm({ backend });
    try {
      expect(() => kvm.createVm()).toThrow(
        expect.objectContaining({ code: 'EINTR', errno: -4, syscall: 'ioctl', request: 'KVM_CREATE_VM' }),
      );
      expect(backend.createVmCalls).toBe(100);
    } finally {
      kvm.close();
    }
  });

  it('is not retried for other errors', () => {
    const backend = new InterruptedCreateVm(0);
    const kvm = new Kvm({ backend });
    try {
      expect(() => kvm.createVmWithType(0xdeadn)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
      expect(backend.createVmCalls).toBe(1);
    } finally {
      kvm.close();
    }
  });
});
