/**
 * How often KVM_CREATE_VM fails with EINTR while the process receives a signal every millisecond
 * (the figure behind `Kvm.createVmWithType`'s retry). A child process sends this process the
 * addon's kick signal (a real-time signal with an empty handler) every 1 ms; this process issues
 * raw KVM_CREATE_VM ioctls (no retry) for 3 s and counts the outcomes.
 *
 *   npx ts-node --transpile-only bench/create-vm-eintr.ts
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { KvmError } from '../src/abi/errors';
import { ioctls } from '../src/abi/kvm-constants';
import { nativeBackend } from '../src/backend/native';

const backend = nativeBackend();
const sig = backend.kickSignal();
const sender = spawn(process.execPath, ['-e', `setInterval(() => process.kill(${process.pid}, ${sig}), 1)`], {
  stdio: 'ignore',
});

setTimeout(() => {
  const kvmFd = openSync('/dev/kvm', 'r+');
  let created = 0;
  let eintr = 0;
  const t0 = Date.now();
  try {
    while (Date.now() - t0 < 3000) {
      try {
        closeSync(backend.ioctl(kvmFd, ioctls.KVM_CREATE_VM, 0));
        created++;
      } catch (e) {
        if (!(e instanceof KvmError && e.code === 'EINTR')) throw e;
        eintr++;
      }
    }
  } finally {
    closeSync(kvmFd);
    sender.kill();
  }
  const pct = ((100 * eintr) / (created + eintr)).toFixed(1);
  process.stdout.write(`KVM_CREATE_VM under a signal per ms: ${created} created, ${eintr} EINTR (${pct} %)\n`);
}, 200);
