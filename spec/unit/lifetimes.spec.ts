/**
 * Lifetimes and use-after-close, on the mock and on the real kernel: parents close their
 * children, every method of a closed object throws `ERR_KVM_CLOSED` (found generically from the
 * prototype, so methods added later are covered too), views are detached, memory used by a slot
 * cannot be unmapped, and a closed object never touches its old fd number once it is reused.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { IoctlBackend } from '../../src/backend/types';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import type { KvmRunWrapper } from '../../src/wrappers/kvm-run';
import type { VcpuFd } from '../../src/wrappers/vcpu-fd';
import type { VmFd } from '../../src/wrappers/vm-fd';
import { contractBackends, expectCode, expectKvmError } from '../helpers/kvm';

/** Members that must keep working after close: `close` and `Symbol.dispose` are idempotent, `closed` and `running` report the state. */
const EXEMPT = new Set<string | symbol>(['constructor', 'close', Symbol.dispose, 'closed', 'running']);
/**
 * `FdOwner#onClosed` is `@internal` (the parent/child wiring, called only while the object is
 * open); it registers a callback and does not check the state. `borrow` is protected and runs
 * only in a constructor. `VcpuFd#setOwner` is the runtime's hook to mark a vCPU as running in a
 * worker, and `attachRun` its run handle; the runtime clears both when a run ends, which may be
 * after the vCPU was closed.
 */
const INTERNAL = new Set<string | symbol>(['onClosed', 'borrow', 'setOwner', 'attachRun']);

const ARG_ERRORS = new Set(['ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE', 'ERR_OUT_OF_RANGE']);

type Ctx = { backend: IoctlBackend; mem: () => GuestMemory; own: <T extends { close(): void }>(x: T) => T };

/**
 * An export of `src/wrappers/*` or `src/index.ts` by name, found at run time so this spec can name
 * classes that other branches add (EventFd, Msrs, …) without importing them; `undefined` if absent.
 */
function lib(name: string): (new (...args: unknown[]) => unknown) & Record<string, (...args: unknown[]) => unknown> {
  const files = readdirSync(join(__dirname, '../../src/wrappers'))
    .filter((f) => f.endsWith('.ts'))
    .map((f) => join(__dirname, '../../src/wrappers', f));
  for (const file of [join(__dirname, '../../src/index.ts'), ...files]) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const mod = require(file) as Record<string, unknown>;
    if (mod[name] !== undefined) return mod[name] as ReturnType<typeof lib>;
  }
  throw new Error(`no export named ${name}`);
}

const eventFd = (ctx: Ctx): unknown => ctx.own(new (lib('EventFd'))({ backend: ctx.backend }) as { close(): void });
const ioAddress = (port: number): unknown => {
  try {
    return lib('IoEventAddress').pio(port);
  } catch {
    return { kind: 'pio', addr: BigInt(port) };
  }
};

/**
 * Arguments that pass the argument checks of methods whose checks come before the closed check
 * (so the call reaches `checkOpen()`), keyed `Class.method` or `*.method`. Methods not listed are
 * tried with the GENERIC lists below, and `setX` also with the value of `getX()`/`x()` on an open
 * object of the same class. Add an entry here when a new method needs more than that.
 */
const SAMPLE_ARGS: Record<string, (ctx: Ctx) => unknown[]> = {
  'VmFd.setUserMemoryRegion': ({ mem }) => [{ slot: 0, guestPhysAddr: 0x1000n, memory: mem() }],
  'VmFd.setUserMemoryRegion2': () => [{ slot: 0, guestPhysAddr: 0x1000n, memorySize: 0 }],
  'VmFd.getDirtyLog': () => [0, 0x4000],
  'VmFd.setIrqchip': () => [{ chipId: 0, chip: { pic: {} } }],
  'VmFd.setMsrFilter': () => [0, []],
  'VmFd.setGsiRouting': () => [[]],
  'VmFd.registerIoevent': (ctx) => [eventFd(ctx), ioAddress(0xf4), lib('NoDatamatch')],
  'VmFd.unregisterIoevent': (ctx) => [eventFd(ctx), ioAddress(0xf4), lib('NoDatamatch')],
  'VmFd.registerIrqfd': (ctx) => [eventFd(ctx), 4],
  'VmFd.unregisterIrqfd': (ctx) => [eventFd(ctx), 4],
  'VmFd.registerIrqfdWithResample': (ctx) => [eventFd(ctx), eventFd(ctx), 4],
  'VmFd.registerCoalescedMmio': () => [ioAddress(0x2c), 1],
  'VmFd.unregisterCoalescedMmio': () => [ioAddress(0x2c), 1],
  'VmFd.createDevice': () => [{ type: 0 }],
  'VmFd.createGuestMemfd': () => [{ size: 0x1000n }],
  '*.setDeviceAttr': () => [{ group: 0, attr: 0 }],
  '*.hasDeviceAttr': () => [{ group: 0, attr: 0 }],
  '*.getDeviceAttr': () => [{ group: 0, attr: 0 }],
  '*.getMsrs': () => [new (lib('Msrs'))()],
  '*.setMsrs': () => [new (lib('Msrs'))()],
  'VcpuFd.getRegList': () => [new (lib('RegList'))(0)],
  'VcpuFd.nestedState': () => [new (lib('KvmNestedStateBuffer'))()],
  'VcpuFd.setNestedState': () => [new (lib('KvmNestedStateBuffer'))()],
  'GuestMemory.read': () => [0, 1],
  'GuestMemory.write': () => [0, Uint8Array.of(1)],
  'GuestMemory.retain': () => ['test'],
  'FdOwner.adopt': () => [{ close: () => undefined }],
};

/** Tried, in this order, after the SAMPLE_ARGS entry. */
const GENERIC: unknown[][] = [
  [],
  [0],
  [1],
  [0, 0x1000],
  [0, false],
  [0, 0, 0],
  [0n],
  [0n, new Uint8Array(8)],
  [{}],
  [[]],
  [new Uint8Array(8)],
  [() => undefined],
];

interface Member {
  name: string | symbol;
  owner: string;
  kind: 'method' | 'accessor';
  setter: boolean;
}

/** Every method and accessor on the prototype chain of `obj` (most derived first), minus the exempt ones. */
function membersOf(obj: object): Member[] {
  const seen = new Set<string | symbol>();
  const out: Member[] = [];
  for (
    let p = Object.getPrototypeOf(obj) as object | null;
    p !== null && p !== Object.prototype;
    p = Object.getPrototypeOf(p) as object | null
  ) {
    const owner = (p as { constructor: { name: string } }).constructor.name;
    for (const name of Reflect.ownKeys(p)) {
      if (seen.has(name)) continue;
      seen.add(name);
      if (EXEMPT.has(name) || INTERNAL.has(name)) continue;
      const d = Object.getOwnPropertyDescriptor(p, name)!;
      if (typeof d.value === 'function') out.push({ name, owner, kind: 'method', setter: false });
      else if (d.get !== undefined) out.push({ name, owner, kind: 'accessor', setter: d.set !== undefined });
    }
  }
  return out;
}

const label = (m: Member): string => `${m.owner}.${String(m.name)}`;

function describeError(e: unknown): string {
  const x = e as { name?: string; code?: string; message?: string };
  return `${x.name ?? typeof e}${x.code !== undefined ? ` ${x.code}` : ''}: ${x.message ?? String(e)}`;
}

/** Candidate argument lists for `m`, most specific first. */
function candidates(m: Member, ctx: Ctx, twin: object): unknown[][] {
  const list: unknown[][] = [];
  const name = String(m.name);
  const sample = SAMPLE_ARGS[label(m)] ?? SAMPLE_ARGS[`${twin.constructor.name}.${name}`] ?? SAMPLE_ARGS[`*.${name}`];
  if (sample) {
    try {
      list.push(sample(ctx));
    } catch {
      // a class the entry needs is not in this tree: the generic lists remain
    }
  }
  list.push(...GENERIC);
  if (name.startsWith('set') && name.length > 3) {
    const rest = name.slice(3);
    for (const g of [`get${rest}`, rest[0].toLowerCase() + rest.slice(1)]) {
      const fn = (twin as Record<string, unknown>)[g];
      if (typeof fn !== 'function') continue;
      try {
        list.push([(fn as () => unknown).call(twin)]);
      } catch {
        // The getter needs a setup this open twin lacks (e.g. an irqchip): other candidates remain.
      }
    }
  }
  return list;
}

/**
 * Calls every method (and reads every accessor) of the closed `obj`. Each must throw
 * `ERR_KVM_CLOSED` for some argument list that passes its argument checks; returning normally or
 * throwing anything but an argument error (a KvmError means it reached the kernel) is a failure.
 * Returns the failures, one line each.
 */
async function useAfterClose(obj: object, twin: object, ctx: Ctx): Promise<string[]> {
  const failures: string[] = [];
  const members = membersOf(obj);
  expect(members.length).toBeGreaterThan(0);
  for (const m of members) {
    if (m.kind === 'accessor') {
      for (const [what, fn] of [
        ['get', () => (obj as Record<string | symbol, unknown>)[m.name]],
        ...(m.setter
          ? [
              [
                'set',
                () =>
                  ((obj as Record<string | symbol, unknown>)[m.name] = (twin as Record<string | symbol, unknown>)[
                    m.name
                  ]),
              ] as const,
            ]
          : []),
      ] as const) {
        try {
          fn();
          failures.push(`${label(m)} (${what}) did not throw`);
        } catch (e) {
          if ((e as { code?: string }).code !== 'ERR_KVM_CLOSED')
            failures.push(`${label(m)} (${what}) threw ${describeError(e)}`);
        }
      }
      continue;
    }
    const fn = (obj as Record<string | symbol, (...a: unknown[]) => unknown>)[m.name];
    const tried: string[] = [];
    let ok = false;
    for (const args of candidates(m, ctx, twin)) {
      let err: unknown;
      let returned = false;
      try {
        const r = fn.apply(obj, args);
        if (r instanceof Promise) await r;
        returned = true;
      } catch (e) {
        err = e;
      }
      if (returned) {
        failures.push(`${label(m)}(${args.length} args) returned normally on a closed object`);
        ok = true; // reported
        break;
      }
      const code = (err as { code?: string }).code;
      if (code === 'ERR_KVM_CLOSED') {
        ok = true;
        break;
      }
      const argError = (code !== undefined && ARG_ERRORS.has(code)) || (err instanceof TypeError && code === undefined);
      if (!argError) {
        failures.push(`${label(m)}(${args.length} args) threw ${describeError(err)} instead of ERR_KVM_CLOSED`);
        ok = true; // reported
        break;
      }
      const msg = describeError(err);
      if (!tried.includes(msg)) tried.push(msg);
    }
    if (!ok)
      failures.push(
        `${label(m)}: no argument list reached the closed check (add one to SAMPLE_ARGS): ${tried.slice(-2).join(' | ')}`,
      );
  }
  return failures;
}

/** Whether an fd number is open in the backend. */
function fdOpen(backend: IoctlBackend, fd: number): boolean {
  try {
    backend.getFdFlags(fd);
    return true;
  } catch (e) {
    expect((e as { code?: string }).code).toBe('EBADF');
    return false;
  }
}

describe.each(contractBackends())('lifetimes and use-after-close: %s', (name, make) => {
  let backend: IoctlBackend;
  let kvm: Kvm;
  const owned: Array<{ close(): void }> = [];
  const mem = (size = 0x4000): GuestMemory => {
    const m = GuestMemory.anonymous(size, { backend });
    owned.push(m);
    return m;
  };
  const ctx = (): Ctx => ({
    backend,
    mem: () => mem(),
    own: (x) => {
      owned.push(x);
      return x;
    },
  });
  beforeEach(() => {
    backend = make();
    kvm = new Kvm({ backend });
  });
  afterEach(() => {
    kvm.close();
    for (const o of owned.splice(0).reverse()) o.close();
  });

  it('closing a Kvm closes its VMs, their vCPUs and kvm_run mappings, and their fds', () => {
    const k = new Kvm({ backend });
    const vms = [k.createVm(), k.createVm()];
    const vcpus = vms.flatMap((vm) => [vm.createVcpu(0), vm.createVcpu(1)]);
    const runs = vcpus.map((v) => v.getKvmRun());
    const fds = [k.asRawFd(), ...vms.map((v) => v.asRawFd()), ...vcpus.map((v) => v.asRawFd())];
    expect(fds.map((fd) => fdOpen(backend, fd))).toEqual(fds.map(() => true));
    k.close();
    expect([k, ...vms, ...vcpus].map((o) => o.closed)).toEqual([k, ...vms, ...vcpus].map(() => true));
    for (const r of runs) expectCode(() => r.asMutRef(), 'KvmClosedError', 'ERR_KVM_CLOSED');
    expect(fds.map((fd) => fdOpen(backend, fd))).toEqual(fds.map(() => false));
    k.close(); // idempotent
    k[Symbol.dispose]();
  });

  it('closing a VM closes its vCPUs (not its siblings, not the Kvm)', () => {
    const vm = kvm.createVm();
    const other = kvm.createVm();
    const vcpus = [vm.createVcpu(0), vm.createVcpu(1)];
    const sibling = other.createVcpu(0);
    vm.close();
    expect(vcpus.map((v) => v.closed)).toEqual([true, true]);
    expect([other.closed, sibling.closed, kvm.closed]).toEqual([false, false, false]);
    expect(sibling.getRegs().rip).toBe(0xfff0n);
    vm.close();
    vm[Symbol.dispose]();
    for (const v of vcpus) {
      v.close();
      v[Symbol.dispose]();
    }
  });

  it('every method of a closed Kvm, VmFd, VcpuFd, KvmRunWrapper and GuestMemory throws ERR_KVM_CLOSED', async () => {
    // Open twins of each class, for the member list and for setter values.
    const twinVm = kvm.createVm();
    const twinVcpu = twinVm.createVcpu(0);
    const twinMem = mem();

    const k = new Kvm({ backend });
    const vm = k.createVm();
    const vcpu = vm.createVcpu(0);
    const run = vcpu.getKvmRun();
    const m = GuestMemory.anonymous(0x4000, { backend });
    k.close();
    m.close();

    const failures = [
      ...(await useAfterClose(k, kvm, ctx())),
      ...(await useAfterClose(vm, twinVm, ctx())),
      ...(await useAfterClose(vcpu, twinVcpu, ctx())),
      ...(await useAfterClose(run, twinVcpu.getKvmRun(), ctx())),
      ...(await useAfterClose(m, twinMem, ctx())),
    ];
    expect(failures).toEqual([]);
    // close and dispose stay idempotent on all of them
    for (const o of [k, vm, vcpu, run, m] as Array<{ close(): void; [Symbol.dispose](): void }>) {
      o.close();
      o[Symbol.dispose]();
    }
  });

  it('every method of a closed EventFd, DeviceFd and GuestMemfd throws ERR_KVM_CLOSED; a pending readAsync rejects', async () => {
    const EventFd = lib('EventFd') as unknown as new (o: object) => { close(): void; readAsync(): Promise<bigint> };
    const twinEfd = ctx().own(new EventFd({ backend }));
    const efd = new EventFd({ backend });
    const pending = efd.readAsync();
    efd.close();
    await expect(pending).rejects.toMatchObject({ code: 'ERR_KVM_CLOSED' });
    const failures = await useAfterClose(efd, twinEfd, ctx());

    // DeviceFd: a VFIO device where the kernel has one (the mock too); closed with its VM.
    const twinVm = kvm.createVm();
    const twinDev = (() => {
      try {
        return twinVm.createDevice({ type: 4 /* KVM_DEV_TYPE_VFIO */ });
      } catch {
        return undefined;
      }
    })();
    if (twinDev) {
      const vm = kvm.createVm();
      const dev = vm.createDevice({ type: 4 })!;
      const devFd = dev.asRawFd();
      vm.close();
      expect(dev.closed).toBe(true);
      expect(fdOpen(backend, devFd)).toBe(false);
      failures.push(...(await useAfterClose(dev, twinDev, ctx())));
    }

    // GuestMemfd: needs a VM type with private memory (KVM_X86_SW_PROTECTED_VM = 1) where supported.
    const gmem = (vmType: number) => {
      try {
        return kvm.createVmWithType(vmType).createGuestMemfd({ size: 0x10000n });
      } catch {
        return undefined;
      }
    };
    const twinGmem = gmem(1) ?? gmem(0);
    const g = gmem(1) ?? gmem(0);
    if (twinGmem && g) {
      g.close();
      failures.push(...(await useAfterClose(g, twinGmem, ctx())));
    }
    expect(failures).toEqual([]);

    if (!twinDev || !twinGmem)
      console.warn(`${name}: ${!twinDev ? 'no VFIO device' : ''} ${!twinGmem ? 'no guest_memfd' : ''} on this backend`);
  });

  it('a KvmRunWrapper closed on its own throws ERR_KVM_CLOSED too', async () => {
    const vcpu = kvm.createVm().createVcpu(0);
    const twin = kvm.createVm().createVcpu(0).getKvmRun();
    const run: KvmRunWrapper = vcpu.getKvmRun();
    run.close();
    expect(await useAfterClose(run, twin, ctx())).toEqual([]);
    vcpu.close(); // closes the already-closed run again: idempotent
  });

  it('detaches the views of a GuestMemory on close; a stale view reads as empty', () => {
    const m = GuestMemory.anonymous(0x4000, { backend });
    const bytes = m.bytes;
    bytes[0] = 0xf4;
    expect(m.read(0, 1)).toEqual(Uint8Array.of(0xf4));
    const sub = bytes.subarray(0x1000, 0x2000);
    m.close();
    expect(bytes.byteLength).toBe(0);
    expect(sub.byteLength).toBe(0);
    expect(bytes[0]).toBeUndefined(); // no crash, no data
    expect(bytes.buffer.byteLength).toBe(0);
    expectCode(() => m.bytes, 'KvmClosedError', 'ERR_KVM_CLOSED');
  });

  if (name === 'native') {
    // The mock keeps a vCPU's kvm_run buffer alive with the vCPU (it only models the detach of
    // guest memory), so this one is checked on the kernel only.
    it('detaches the kvm_run views on close; a stale view reads as empty', () => {
      const vcpu = kvm.createVm().createVcpu(0);
      const run = vcpu.getKvmRun();
      const view: DataView = run.asMutRef();
      const bytes = run.bytes;
      expect(bytes.byteLength).toBe(run.size);
      vcpu.close();
      expect(bytes.byteLength).toBe(0);
      expect(bytes[0]).toBeUndefined();
      expect(view.buffer.byteLength).toBe(0);
      expect(() => view.getUint8(0)).toThrow(TypeError); // detached: a JS error, never a segfault
    });
  }

  it('refuses to close a GuestMemory used by a slot (ERR_KVM_IN_USE) until the VM is closed', () => {
    const vm: VmFd = kvm.createVm();
    const m = GuestMemory.anonymous(0x4000, { backend });
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10000n, memory: m });
    expectCode(() => m.close(), 'Error', 'ERR_KVM_IN_USE');
    expect(m.closed).toBe(false);
    m.bytes[0] = 1; // still mapped and usable
    expect(m.read(0, 1)[0]).toBe(1);
    vm.close();
    m.close();
    expect(m.closed).toBe(true);
  });

  it('releases a GuestMemory when its slot is deleted', () => {
    const vm: VmFd = kvm.createVm();
    const m = GuestMemory.anonymous(0x4000, { backend });
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10000n, memory: m });
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10000n, memorySize: 0 });
    m.close();
    expect(m.closed).toBe(true);
    vm.close();
  });

  it('never touches a reused fd number: the old VM throws ERR_KVM_CLOSED and the new VM works', async () => {
    const old: VmFd = kvm.createVm();
    const oldVcpu: VcpuFd = old.createVcpu(0);
    const oldFd = old.asRawFd();
    const oldVcpuFd = oldVcpu.asRawFd();
    old.close();
    // The lowest free fd numbers are handed out again: the new VM and vCPU get the old ones.
    const vm = kvm.createVm();
    const vcpu = vm.createVcpu(0);
    expect(new Set([vm.asRawFd(), vcpu.asRawFd()])).toEqual(new Set([oldFd, oldVcpuFd]));

    const failures = [...(await useAfterClose(old, vm, ctx())), ...(await useAfterClose(oldVcpu, vcpu, ctx()))];
    expect(failures).toEqual([]);
    old.close(); // idempotent, and must not close the new VM's fd
    oldVcpu.close();

    expect(vm.closed).toBe(false);
    expect(fdOpen(backend, vm.asRawFd())).toBe(true);
    expect(vcpu.getRegs().rip).toBe(0xfff0n);
    expectKvmError(() => vm.createVcpu(0), 'EEXIST', 'KVM_CREATE_VCPU'); // the new VM's state, through the reused number
    expect(vm.createVcpu(1).id).toBe(1);
  });
});
