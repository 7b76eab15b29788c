/**
 * VmFd's x86 platform, interrupt/event and device/memory methods, against the mock and the real
 * kernel. Expected errnos are what Linux 6.18 returned on this project's host (notes §5).
 */
import { structBytes } from '../../src/abi/codec';
import { ioctls, kvm as K } from '../../src/abi/kvm-constants';
import { kvm_ioeventfd } from '../../src/abi/layouts';
import type { IoctlBackend } from '../../src/backend/types';
import { DeviceFd } from '../../src/wrappers/device-fd';
import { EventFd } from '../../src/wrappers/event-fd';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { IoEventAddress, NoDatamatch } from '../../src/wrappers/io-event';
import { Kvm } from '../../src/wrappers/kvm';
import { MsrFilterDefaultAction, MsrFilterRangeFlags } from '../../src/wrappers/vm-args';
import type { VmFd } from '../../src/wrappers/vm-fd';
import { contractBackends, expectCode, expectKvmError } from '../helpers/kvm';

describe.each(contractBackends())('VmFd contract: %s', (_name, make) => {
  let backend: IoctlBackend;
  let kvm: Kvm;
  let vm: VmFd;
  const owned: Array<{ close(): void }> = [];
  beforeEach(() => {
    backend = make();
    kvm = new Kvm({ backend });
    vm = kvm.createVm();
  });
  afterEach(() => {
    kvm.close();
    for (const o of owned.splice(0).reverse()) o.close();
  });
  const evt = () => {
    const e = new EventFd({ backend });
    owned.push(e);
    return e;
  };
  const mem = (size: number) => {
    const m = GuestMemory.anonymous(size, { backend });
    owned.push(m);
    return m;
  };

  describe('x86 platform', () => {
    it('sets the TSS address below 4 GiB only', () => {
      vm.setTssAddress(0xfffb_d000);
      vm.setTssAddress(0xffff_d000);
      expectKvmError(() => vm.setTssAddress(0xffff_e000), 'EINVAL', 'KVM_SET_TSS_ADDR');
      expectKvmError(() => vm.setTssAddress(0x1_0000_0000n), 'EINVAL', 'KVM_SET_TSS_ADDR');
    });

    it('sets the identity map before a vCPU exists, EINVAL after', () => {
      vm.setIdentityMapAddress(0xfffb_c000n);
      vm.setIdentityMapAddress(0xfffb_c000n);
      vm.createVcpu(0);
      expectKvmError(() => vm.setIdentityMapAddress(0xfffb_c000n), 'EINVAL', 'KVM_SET_IDENTITY_MAP_ADDR');
    });

    it('creates the irqchip once: EEXIST twice, EINVAL after a vCPU', () => {
      vm.createIrqChip();
      expectKvmError(() => vm.createIrqChip(), 'EEXIST', 'KVM_CREATE_IRQCHIP');
      const vm2 = kvm.createVm();
      vm2.createVcpu(0);
      expectKvmError(() => vm2.createIrqChip(), 'EINVAL', 'KVM_CREATE_IRQCHIP');
    });

    it('gives ENXIO for irqchip state without an irqchip, EINVAL for a bad chip id', () => {
      expectKvmError(() => vm.getIrqchip(0), 'ENXIO', 'KVM_GET_IRQCHIP');
      expectKvmError(() => vm.setIrqchip({ chipId: 0, chip: { pic: {} } }), 'ENXIO', 'KVM_SET_IRQCHIP');
      vm.createIrqChip();
      expectKvmError(() => vm.getIrqchip(3), 'EINVAL', 'KVM_GET_IRQCHIP');
      expectKvmError(
        () => vm.setIrqchip({ chipId: 3, chip: { dummy: new Uint8Array(512) } }),
        'EINVAL',
        'KVM_SET_IRQCHIP',
      );
    });

    it('round-trips the PIC master (irq_base 10) and the IOAPIC', () => {
      vm.createIrqChip();
      const pic = vm.getIrqchip(K.KVM_IRQCHIP_PIC_MASTER);
      expect(pic.chipId).toBe(0);
      pic.chip.pic.irqBase = 10;
      vm.setIrqchip(pic);
      expect(vm.getIrqchip(K.KVM_IRQCHIP_PIC_MASTER).chip.pic).toEqual(pic.chip.pic);
      const io = vm.getIrqchip(K.KVM_IRQCHIP_IOAPIC);
      expect(io.chip.ioapic.baseAddress).toBe(0xfec0_0000n);
      expect(io.chip.ioapic.redirtbl).toHaveLength(24);
      io.chip.ioapic.redirtbl[3].bits = 0x31n; // vector 0x31, unmasked
      vm.setIrqchip(io);
      expect(vm.getIrqchip(K.KVM_IRQCHIP_IOAPIC).chip.ioapic.redirtbl[3].fields.vector).toBe(0x31);
    });

    it('creates the PIT once (ENOENT without irqchip, EEXIST twice) and round-trips its state', () => {
      expectKvmError(() => vm.createPit2({ flags: 0 }), 'ENOENT', 'KVM_CREATE_PIT2');
      expectKvmError(() => vm.getPit2(), 'ENXIO', 'KVM_GET_PIT2');
      vm.createIrqChip();
      vm.createPit2({ flags: 0 });
      expectKvmError(() => vm.createPit2(), 'EEXIST', 'KVM_CREATE_PIT2');
      const state = vm.getPit2();
      expect(state.channels).toHaveLength(3);
      expect(state.channels[0].count).toBe(65536);
      vm.setPit2(state);
      const back = vm.getPit2();
      const strip = (s: typeof state) => s.channels.map(({ countLoadTime: _t, ...c }) => c);
      expect(strip(back)).toEqual(strip(state));
      expect(back.flags).toBe(state.flags);
    });

    it('sets the kvmclock: 10 < new < original, and rejects unknown flags', async () => {
      await new Promise((r) => setTimeout(r, 5));
      const original = vm.getClock().clock;
      vm.setClock({ clock: 10n });
      const now = vm.getClock().clock;
      expect(now).toBeGreaterThan(10n);
      expect(now).toBeLessThan(original);
      expectKvmError(() => vm.setClock({ clock: 10n, flags: 1 }), 'EINVAL', 'KVM_SET_CLOCK');
    });

    it('applies the MSR filter rules', () => {
      expect(kvm.checkExtensionRaw(K.KVM_CAP_X86_MSR_FILTER)).toBeGreaterThan(0);
      vm.setMsrFilter(MsrFilterDefaultAction.ALLOW, []);
      expectKvmError(() => vm.setMsrFilter(MsrFilterDefaultAction.DENY, []), 'EINVAL', 'KVM_X86_SET_MSR_FILTER');
      const rw = MsrFilterRangeFlags.READ | MsrFilterRangeFlags.WRITE;
      vm.setMsrFilter(MsrFilterDefaultAction.DENY, [{ flags: rw, base: 0x10, msrCount: 1, bitmap: Uint8Array.of(1) }]);
      // kernel checks: range flags 0 or unknown, filter flags unknown, bitmap too large
      expectKvmError(
        () =>
          vm.setMsrFilter(MsrFilterDefaultAction.ALLOW, [
            { flags: 0, base: 0x10, msrCount: 1, bitmap: Uint8Array.of(1) },
          ]),
        'EINVAL',
      );
      expectKvmError(
        () =>
          vm.setMsrFilter(MsrFilterDefaultAction.ALLOW, [
            { flags: 4, base: 0x10, msrCount: 1, bitmap: Uint8Array.of(1) },
          ]),
        'EINVAL',
      );
      expectKvmError(() => vm.setMsrFilter(2 as MsrFilterDefaultAction, []), 'EINVAL', 'KVM_X86_SET_MSR_FILTER');
      const big = 0x601 * 8;
      expectKvmError(
        () =>
          vm.setMsrFilter(MsrFilterDefaultAction.ALLOW, [
            { flags: rw, base: 0, msrCount: big, bitmap: new Uint8Array(big / 8) },
          ]),
        'EINVAL',
      );
      // unchecked: a NULL bitmap pointer is EFAULT from the kernel
      expectKvmError(
        () => vm.setMsrFilterUnchecked({ flags: 0, ranges: [{ flags: 1, nmsrs: 1, base: 0x10, bitmap: 0n }] }),
        'EFAULT',
        'KVM_X86_SET_MSR_FILTER',
      );
      vm.setMsrFilterUnchecked({ flags: 0, ranges: [] });
    });

    it('checks the MSR filter locally (kvm-ioctls): 17 ranges or a short bitmap is EINVAL before any ioctl', () => {
      const before = (backend as { calls?: unknown[] }).calls?.length;
      const r = { flags: 1, base: 0, msrCount: 8, bitmap: Uint8Array.of(0xff) };
      expectKvmError(
        () => vm.setMsrFilter(MsrFilterDefaultAction.ALLOW, Array(17).fill(r)),
        'EINVAL',
        'KVM_X86_SET_MSR_FILTER',
      );
      expectKvmError(
        () => vm.setMsrFilter(MsrFilterDefaultAction.ALLOW, [{ ...r, msrCount: 9 }]),
        'EINVAL',
        'KVM_X86_SET_MSR_FILTER',
      );
      if (before !== undefined) expect((backend as unknown as { calls: unknown[] }).calls.length).toBe(before);
    });
  });

  describe('interrupts and events', () => {
    it('needs the irqchip: IRQ line ENXIO, irqfd/MSI/routing EINVAL', () => {
      const e = evt();
      expectKvmError(() => vm.setIrqLine(4, true), 'ENXIO', 'KVM_IRQ_LINE');
      expectKvmError(() => vm.registerIrqfd(e, 4), 'EINVAL', 'KVM_IRQFD');
      expectKvmError(() => vm.signalMsi({}), 'EINVAL', 'KVM_SIGNAL_MSI');
      expectKvmError(() => vm.setGsiRouting([]), 'EINVAL', 'KVM_SET_GSI_ROUTING');
      vm.unregisterIrqfd(e, 4); // deassign never fails for a missing irqfd
    });

    it('sets IRQ lines and signals MSIs with an irqchip (EPERM: no vCPU accepts; >= 0 with one)', () => {
      vm.createIrqChip();
      vm.setIrqLine(4, true);
      vm.setIrqLine(4, false);
      expectKvmError(() => vm.signalMsi({}), 'EPERM', 'KVM_SIGNAL_MSI');
      expectKvmError(() => vm.signalMsi({ flags: 2 }), 'EINVAL', 'KVM_SIGNAL_MSI');
      vm.createVcpu(0);
      expect(vm.signalMsi({ addressLo: 0xfee0_0000, data: 0x30 })).toBeGreaterThanOrEqual(0);
    });

    it('validates GSI routing entries as the kernel does', () => {
      vm.createIrqChip();
      vm.setGsiRouting([]);
      vm.setGsiRouting([
        { gsi: 0, type: K.KVM_IRQ_ROUTING_IRQCHIP, u: { irqchip: { irqchip: K.KVM_IRQCHIP_IOAPIC, pin: 2 } } },
        { gsi: 0, type: K.KVM_IRQ_ROUTING_IRQCHIP, u: { irqchip: { irqchip: K.KVM_IRQCHIP_PIC_MASTER, pin: 0 } } },
        { gsi: 5, type: K.KVM_IRQ_ROUTING_MSI, u: { msi: { addressLo: 0xfee0_0000, data: 0x31 } } },
      ]);
      const chip = (irqchip: number, pin: number, gsi = 0) => ({
        gsi,
        type: K.KVM_IRQ_ROUTING_IRQCHIP,
        u: { irqchip: { irqchip, pin } },
      });
      expectKvmError(() => vm.setGsiRouting([chip(0, 8)]), 'EINVAL', 'KVM_SET_GSI_ROUTING');
      expectKvmError(() => vm.setGsiRouting([chip(2, 24)]), 'EINVAL');
      expectKvmError(() => vm.setGsiRouting([chip(3, 0)]), 'EINVAL');
      expectKvmError(() => vm.setGsiRouting([chip(2, 1, 4096)]), 'EINVAL');
      expectKvmError(() => vm.setGsiRouting([chip(2, 2, 1), chip(2, 3, 1)]), 'EINVAL');
      expectKvmError(
        () =>
          vm.setGsiRouting([
            { gsi: 1, type: 2 },
            { gsi: 1, type: 2 },
          ]),
        'EINVAL',
      );
      expectKvmError(() => vm.setGsiRouting([{ gsi: 1, type: 9 }]), 'EINVAL');
      expectKvmError(() => vm.setGsiRouting([{ ...chip(2, 2), flags: 1 }]), 'EINVAL');
      expectKvmError(
        () => vm.setGsiRouting(Array.from({ length: 4097 }, (_, i) => ({ gsi: i % 4096, type: 2 }))),
        'EINVAL',
      );
    });

    it('follows the irqfd sequence (EBUSY for a reused eventfd, deassign of a missing one is OK)', () => {
      vm.createIrqChip();
      const [e1, e2, e3, e4, rs] = [evt(), evt(), evt(), evt(), evt()];
      vm.registerIrqfd(e1, 4);
      vm.registerIrqfd(e2, 8);
      vm.registerIrqfd(e3, 4);
      vm.unregisterIrqfd(e2, 8);
      vm.unregisterIrqfd(e2, 8);
      expectKvmError(() => vm.registerIrqfd(e3, 4), 'EBUSY', 'KVM_IRQFD');
      expectKvmError(() => vm.registerIrqfd(e3, 5), 'EBUSY', 'KVM_IRQFD');
      vm.unregisterIrqfd(e3, 5);
      vm.unregisterIrqfd(e3, 4);
      vm.registerIrqfd(e3, 5);
      expect(vm.checkExtensionRaw(K.KVM_CAP_IRQFD_RESAMPLE)).toBeGreaterThan(0);
      vm.registerIrqfdWithResample(e4, rs, 6);
      vm.unregisterIrqfd(e4, 6);
    });

    it('registers ioeventfds with and without datamatch, EEXIST for a clash, ENOENT to unregister a missing one', () => {
      const e = evt();
      const e2 = evt();
      vm.registerIoevent(e, IoEventAddress.pio(0xf4), NoDatamatch);
      vm.registerIoevent(e, IoEventAddress.mmio(0x1000n), NoDatamatch);
      vm.registerIoevent(e, IoEventAddress.pio(0x1000), NoDatamatch); // other bus
      vm.registerIoevent(e, IoEventAddress.pio(0xc1), { value: 0x7f, length: 1 });
      vm.registerIoevent(e, IoEventAddress.pio(0xc1), { value: 0x7e, length: 1 });
      vm.registerIoevent(e, IoEventAddress.pio(0xc1), { value: 0x7f, length: 2 });
      vm.registerIoevent(e, IoEventAddress.pio(0xc2), { value: 0x1337, length: 2 });
      vm.registerIoevent(e, IoEventAddress.pio(0xc4), { value: 0xdead_beef, length: 4 });
      vm.registerIoevent(e, IoEventAddress.pio(0xc8), { value: 0xdead_beef_dead_beefn, length: 8 });
      expectKvmError(() => vm.registerIoevent(e, IoEventAddress.pio(0xf4), NoDatamatch), 'EEXIST', 'KVM_IOEVENTFD');
      expectKvmError(() => vm.registerIoevent(e2, IoEventAddress.pio(0xf4), NoDatamatch), 'EEXIST');
      expectKvmError(() => vm.registerIoevent(e2, IoEventAddress.pio(0xf4), { value: 1, length: 1 }), 'EEXIST');
      expectKvmError(() => vm.registerIoevent(e2, IoEventAddress.pio(0xc1), { value: 0x7f, length: 1 }), 'EEXIST');
      expectKvmError(() => vm.unregisterIoevent(e, IoEventAddress.pio(0x500), NoDatamatch), 'ENOENT', 'KVM_IOEVENTFD');
      expectKvmError(() => vm.unregisterIoevent(e2, IoEventAddress.pio(0xf4), NoDatamatch), 'ENOENT');
      expectKvmError(() => vm.unregisterIoevent(e, IoEventAddress.pio(0xc1), { value: 0x70, length: 1 }), 'ENOENT');
      vm.unregisterIoevent(e, IoEventAddress.pio(0xc1), { value: 0x7f, length: 1 });
      expectKvmError(() => vm.unregisterIoevent(e, IoEventAddress.pio(0xc1), { value: 0x7f, length: 1 }), 'ENOENT');
      vm.unregisterIoevent(e, IoEventAddress.pio(0xf4), NoDatamatch);
      vm.registerIoevent(e2, IoEventAddress.pio(0xf4), NoDatamatch);
    });

    it('rejects an ioeventfd of length 3 (EINVAL) and a bad fd (EBADF) in the kernel', () => {
      const e = evt();
      const raw = (o: object) => () => backend.ioctl(vm.asRawFd(), ioctls.KVM_IOEVENTFD, structBytes(kvm_ioeventfd, o));
      expectKvmError(
        raw({ fd: e.asRawFd(), addr: 0xd0n, len: 3, flags: K.KVM_IOEVENTFD_FLAG_PIO }),
        'EINVAL',
        'KVM_IOEVENTFD',
      );
      expectKvmError(
        raw({ fd: e.asRawFd(), addr: 0xd0n, len: 0, flags: K.KVM_IOEVENTFD_FLAG_PIO | K.KVM_IOEVENTFD_FLAG_DATAMATCH }),
        'EINVAL',
      );
      expectKvmError(raw({ fd: e.asRawFd(), addr: 0xd0n, len: 1, flags: 0x20 }), 'EINVAL');
      expectKvmError(raw({ fd: kvm.asRawFd(), addr: 0xd0n, len: 1, flags: 2 }), 'EINVAL');
      const closed = evt();
      const n = closed.asRawFd();
      closed.close();
      expectKvmError(raw({ fd: n, addr: 0xd0n, len: 1, flags: 2 }), 'EBADF');
    });
  });

  describe('devices and memory', () => {
    it('probes VFIO with KVM_CREATE_DEVICE_TEST (no DeviceFd), ENODEV for ARM_VGIC_V3 on x86', () => {
      const probe = { type: K.KVM_DEV_TYPE_VFIO, flags: K.KVM_CREATE_DEVICE_TEST, fd: 77 };
      expect(vm.createDevice(probe)).toBeUndefined();
      expect(probe.fd).toBe(77); // the kernel leaves fd as it was
      expectKvmError(
        () => vm.createDevice({ type: K.KVM_DEV_TYPE_ARM_VGIC_V3, flags: K.KVM_CREATE_DEVICE_TEST }),
        'ENODEV',
        'KVM_CREATE_DEVICE',
      );
      expectKvmError(() => vm.createDevice({ type: 9999 }), 'ENODEV');
    });

    it('creates one VFIO device with the kernel attribute errors; the VM closes it', () => {
      const spec = { type: K.KVM_DEV_TYPE_VFIO, fd: 0 };
      const dev = vm.createDevice(spec)!;
      expect(dev).toBeInstanceOf(DeviceFd);
      expect(spec.fd).toBe(dev.asRawFd());
      expect(dev.asRawFd()).toBeGreaterThan(2);
      expectKvmError(() => vm.createDevice({ type: K.KVM_DEV_TYPE_VFIO }), 'EBUSY', 'KVM_CREATE_DEVICE');
      dev.hasDeviceAttr({ group: K.KVM_DEV_VFIO_GROUP, attr: K.KVM_DEV_VFIO_GROUP_ADD });
      dev.hasDeviceAttr({ group: K.KVM_DEV_VFIO_GROUP, attr: K.KVM_DEV_VFIO_GROUP_DEL });
      expectKvmError(() => dev.hasDeviceAttr({ group: 1, attr: 9 }), 'ENXIO', 'KVM_HAS_DEVICE_ATTR');
      expectKvmError(() => dev.hasDeviceAttr({ group: 7, attr: 1 }), 'ENXIO');
      expectKvmError(() => dev.setDeviceAttr({ group: 1, attr: 1 }), 'EFAULT', 'KVM_SET_DEVICE_ATTR');
      expectKvmError(() => dev.setDeviceAttr({ group: 1, attr: 9, value: new Int32Array(1) }), 'ENXIO');
      const e = evt();
      expectKvmError(() => dev.setDeviceAttr({ group: 1, attr: 1, value: Int32Array.of(e.asRawFd()) }), 'EINVAL');
      expectKvmError(() => dev.setDeviceAttr({ group: 1, attr: 2, value: Int32Array.of(e.asRawFd()) }), 'ENOENT');
      expectKvmError(
        () => dev.getDeviceAttr({ group: 1, attr: 1, value: new Int32Array(1) }),
        'EPERM',
        'KVM_GET_DEVICE_ATTR',
      );
      vm.close();
      expect(dev.closed).toBe(true);
      expectCode(() => dev.hasDeviceAttr({ group: 1, attr: 1 }), 'KvmClosedError', 'ERR_KVM_CLOSED');
    });

    it('DeviceFd.fromRawFd owns the fd it is given: closing it closes that fd only, the VM does not close it', () => {
      // Probe which device types this host creates (KVM_CREATE_DEVICE_TEST creates nothing).
      const types = [K.KVM_DEV_TYPE_VFIO].filter((type) => {
        try {
          return vm.createDevice({ type, flags: K.KVM_CREATE_DEVICE_TEST }) === undefined;
        } catch (e) {
          expect(e).toMatchObject({ name: 'KvmError', code: 'ENODEV' });
          return false;
        }
      });
      expectCode(() => DeviceFd.fromRawFd(-1, { backend }), 'RangeError', 'ERR_OUT_OF_RANGE');
      expectCode(() => DeviceFd.fromRawFd(2 ** 31, { backend }), 'RangeError', 'ERR_OUT_OF_RANGE');
      expectCode(() => DeviceFd.fromRawFd('3' as never, { backend }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
      expectCode(() => DeviceFd.fromRawFd(3, { backend: {} as never }), 'TypeError', 'ERR_INVALID_ARG_VALUE');
      // An fd number that was just closed (so nothing owns it now): EBADF at the first ioctl.
      const closed = evt();
      const n = closed.asRawFd();
      closed.close();
      const bad = DeviceFd.fromRawFd(n, { backend });
      expect(bad.type).toBe(-1);
      expectKvmError(() => bad.hasDeviceAttr({ group: 1, attr: 1 }), 'EBADF', 'KVM_HAS_DEVICE_ATTR');
      // on this project's hosts VFIO is supported; a host without any device type tests the above only
      if (types.length === 0) return;
      const dev = vm.createDevice({ type: types[0] })!;
      const copy = DeviceFd.fromRawFd(backend.dup(dev.asRawFd()), { backend });
      expect(copy.type).toBe(-1);
      expect(copy.asRawFd()).not.toBe(dev.asRawFd());
      const groupAdd = { group: K.KVM_DEV_VFIO_GROUP, attr: K.KVM_DEV_VFIO_GROUP_ADD };
      copy.hasDeviceAttr(groupAdd); // the same device
      expectKvmError(() => copy.hasDeviceAttr({ group: 1, attr: 9 }), 'ENXIO', 'KVM_HAS_DEVICE_ATTR');
      vm.close();
      expect(dev.closed).toBe(true);
      expect(copy.closed).toBe(false); // not the VM's: it outlives it, and the device with it
      copy.hasDeviceAttr(groupAdd);
      const raw = copy.asRawFd();
      copy.close();
      expect(copy.closed).toBe(true);
      expectCode(() => copy.hasDeviceAttr(groupAdd), 'KvmClosedError', 'ERR_KVM_CLOSED');
      // the fd itself was closed by copy.close()
      expectKvmError(() => backend.ioctl(raw, ioctls.KVM_HAS_DEVICE_ATTR, new Uint8Array(24)), 'EBADF');
    });

    it('creates guest_memfds and binds them with KVM_SET_USER_MEMORY_REGION2', () => {
      expect(vm.checkExtensionRaw(K.KVM_CAP_GUEST_MEMFD)).toBeGreaterThan(0);
      expectKvmError(() => vm.createGuestMemfd({ size: 0n }), 'EINVAL', 'KVM_CREATE_GUEST_MEMFD');
      expectKvmError(() => vm.createGuestMemfd({ size: 0x1001n }), 'EINVAL');
      expectKvmError(() => vm.createGuestMemfd({ size: 0x10000n, flags: 4n }), 'EINVAL');
      const gmem = vm.createGuestMemfd({ size: 0x10000n });
      const m = mem(0x4000);
      expectKvmError(
        () => vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0n, memorySize: 0 }),
        'EINVAL',
        'KVM_SET_USER_MEMORY_REGION2',
      );
      vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0x10000n, memory: m });
      vm.setUserMemoryRegion2({
        slot: 1,
        flags: K.KVM_MEM_GUEST_MEMFD,
        guestPhysAddr: 0x20000n,
        memory: mem(0x4000),
        guestMemfd: gmem,
      });
      expectKvmError(
        () =>
          vm.setUserMemoryRegion2({
            slot: 2,
            flags: K.KVM_MEM_GUEST_MEMFD,
            guestPhysAddr: 0x40000n,
            memory: mem(0x4000),
            guestMemfd: gmem,
            guestMemfdOffset: 0x10000n,
          }),
        'EINVAL',
      );
      expectKvmError(
        () =>
          vm.setUserMemoryRegion2({
            slot: 3,
            flags: K.KVM_MEM_GUEST_MEMFD,
            guestPhysAddr: 0x60000n,
            memory: mem(0x4000),
            guestMemfd: gmem,
          }),
        'EINVAL',
      );
      vm.setUserMemoryRegion2({
        slot: 3,
        flags: K.KVM_MEM_GUEST_MEMFD,
        guestPhysAddr: 0x60000n,
        memory: mem(0x4000),
        guestMemfd: gmem,
        guestMemfdOffset: 0x4000n,
      });
      expectKvmError(
        () =>
          vm.setUserMemoryRegion({
            slot: 4,
            flags: K.KVM_MEM_GUEST_MEMFD,
            guestPhysAddr: 0x80000n,
            memory: mem(0x4000),
          }),
        'EINVAL',
        'KVM_SET_USER_MEMORY_REGION',
      );
      vm.setUserMemoryRegion2({ slot: 1, flags: K.KVM_MEM_GUEST_MEMFD, guestPhysAddr: 0x20000n, memorySize: 0 });
      expect(vm.guestMemory.find(0x20000n)).toBeUndefined();
      expect(vm.guestMemory.find(0x60000n)).toBeDefined();
      vm.close();
      expect(gmem.closed).toBe(true);
    });

    it('has no memory attributes on a default VM (ENOTTY) and no SEV (ENOTTY)', () => {
      expect(vm.checkExtensionRaw(K.KVM_CAP_MEMORY_ATTRIBUTES)).toBe(0);
      expectKvmError(
        () =>
          vm.setMemoryAttributes({ address: 0n, size: 0x1000n, attributes: BigInt(K.KVM_MEMORY_ATTRIBUTE_PRIVATE) }),
        'ENOTTY',
        'KVM_SET_MEMORY_ATTRIBUTES',
      );
      expectKvmError(() => vm.encryptOpSev({ id: 0 }), 'ENOTTY', 'KVM_MEMORY_ENCRYPT_OP');
      expectKvmError(() => vm.encryptOp(new Uint8Array(24)), 'ENOTTY', 'KVM_MEMORY_ENCRYPT_OP');
      const m = mem(0x1000);
      expectKvmError(
        () => vm.registerEncMemoryRegion({ addr: m.hostAddress, size: 0x1000n }),
        'ENOTTY',
        'KVM_MEMORY_ENCRYPT_REG_REGION',
      );
      expectKvmError(
        () => vm.unregisterEncMemoryRegion({ addr: m.hostAddress, size: 0x1000n }),
        'ENOTTY',
        'KVM_MEMORY_ENCRYPT_UNREG_REGION',
      );
    });
  });

  describe('EventFd', () => {
    it('adds writes, reads the sum, EAGAIN when empty; semaphore mode reads 1', () => {
      const e = evt();
      expect(e.flags).toEqual({ nonBlocking: true, semaphore: false });
      expectKvmError(() => e.read(), 'EAGAIN');
      e.write(2n);
      e.write(3);
      expect(e.read()).toBe(5n);
      expectKvmError(() => e.write(0xffff_ffff_ffff_ffffn), 'EINVAL');
      const s = new EventFd({ backend, semaphore: true, initval: 2 });
      owned.push(s);
      expect([s.read(), s.read()]).toEqual([1n, 1n]);
      expectKvmError(() => s.read(), 'EAGAIN');
    });

    it('readAsync resolves at once when readable, later after a write, and rejects on abort or close', async () => {
      const e = evt();
      e.write(7n);
      await expect(e.readAsync()).resolves.toBe(7n);
      const p = e.readAsync();
      setTimeout(() => e.write(4n), 5);
      await expect(p).resolves.toBe(4n);
      const ac = new AbortController();
      const q = e.readAsync(ac.signal);
      setTimeout(() => ac.abort(), 5);
      await expect(q).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
      await expect(e.readAsync(ac.signal)).rejects.toMatchObject({ code: 'ABORT_ERR' });
      const r = e.readAsync();
      e.close();
      await expect(r).rejects.toMatchObject({ code: 'ERR_KVM_CLOSED' });
      expectCode(() => e.read(), 'KvmClosedError', 'ERR_KVM_CLOSED');
    });
  });
});
