/**
 * The in-thread runner and the synchronous exit Observable on the mock backend.
 */
import { Observable, takeWhile, toArray, lastValueFrom, map, firstValueFrom } from 'rxjs';
import { MockBackend, hlt, ioIn, ioOut, mmioRead } from '../../src/backend/mock/index';
import { holdVcpu } from '../../src/runtime/hold';
import { runInThread, vcpuExits } from '../../src/runtime/in-thread';
import { failOnUnhandled, untilHalt } from '../../src/runtime/operators/index';
import { Kvm } from '../../src/wrappers/kvm';
import type { VcpuExit } from '../../src/wrappers/vcpu-exit';

function setup() {
  const backend = new MockBackend();
  const kvm = new Kvm({ backend });
  const vm = kvm.createVm();
  const vcpu = vm.createVcpu(0);
  return { backend, kvm, vm, vcpu };
}

/** Answers IoIn with `value` (after `delayMs` when given), passes the rest, completes on Hlt. */
const answering = (value: number, delayMs?: number) => (exits$: Observable<VcpuExit>) =>
  new Observable<VcpuExit>((sub) =>
    exits$.subscribe({
      next: (e) => {
        if (e.kind === 'IoIn') {
          if (delayMs === undefined) e.data[0] = value;
          else {
            const d = e.data;
            holdVcpu(e, new Promise<void>((r) => setTimeout(() => ((d[0] = value), r()), delayMs)));
          }
        } else if (e.kind === 'Hlt') sub.complete();
        else sub.next(e);
      },
      error: (err: unknown) => sub.error(err),
    }),
  );

describe('vcpuExits (synchronous, mock backend)', () => {
  it('emits the scripted exits in order and delivers answers on the next run', async () => {
    const { backend, vcpu, kvm } = setup();
    backend.vcpu(0).script([ioOut(0x3f8, 'H'), ioIn(0x60), mmioRead(0xd000_0000n, 4), hlt()]);
    const kinds: string[] = [];
    await lastValueFrom(
      vcpuExits(vcpu).pipe(
        takeWhile((e) => e.kind !== 'Hlt', true),
        map((e) => {
          kinds.push(e.kind);
          if (e.kind === 'IoIn') e.data[0] = 0xab;
          if (e.kind === 'MmioRead') e.data.set([1, 2, 3, 4]);
          return e;
        }),
      ),
    );
    expect(kinds).toEqual(['IoOut', 'IoIn', 'MmioRead', 'Hlt']);
    expect(backend.vcpu(0).answers).toEqual([
      { exit: 'IoIn(0x60)', answer: Uint8Array.of(0xab) },
      { exit: 'MmioRead(0xd0000000)', answer: Uint8Array.of(1, 2, 3, 4) },
    ]);
    expect(vcpu.getRegs().rax & 0xffn).toBe(0xabn);
    kvm.close();
  });

  it('errors when the vCPU fails (the mock has no exit left: EINTR)', async () => {
    const { backend, vcpu, kvm } = setup();
    backend.vcpu(0).script([hlt()]);
    await expect(
      lastValueFrom(
        vcpuExits(vcpu).pipe(
          map((e) => e.kind),
          toArray(),
        ),
      ),
    ).rejects.toMatchObject({ code: 'EINTR', request: 'KVM_RUN' });
    kvm.close();
  });
});

describe('vcpuExits with operators that complete or error', () => {
  it('runs the vCPU no further once untilHalt() completed', async () => {
    const { backend, vcpu, kvm } = setup();
    backend.vcpu(0).script([ioOut(1, [1]), hlt(), hlt(), hlt()]);
    const kinds = await lastValueFrom(
      vcpuExits(vcpu).pipe(
        untilHalt(),
        map((e) => e.kind),
        toArray(),
      ),
    );
    expect(kinds).toEqual(['IoOut']);
    expect(backend.vcpu(0).runs).toBe(2);
    kvm.close();
  });

  it('runs the vCPU no further once failOnUnhandled() errored', async () => {
    const { backend, vcpu, kvm } = setup();
    backend.vcpu(0).script([ioOut(0x80, [1]), hlt(), hlt()]);
    await expect(firstValueFrom(vcpuExits(vcpu).pipe(failOnUnhandled()))).rejects.toMatchObject({
      code: 'ERR_KVM_UNHANDLED_EXIT',
    });
    expect(backend.vcpu(0).runs).toBe(1);
    kvm.close();
  });
});

describe('runInThread (mock backend)', () => {
  it('completes with the outcome when the pipeline completes', async () => {
    const { backend, vcpu, kvm } = setup();
    backend.vcpu(0).script([ioIn(0x60), hlt()]);
    await expect(runInThread(vcpu, answering(0x11))).resolves.toEqual({
      reason: 'completed',
      exits: 2,
      lastExit: 'Hlt',
    });
    expect(vcpu.getRegs().rax & 0xffn).toBe(0x11n);
    kvm.close();
  });

  it('holds the vCPU until an async handler settles', async () => {
    const { backend, vcpu, kvm } = setup();
    backend.vcpu(0).script([ioIn(0x60), hlt()]);
    await runInThread(vcpu, answering(0x22, 20));
    expect(backend.vcpu(0).answers[0].answer).toEqual(Uint8Array.of(0x22));
    kvm.close();
  });

  it('fails on an unhandled exit, naming it', async () => {
    const { backend, vcpu, kvm } = setup();
    backend.vcpu(0).script([ioOut(0x80, [1]), hlt()]);
    await expect(runInThread(vcpu, answering(0))).rejects.toMatchObject({
      code: 'ERR_KVM_UNHANDLED_EXIT',
      message: expect.stringContaining('IoOut exit: port 0x80, size 1, rip 0x'),
    });
    kvm.close();
  });

  it('ignores unhandled exits on request, reads answering all-ones', async () => {
    const { backend, vcpu, kvm } = setup();
    backend.vcpu(0).script([ioIn(0x61), hlt()]);
    const passAll = (exits$: Observable<VcpuExit>) =>
      new Observable<VcpuExit>((sub) => exits$.subscribe((e) => (e.kind === 'Hlt' ? sub.complete() : sub.next(e))));
    await runInThread(vcpu, passAll, { unhandled: 'ignore' });
    expect(backend.vcpu(0).answers[0].answer).toEqual(Uint8Array.of(0xff));
    kvm.close();
  });
});
