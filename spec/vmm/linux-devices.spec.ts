/**
 * The Linux VM's worker pipeline (src/vmm/linux-devices.ts) on the mock, through `runInThread`
 * with scripted exits: the same pipeline `bootLinux()` loads in the vCPU's worker thread.
 */
import { join } from 'node:path';
import { of } from 'rxjs';
import { MockBackend } from '../../src/backend/mock/index';
import { emulationFailure, hypercall, ioIn, ioOut, shutdown } from '../../src/backend/mock/exits';
import { runInThread } from '../../src/runtime/in-thread';
import { Kvm } from '../../src/wrappers/kvm';
import { createLinuxMachine, type LinuxMachine } from '../../src/vmm/boot';
import linuxDevices, { type LinuxDevicesOptions, type LinuxDevicesStats } from '../../src/vmm/linux-devices';
import { buildElf } from './images';

const MiB = 1 << 20;
const ENTRY = 0x1000000;

describe('linux-devices pipeline (mock, runInThread)', () => {
  let backend: MockBackend;
  let kvm: Kvm;
  let m: LinuxMachine;
  let events: Array<{ channel: string; data: unknown }>;

  beforeEach(() => {
    backend = new MockBackend();
    kvm = new Kvm({ backend });
    const kernel = buildElf({
      entry: BigInt(ENTRY),
      segments: [{ paddr: ENTRY, data: Uint8Array.of(0xf4), memsz: 0x1000 }],
    });
    m = createLinuxMachine(kvm, { kernel, memSize: 32 * MiB });
    events = [];
  });
  afterEach(() => {
    m.close();
    kvm.close();
  });

  const options: LinuxDevicesOptions = { memSize: 32 * MiB, trace: true };
  const run = (extra: Parameters<typeof runInThread>[2] = {}) =>
    runInThread(m.vcpu, linuxDevices, {
      options,
      onEmit: (channel, data) => events.push({ channel, data }),
      record: true,
      ...extra,
    });
  const text = (channel: string) =>
    Buffer.concat(events.filter((e) => e.channel === channel).map((e) => Buffer.from(e.data as Uint8Array))).toString(
      'latin1',
    );
  const statsEvent = () => events.find((e) => e.channel === 'stats')?.data as LinuxDevicesStats;
  const irqLine = (n: number) => (backend.vms[0].extra.get('irqchip') as { lines: Map<number, boolean> }).lines.get(n);

  it('COM1 output reaches ctx.emit("tx"); an i8042 reset ends the run cleanly with a reset event and stats', async () => {
    backend
      .vcpu(0)
      .script([ioOut(0x3f8, 'Linux version'), ioOut(0x3f8, '\r\n'), ioOut(0x64, [0xfe]), ioOut(0x3f8, 'never')]);
    const outcome = await run();
    expect(outcome).toMatchObject({ reason: 'completed', exits: 3, lastExit: 'IoOut' });
    expect(text('tx')).toBe('Linux version\r\n');
    expect(events.filter((e) => e.channel === 'reset').map((e) => e.data)).toEqual(['i8042']);
    const stats = statsEvent();
    expect(stats.exits).toMatchObject({ total: 3, counts: { IoOut: 3 }, ports: { '0x3f8': 2, '0x64': 1 } });
    expect(stats.emulation).toEqual({ int3: 0, fwait: 0, clac: 0, stac: 0 });
    expect(backend.vcpu(0).remaining).toBe(1); // the exit after the reset never ran
  });

  it('the UART interrupt drives IRQ 4 on the in-kernel irqchip, and input from ctx.receive("stdin") is read from RBR', async () => {
    backend.vcpu(0).script([ioOut(0x3f9, [0x03]), ioIn(0x3fa), ioIn(0x3f8), ioIn(0x3fd), ioOut(0x64, [0xfe])]);
    let lineAfterIer: boolean | undefined;
    const input = of({ channel: 'stdin', data: Uint8Array.of(0x41) });
    const outcome = await runInThread(
      m.vcpu,
      (exits$, ctx) => {
        exits$.subscribe((e) => {
          if (e.kind === 'IoIn' && e.port === 0x3fa) lineAfterIer = irqLine(4);
        });
        return linuxDevices(exits$, ctx);
      },
      { options, input, record: true, onEmit: (channel, data) => events.push({ channel, data }) },
    );
    expect(lineAfterIer).toBe(true); // IER = RDI | THRI with data waiting: IRQ 4 high
    const answers = outcome
      .recording!.filter((r) => r.kind === 'IoIn')
      .map((r) => (r as { answer: number[] }).answer[0]);
    expect(answers[0] & 0x0f).toBe(0x04); // IIR: received data (priority over THR empty)
    expect(answers[1]).toBe(0x41); // RBR: the byte sent on 'stdin'
    expect(answers[2] & 0x01).toBe(0); // LSR: no more data
  });

  it('CMOS reports the memory size; ports no device models read as an open bus (counted)', async () => {
    backend
      .vcpu(0)
      .script([
        ioOut(0x70, [0x35]),
        ioIn(0x71),
        ioIn(0x2f8 + 5),
        ioIn(0xcfc, 4),
        ioOut(0x378, [1]),
        ioOut(0x64, [0xfe]),
      ]);
    const outcome = await run();
    const ins = outcome.recording!.filter((r) => r.kind === 'IoIn').map((r) => (r as { answer: number[] }).answer);
    expect(ins[0]).toEqual([(((32 - 16) * MiB) / 65536) >> 8]); // 0x35: RAM above 16 MiB in 64 KiB units, high byte (0x100 >> 8)
    expect(ins[1]).toEqual([0xff]); // COM2 LSR: nothing there
    expect(ins[2]).toEqual([0xff, 0xff, 0xff, 0xff]); // PCI config data with no device
    expect(statsEvent().openBus).toBe(2); // COM2 and the parallel port (PCI is modelled)
  });

  it('a triple fault (Shutdown) ends the run cleanly as a reset', async () => {
    backend.vcpu(0).script([ioOut(0x3f8, 'panic'), shutdown(), ioOut(0x3f8, 'never')]);
    const outcome = await run();
    expect(outcome).toMatchObject({ reason: 'completed', exits: 2, lastExit: 'Shutdown' });
    expect(events.filter((e) => e.channel === 'reset').map((e) => e.data)).toEqual(['triple-fault']);
    expect(text('tx')).toBe('panic');
  });

  it('an emulation failure at int3 is fixed up (RIP + 1, #BP injected) and the run goes on', async () => {
    m.vcpu.setRegs({ ...m.vcpu.getRegs(), rip: 0x1000000n });
    backend.vcpu(0).script([emulationFailure([0xcc]), ioOut(0x3f8, 'B'), ioOut(0x64, [0xfe])]);
    let ripAfter: bigint | undefined;
    let exception: unknown;
    const outcome = await runInThread(
      m.vcpu,
      (exits$, ctx) => {
        exits$.subscribe((e) => {
          if (e.kind === 'IoOut' && e.port === 0x3f8) {
            ripAfter = ctx.vcpu.getRegs().rip;
            exception = ctx.vcpu.getVcpuEvents().exception;
          }
        });
        return linuxDevices(exits$, ctx);
      },
      { options, onEmit: (channel, data) => events.push({ channel, data }) },
    );
    expect(outcome).toMatchObject({ reason: 'completed', exits: 3 });
    expect(ripAfter).toBe(0x1000001n);
    expect(exception).toEqual({ injected: 1, nr: 3, hasErrorCode: 0, pending: 0, errorCode: 0 });
    expect(statsEvent().emulation).toEqual({ int3: 1, fwait: 0, clac: 0, stac: 0 });
    expect(text('tx')).toBe('B');
  });

  it('an emulation failure without a fallback ends the run with an error naming RIP and the bytes', async () => {
    m.vcpu.setRegs({ ...m.vcpu.getRegs(), rip: 0x1000040n });
    backend.vcpu(0).script([ioOut(0x3f8, 'x'), emulationFailure([0x48, 0x0f, 0xc7, 0x0e]), ioOut(0x3f8, 'never')]);
    const failure = run();
    await expect(failure).rejects.toMatchObject({ name: 'EmulationFailureError', code: 'ERR_KVM_EMULATION_FAILURE' });
    await expect(failure).rejects.toThrow(/at rip 0x1000040, instruction bytes 48 0f c7 0e: no userspace fallback/);
    expect(text('tx')).toBe('x');
    expect(statsEvent().exits?.counts).toEqual({ IoOut: 1, InternalError: 1 }); // stats are sent on errors too
  });

  it('an exit no device and no fallback handles (a hypercall) is an error naming it and RIP', async () => {
    m.vcpu.setRegs({ ...m.vcpu.getRegs(), rip: 0x1000010n });
    backend.vcpu(0).script([hypercall(9n)]);
    await expect(run()).rejects.toMatchObject({
      code: 'ERR_KVM_UNHANDLED_EXIT',
      message: 'unhandled Hypercall exit: nr 0x9, rip 0x1000010',
    });
  });

  describe("your own devices (options.devices), in front of the VM's", () => {
    const FIXTURE = join(__dirname, '../fixtures/linux-extra-device.ts');

    it('see exits first: port 0x510 is theirs (reads, writes, events), COM1 and the reset still work', async () => {
      backend.vcpu(0).script([ioOut(0x510, [7]), ioIn(0x510), ioOut(0x3f8, 'ok'), ioIn(0x511), ioOut(0x64, [0xfe])]);
      const outcome = await run({
        options: { ...options, devices: { module: FIXTURE, options: { value: 0x5a } } },
      });
      expect(outcome).toMatchObject({ reason: 'completed', exits: 5 });
      expect(events.filter((e) => e.channel === 'mydev').map((e) => e.data)).toEqual([7]);
      const ins = outcome.recording!.filter((r) => r.kind === 'IoIn').map((r) => (r as { answer: number[] }).answer);
      expect(ins).toEqual([[0x5a], [0xff]]); // 0x510 answered by the stage; 0x511 is nobody's: open bus
      expect(text('tx')).toBe('ok');
      expect(statsEvent().openBus).toBe(1);
      expect(events.filter((e) => e.channel === 'reset').map((e) => e.data)).toEqual(['i8042']);
    });

    it('a module without that export, or that cannot be loaded, fails the run with the reason', async () => {
      backend.vcpu(0).script([ioOut(0x3f8, 'never')]);
      await expect(
        run({ options: { ...options, devices: { module: FIXTURE, export: 'notAFunction' } } }),
      ).rejects.toMatchObject({
        name: 'TypeError',
        code: 'ERR_INVALID_ARG_VALUE',
        message: expect.stringMatching(/has no export 'notAFunction' that is a function/),
      });
      await expect(
        run({ options: { ...options, devices: { module: join(__dirname, 'no-such-module.js') } } }),
      ).rejects.toMatchObject({ code: 'MODULE_NOT_FOUND' });
      expect(backend.vcpu(0).remaining).toBe(1); // the guest never ran
    });
  });
});
