/**
 * The native kick: a vCPU inside KVM_RUN on another thread (a guest spinning in `jmp $`, which
 * never exits by itself) returns EINTR when kicked with immediate_exit + the real-time signal.
 */
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { offsetOf } from '../../src/abi/codec';
import { errnoOf } from '../../src/abi/errors';
import { ioctls } from '../../src/abi/kvm-constants';
import { kvm_run } from '../../src/abi/layouts';
import { nativeBackend } from '../../src/backend/native';
import { describeKvm } from '../helpers/kvm';
import { realModeGuest } from '../helpers/real-mode-guest';

// The worker loads the addon itself (each thread needs its own instance and its own view of
// kvm_run) and runs KVM_RUN on the vCPU fd until it is interrupted.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const addon = require('node-gyp-build')(workerData.root);
class KvmError extends Error { constructor(errno, syscall, o) { super(String(errno)); this.errno = -Math.abs(errno); this.syscall = syscall; this.request = o && o.request; } }
addon.setErrorClass(KvmError);
addon.kickSignal();
const run = new Uint8Array(addon.view(workerData.runAddress, workerData.runSize));
parentPort.postMessage({ thread: addon.threadSelf() });
const t0 = process.hrtime.bigint();
let errno = 0;
try { addon.ioctl(workerData.fd, workerData.KVM_RUN); } catch (e) { errno = e.errno; }
const elapsed = Number(process.hrtime.bigint() - t0);
const ie = run[workerData.immediateExitOffset];
run[workerData.immediateExitOffset] = 0;
addon.detach(run.buffer);
parentPort.postMessage({ errno, elapsed, immediateExitSeen: ie });
`;

describeKvm('vCPU kick (immediate_exit + real-time signal)', () => {
  it('interrupts a guest spinning in `jmp $` on another thread with EINTR', async () => {
    using guest = realModeGuest([0xeb, 0xfe]); // jmp $
    const { vcpu } = guest;
    const run = vcpu.getKvmRun();
    const worker = new Worker(WORKER, {
      eval: true,
      workerData: {
        root: join(__dirname, '../..'),
        fd: vcpu.asRawFd(),
        runAddress: run.address,
        runSize: run.size,
        KVM_RUN: ioctls.KVM_RUN,
        immediateExitOffset: offsetOf(kvm_run, 'immediate_exit'),
      },
    });
    const messages: Array<Record<string, unknown>> = [];
    const done = new Promise<void>((resolve, reject) => {
      worker.on('message', (m: Record<string, unknown>) => {
        messages.push(m);
        if ('errno' in m) resolve();
      });
      worker.on('error', reject);
    });
    while (messages.length === 0) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 50)); // let the guest spin inside KVM_RUN
    nativeBackend().kick(messages[0].thread as bigint, run.address);
    await done;
    await worker.terminate();
    const result = messages[1];
    expect(result.errno).toBe(-errnoOf('EINTR'));
    expect(result.immediateExitSeen).toBe(1);
    expect(run.immediateExit).toBe(0); // the worker wrote it back to 0
    // the vCPU is usable again from this thread
    vcpu.setKvmImmediateExit(1);
    expect(() => vcpu.run()).toThrow(expect.objectContaining({ code: 'EINTR', request: 'KVM_RUN' }));
    vcpu.setKvmImmediateExit(0);
  });
});
