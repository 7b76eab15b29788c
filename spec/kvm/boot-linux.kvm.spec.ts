/**
 * bootLinux() on the real kernel with a crafted 64-bit "kernel": the worker runtime, COM1, the
 * i8042 reset, and your own device models (`devices`) with their events and posted values.
 */
import { join } from 'node:path';
import { firstValueFrom, filter, toArray } from 'rxjs';
import { bootLinux } from '../../src/vmm/linux';
import { buildElf } from '../vmm/images';
import { describeKvm, expectCode } from '../helpers/kvm';

const FIXTURE = join(__dirname, '../fixtures/linux-extra-device.ts');

// 0x1000000: mov $0x510,%dx; mov $7,%al; out %al,(%dx)
//            1: in (%dx),%al; cmp $0x5a,%al; je 1b          (spins while the register reads 0x5a)
//            mov $0x3f8,%dx; out %al,(%dx); mov $0xfe,%al; out %al,$0x64; hlt
const CODE = Uint8Array.of(
  0x66, 0xba, 0x10, 0x05, 0xb0, 0x07, 0xee, 0xec, 0x3c, 0x5a, 0x74, 0xfb,
  0x66, 0xba, 0xf8, 0x03, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
); // prettier-ignore
const kernel = () => buildElf({ entry: 0x1000000n, segments: [{ paddr: 0x1000000, data: CODE, memsz: 0x1000 }] });

describeKvm('bootLinux with your own devices', () => {
  it('runs the stage in the vCPU thread: its events reach events$, post() reaches ctx.receive()', async () => {
    const vm = bootLinux({
      kernel: kernel(),
      memSize: 32 << 20,
      devices: { pipeline: FIXTURE, options: { value: 0x5a } },
      signal: AbortSignal.timeout(30_000),
    });
    const mine = firstValueFrom(vm.events$.pipe(filter((e) => e.channel === 'mydev')));
    const output = firstValueFrom(vm.output$.pipe(toArray()));
    expect(await mine).toEqual({ channel: 'mydev', data: 7 });
    // the guest spins reading 0x5a from port 0x510 until the register changes: vm.call() sees it there
    const { rip } = await vm.call('getRegs');
    expect(rip >= 0x1000007n && rip <= 0x100000cn).toBe(true);
    vm.post('set', 0x41);
    const outcome = await vm.done;
    expect(outcome).toMatchObject({ reason: 'reset', resetBy: 'i8042', openBus: 0 });
    await expect(vm.call('getRegs')).rejects.toMatchObject({ code: 'ERR_KVM_CLOSED' });
    expect(Buffer.concat(await output).toString('latin1')).toBe('A');
  });

  it('a paused vCPU has finished its last IN: RIP past it and the value in AL (a saved state would not run it twice)', async () => {
    const vm = bootLinux({
      kernel: kernel(),
      memSize: 32 << 20,
      devices: { pipeline: FIXTURE, options: { value: 0x5a } },
      signal: AbortSignal.timeout(60_000),
    });
    await firstValueFrom(vm.events$.pipe(filter((e) => e.channel === 'mydev')));
    // The guest spins on `in (%dx),%al` (at 0x1000007) from port 0x510, which reads 0x5a: nearly
    // every pause lands just after one of those exits.
    const seen: string[] = [];
    for (let i = 0; i < 20; i++) {
      await vm.pause();
      const { rip, rax } = await vm.call('getRegs');
      seen.push(
        rip === 0x1000007n ? 'on the IN' : rip === 0x1000008n && (rax & 0xffn) !== 0x5an ? 'AL not loaded' : 'ok',
      );
      vm.resume();
    }
    expect(seen).toEqual(Array(20).fill('ok'));
    vm.post('set', 0x41);
    expect(await vm.done).toMatchObject({ reason: 'reset', resetBy: 'i8042' });
  });

  it('checks the option and the channel', async () => {
    for (const pipeline of [42, '', null]) {
      expectCode(
        () => bootLinux({ kernel: kernel(), memSize: 32 << 20, devices: { pipeline: pipeline as never } }),
        'TypeError',
        'ERR_INVALID_ARG_VALUE',
      );
    }
    expectCode(
      () => bootLinux({ kernel: kernel(), memSize: 32 << 20, devices: { pipeline: FIXTURE, export: 1 as never } }),
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
    );
    expectCode(
      () => bootLinux({ kernel: kernel(), memSize: 32 << 20, devices: { pipeline: FIXTURE, options: () => 1 } }),
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
    );
    const vm = bootLinux({
      kernel: kernel(),
      memSize: 32 << 20,
      devices: { pipeline: FIXTURE, options: { value: 0x5a } },
    });
    expectCode(() => vm.post('stdin', 1), 'TypeError', 'ERR_INVALID_ARG_VALUE');
    expectCode(() => vm.post(7 as never, 1), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expect((await vm.stop()).reason).toBe('stopped');
  });

  it('a devices module that fails to load ends the run with that error', async () => {
    const vm = bootLinux({
      kernel: kernel(),
      memSize: 32 << 20,
      devices: { pipeline: FIXTURE, export: 'notAFunction' },
    });
    const outcome = await vm.done;
    expect(outcome.reason).toBe('error');
    expect(outcome.error).toMatchObject({ code: 'ERR_INVALID_ARG_VALUE' });
  });

  it('loads an ES-module devices stage; one with top-level await ends the run with a reason that says so', async () => {
    const vm = bootLinux({
      kernel: kernel(),
      memSize: 32 << 20,
      devices: { pipeline: join(__dirname, '../fixtures/linux-esm-device.mjs') },
      signal: AbortSignal.timeout(30_000),
    });
    const mine = firstValueFrom(vm.events$.pipe(filter((e) => e.channel === 'mydev')));
    const output = firstValueFrom(vm.output$.pipe(toArray()));
    expect(await vm.done).toMatchObject({ reason: 'reset', resetBy: 'i8042', openBus: 0 });
    expect(await mine).toEqual({ channel: 'mydev', data: 7 });
    expect(Buffer.concat(await output).toString('latin1')).toBe('A'); // the stage answered 0x41

    const tla = bootLinux({
      kernel: kernel(),
      memSize: 32 << 20,
      devices: { pipeline: join(__dirname, '../fixtures/linux-tla-device.mjs') },
    });
    const outcome = await tla.done;
    expect(outcome.reason).toBe('error');
    expect(outcome.error).toMatchObject({
      code: 'ERR_INVALID_ARG_VALUE',
      message: expect.stringMatching(/top-level await/),
    });
  });
});
