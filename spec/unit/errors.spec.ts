import { getSystemErrorName } from 'node:util';
import { KvmError, errnoOf } from '../../src/abi/errors';
import { MockBackend } from '../../src/backend/mock/index';
import { Kvm } from '../../src/wrappers/kvm';

describe('KvmError', () => {
  it('reads like a Node SystemError', () => {
    const e = new KvmError(errnoOf('EEXIST'), 'ioctl', { request: 'KVM_CREATE_VCPU' });
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('KvmError');
    expect(e.code).toBe('EEXIST');
    expect(e.errno).toBe(-errnoOf('EEXIST'));
    expect(getSystemErrorName(e.errno)).toBe('EEXIST');
    expect(e.syscall).toBe('ioctl');
    expect(e.request).toBe('KVM_CREATE_VCPU');
    expect(e.message).toBe('EEXIST: file already exists, ioctl KVM_CREATE_VCPU');
  });

  it('accepts negative errnos, paths and details', () => {
    const e = new KvmError(-errnoOf('ENOENT'), 'open', { path: '/dev/kvm' });
    expect([e.code, e.errno, e.path]).toEqual(['ENOENT', -errnoOf('ENOENT'), '/dev/kvm']);
    expect(e.message).toBe("ENOENT: no such file or directory, open '/dev/kvm'");
    const d = KvmError.fromCode('ENOMEM', 'ioctl', { request: 'KVM_GET_CPUID2', detail: 'more than 256 entries' });
    expect(d.message).toBe('ENOMEM: not enough memory, ioctl KVM_GET_CPUID2 (more than 256 entries)');
  });

  it('names errnos libuv does not know', () => {
    const e = new KvmError(errnoOf('EHWPOISON'), 'ioctl', 'KVM_RUN');
    expect(e.code).toBe('EHWPOISON');
    expect(e.request).toBe('KVM_RUN');
  });

  it('is what the native addon throws', () => {
    // Thrown from C++ for a failed open: the class defined in TypeScript, with every field.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { nativeBackend } = require('../../src/backend/native') as typeof import('../../src/backend/native');
    let err: unknown;
    try {
      nativeBackend().open('/nonexistent/kvm', 2);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KvmError);
    expect(err).toMatchObject({ code: 'ENOENT', syscall: 'open', path: '/nonexistent/kvm' });
  });
});

describe('ERR_KVM_VCPU_RUNNING', () => {
  it("names every way to reach a vCPU that a worker runs: run.call(), the pipeline's ctx.vcpu, stopping", () => {
    using kvm = new Kvm({ backend: new MockBackend() });
    const vcpu = kvm.createVm().createVcpu(0);
    vcpu.setOwner('a VcpuRuntime worker thread'); // what VcpuRuntime#start() does
    expect(() => vcpu.getRegs()).toThrow(
      expect.objectContaining({
        code: 'ERR_KVM_VCPU_RUNNING',
        message:
          'VcpuFd 0 is running in a VcpuRuntime worker thread; from the main thread, route the call to it with ' +
          "run.call(method, ...args), e.g. await run.call('getRegs'); in the pipeline, use ctx.vcpu; " +
          'or stop the run first',
      }),
    );
    vcpu.setOwner(undefined);
    expect(vcpu.getRegs().rip).toBeDefined();
  });
});
