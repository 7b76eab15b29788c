/**
 * GuestMemory and GuestMemoryMap on both backends: sizes, bounds, views, slot ranges.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { IoctlBackend } from '../../src/backend/types';
import { GuestMemory, GuestMemoryMap } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import { contractBackends, expectCode } from '../helpers/kvm';

describe.each(contractBackends())('GuestMemory contract: %s', (_name, make) => {
  let backend: IoctlBackend;
  beforeEach(() => {
    backend = make();
  });

  it('maps shared and private anonymous memory, zero-filled', () => {
    for (const shared of [true, false]) {
      const m = GuestMemory.anonymous(0x3000, { backend, shared, noreserve: !shared });
      expect(m.size).toBe(0x3000);
      expect(m.shared).toBe(shared);
      expect(m.bytes.length).toBe(0x3000);
      expect(m.bytes.every((b) => b === 0)).toBe(true);
      m.write(0x2ffe, [1, 2]);
      expect([...m.read(0x2ffd, 3)]).toEqual([0, 1, 2]);
      m.close();
    }
  });

  it('replaceWithFile maps a file over its own private mapping in place; the file is never written', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kvmrx-gm-'));
    try {
      const path = join(dir, 'ram');
      const data = Buffer.alloc(0x5000);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
      writeFileSync(path, data);
      const m = GuestMemory.anonymous(0x3000, { backend, shared: false });
      const view = m.bytes; // handed out before: it sees the file's pages after
      const address = m.hostAddress;
      view[0] = 0xee;
      m.replaceWithFile(path, { offset: 0x1000 });
      expect(m.hostAddress).toBe(address);
      expect(Buffer.from(view).equals(data.subarray(0x1000, 0x4000))).toBe(true);
      view[5] = 0x55; // copy-on-write
      expect(readFileSync(path).equals(data)).toBe(true);
      expectCode(() => m.replaceWithFile(path, { offset: 0x3000 }), 'RangeError', 'ERR_OUT_OF_RANGE'); // past the end
      expectCode(() => m.replaceWithFile(path, { offset: 12 }), 'RangeError', 'ERR_OUT_OF_RANGE');
      expectCode(() => m.replaceWithFile(join(dir, 'none')), 'Error', 'ENOENT');
      m.close();
      expectCode(() => m.replaceWithFile(path), 'KvmClosedError', 'ERR_KVM_CLOSED');
      const shared = GuestMemory.anonymous(0x3000, { backend, shared: true });
      expectCode(() => shared.replaceWithFile(path), 'Error', 'ERR_KVM_NOT_PRIVATE');
      shared.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('asks for transparent huge pages with hugePages: "madvise"', () => {
    const m = GuestMemory.anonymous(0x200000, { backend, hugePages: 'madvise' });
    m.bytes[0x1fffff] = 7;
    expect(m.read(0x1fffff, 1)[0]).toBe(7);
    m.close();
  });

  it('rejects bad sizes and out-of-bounds access with ERR_ codes', () => {
    expectCode(() => GuestMemory.anonymous(100, { backend }), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => GuestMemory.anonymous(0, { backend }), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(
      () => GuestMemory.anonymous('4096' as unknown as number, { backend }),
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
    );
    expectCode(
      () => GuestMemory.anonymous(4096, { backend, hugePages: 'yes' as never }),
      'TypeError',
      'ERR_INVALID_ARG_VALUE',
    );
    const m = GuestMemory.anonymous(0x1000, { backend });
    expectCode(() => m.read(0xfff, 2), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => m.write(0x1000, [1]), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => m.read(-1, 1), 'RangeError', 'ERR_OUT_OF_RANGE');
    m.close();
  });

  it('detaches its view on close and refuses to close while a slot uses it', () => {
    const kvm = new Kvm({ backend });
    const vm = kvm.createVm();
    const m = GuestMemory.anonymous(0x2000, { backend });
    const bytes = m.bytes;
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x100000n, memory: m });
    expectCode(() => m.close(), 'Error', 'ERR_KVM_IN_USE');
    expect(m.closed).toBe(false);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x100000n, memorySize: 0 });
    m.close();
    expect(bytes.byteLength).toBe(0); // a stale view reads as empty instead of crashing
    expect(bytes[0]).toBeUndefined();
    expectCode(() => m.bytes, 'KvmClosedError', 'ERR_KVM_CLOSED');
    m.close(); // idempotent
    kvm.close();
  });

  it('maps a range of a mapping into a slot and reads guest-physical addresses across slots', () => {
    const kvm = new Kvm({ backend });
    const vm = kvm.createVm();
    const m = GuestMemory.anonymous(0x4000, { backend });
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10000n, memory: m, memoryOffset: 0, memorySize: 0x2000 });
    vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0x12000n, memory: m, memoryOffset: 0x3000, memorySize: 0x1000 });
    vm.guestMemory.write(0x11ffen, Uint8Array.of(1, 2, 3, 4)); // crosses from slot 0 into slot 1
    expect([...m.read(0x1ffe, 2)]).toEqual([1, 2]);
    expect([...m.read(0x3000, 2)]).toEqual([3, 4]);
    expect([...vm.guestMemory.read(0x11fffn, 3)]).toEqual([2, 3, 4]);
    expectCode(() => vm.guestMemory.read(0x12fffn, 2), 'RangeError', 'ERR_OUT_OF_RANGE');
    expectCode(() => vm.guestMemory.write(0xfffen, Uint8Array.of(9, 9, 9)), 'RangeError', 'ERR_OUT_OF_RANGE');
    expect(m.read(0, 1)[0]).toBe(0); // nothing written by the refused write
    expectCode(
      () =>
        vm.setUserMemoryRegion({
          slot: 2,
          guestPhysAddr: 0x20000n,
          memory: m,
          memoryOffset: 0x3000,
          memorySize: 0x2000,
        }),
      'RangeError',
      'ERR_OUT_OF_RANGE',
    );
    vm.close();
    expect(vm.guestMemory.regions.length).toBe(0);
    m.close();
    kvm.close();
  });
});

describe('GuestMemoryMap', () => {
  it('refuses overlapping regions', () => {
    const backend = contractBackends()[0][1]();
    const m = GuestMemory.anonymous(0x2000, { backend });
    const map = new GuestMemoryMap([{ guestPhysAddr: 0x1000n, memory: m }]);
    expectCode(() => map.add({ guestPhysAddr: 0x2000n, memory: m }), 'RangeError', 'ERR_OUT_OF_RANGE');
    expect(map.find(0x2fffn)?.offset).toBe(0x1fff);
    expect(map.find(0x3000n)).toBeUndefined();
    expect(map.remove(0x1000n)).toBe(true);
    expect(map.remove(0x1000n)).toBe(false);
    m.close();
  });
});
