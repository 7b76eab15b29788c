/**
 * Argument validation of the VmFd platform/interrupt/device methods, DeviceFd, EventFd and
 * IoEventAddress (mock backend): TypeError/RangeError with Node-style codes, before any ioctl.
 */
import { MockBackend } from '../../src/backend/mock/index';
import { EventFd } from '../../src/wrappers/event-fd';
import { IoEventAddress, NoDatamatch, Datamatch, type IoEventDatamatch } from '../../src/wrappers/io-event';
import { Kvm } from '../../src/wrappers/kvm';
import { MsrFilterDefaultAction } from '../../src/wrappers/vm-args';
import type { VmFd } from '../../src/wrappers/vm-fd';
import { expectCode } from '../helpers/kvm';

describe('VmFd argument checks (mock)', () => {
  let backend: MockBackend;
  let kvm: Kvm;
  let vm: VmFd;
  let e: EventFd;
  beforeEach(() => {
    backend = new MockBackend();
    kvm = new Kvm({ backend });
    vm = kvm.createVm();
    e = new EventFd({ backend });
  });
  afterEach(() => {
    e.close();
    kvm.close();
  });
  const noIoctl = (fn: () => unknown, name: 'TypeError' | 'RangeError', code: string) => {
    const before = backend.calls.length;
    expectCode(fn, name, code);
    expect(backend.calls.length).toBe(before);
  };
  const any = (v: unknown) => v as never;

  it('x86 platform', () => {
    noIoctl(() => vm.setTssAddress(-1), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => vm.setTssAddress(any('0x1000')), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    noIoctl(() => vm.setIdentityMapAddress(1n << 64n), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => vm.getIrqchip(-1), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => vm.setIrqchip(any(null)), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    noIoctl(() => vm.setIrqchip({ chipId: 0, chip: {} }), 'TypeError', 'ERR_INVALID_ARG_VALUE');
    noIoctl(() => vm.setIrqchip({ chipId: 0, chip: { pic: { irqBase: 256 } } }), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => vm.createPit2({ flags: -1 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => vm.createPit2(any({ bogus: 1 })), 'TypeError', 'ERR_INVALID_ARG_VALUE');
    noIoctl(() => vm.setPit2(any(5)), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    noIoctl(() => vm.setClock({ clock: -1n }), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => vm.setMsrFilter(any(-1), []), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => vm.setMsrFilter(MsrFilterDefaultAction.ALLOW, any({})), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    noIoctl(
      () => vm.setMsrFilter(MsrFilterDefaultAction.ALLOW, [{ flags: 1, base: 0, msrCount: 8, bitmap: any([1]) }]),
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
    );
    noIoctl(
      () => vm.setMsrFilterUnchecked(any({ flags: 0, ranges: new Array(17).fill({}) })),
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
    );
  });

  it('interrupts and events', () => {
    noIoctl(() => vm.signalMsi({ data: 1.5 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => vm.setGsiRouting(any({})), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    noIoctl(() => vm.setGsiRouting([{ gsi: -1, type: 1 }]), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(
      () => vm.setGsiRouting([{ gsi: 1, type: 9, u: { irqchip: {}, msi: {} } }]),
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
    );
    noIoctl(() => vm.registerIrqfd(any(e.asRawFd()), 4), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    noIoctl(() => vm.registerIrqfd(e, -1), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => vm.registerIrqfdWithResample(e, any(null), 4), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    noIoctl(() => vm.setIrqLine(4, any(1)), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    noIoctl(
      () => vm.registerIoevent(e, any({ kind: 'pio', addr: 1n }), NoDatamatch),
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
    );
    const dm = (d: unknown) => () => vm.registerIoevent(e, IoEventAddress.pio(0xc0), d as IoEventDatamatch);
    noIoctl(dm({ value: 1, length: 3 }), 'TypeError', 'ERR_INVALID_ARG_VALUE');
    noIoctl(dm({ value: 1, length: 0 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(dm({ value: 0x100, length: 1 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(dm({ value: 0x1_0000_0000n, length: 4 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(dm(undefined), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expect(Datamatch.u16(0x1337)).toEqual({ value: 0x1337, length: 2 });
    expectCode(() => IoEventAddress.pio(-1), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => IoEventAddress.mmio(any('x')), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expect(String(IoEventAddress.mmio(0x1000n))).toBe('Mmio(0x1000)');
    expect(Object.isFrozen(IoEventAddress.pio(1))).toBe(true);
    // an EventFd of another backend
    const other = new EventFd({ backend: new MockBackend() });
    noIoctl(() => vm.registerIrqfd(other, 4), 'TypeError', 'ERR_INVALID_ARG_VALUE');
    other.close();
  });

  it('devices and memory', () => {
    noIoctl(() => vm.createDevice(any(null)), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    noIoctl(() => vm.createDevice({ type: -1 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => vm.createGuestMemfd({ size: -1 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(
      () => vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0n, memorySize: 0, guestMemfd: any(3) }),
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
    );
    noIoctl(
      () => vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0n, memorySize: 0x1000 }),
      'RangeError',
      'ERR_OUT_OF_RANGE',
    );
    noIoctl(() => vm.setMemoryAttributes({ size: -1n }), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => vm.encryptOp(any([1, 2])), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    noIoctl(() => vm.encryptOpSev({ id: -1 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => vm.registerEncMemoryRegion(any({ addr: 'x', size: 0n })), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    const dev = vm.createDevice({ type: 4 })!;
    noIoctl(() => dev.setDeviceAttr({ group: 1, attr: -1 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    noIoctl(() => dev.setDeviceAttr({ group: 1, attr: 1, value: any([1]) }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    noIoctl(() => dev.hasDeviceAttr(any(undefined)), 'TypeError', 'ERR_INVALID_ARG_TYPE');
  });

  it('EventFd options and values', () => {
    expectCode(() => new EventFd({ backend, nonBlocking: false }), 'TypeError', 'ERR_INVALID_ARG_VALUE');
    expectCode(() => new EventFd({ backend, initval: -1 }), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => new EventFd({ backend, semaphore: any('yes') }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(() => e.write(-1n), 'RangeError', 'ERR_OUT_OF_RANGE');
    expect(() => e.readAsync(any({}))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    const s = new EventFd({ backend, semaphore: true });
    expect(s.flags).toEqual({ nonBlocking: true, semaphore: true });
    s.close();
    s.close(); // idempotent
  });

  it('throws ERR_KVM_CLOSED after close for every new method', () => {
    const dev = vm.createDevice({ type: 4 })!;
    vm.close();
    for (const fn of [
      () => vm.setTssAddress(0),
      () => vm.createIrqChip(),
      () => vm.getIrqchip(0),
      () => vm.getPit2(),
      () => vm.getClock(),
      () => vm.setMsrFilter(0, []),
      () => vm.signalMsi({}),
      () => vm.setGsiRouting([]),
      () => vm.registerIrqfd(e, 1),
      () => vm.registerIoevent(e, IoEventAddress.pio(1), NoDatamatch),
      () => vm.setIrqLine(1, true),
      () => vm.createDevice({ type: 4 }),
      () => vm.createGuestMemfd({ size: 4096 }),
      () => vm.setMemoryAttributes({}),
      () => dev.hasDeviceAttr({ group: 1, attr: 1 }),
    ]) {
      expectCode(fn, 'KvmClosedError', 'ERR_KVM_CLOSED');
    }
  });
});
