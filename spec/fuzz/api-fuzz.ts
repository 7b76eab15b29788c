/**
 * Child-process fuzzer of the public API (run by `spec/fuzz/api-fuzz.spec.ts` and `npm run stress`).
 *
 *   node -r ts-node/register/transpile-only spec/fuzz/api-fuzz.ts --calls 100000 --seed 1 --backend native
 *
 * It builds a pool of live and closed objects of every public class (Kvm, VmFd with a memory
 * slot, VcpuFd, KvmRunWrapper, GuestMemory, GuestMemoryMap, EventFd, DeviceFd, GuestMemfd, the
 * FAM collections, the device models, VcpuRuntime, …), then makes `--calls` calls chosen by
 * fast-check: a method or accessor of a pool object (found on its prototype chain, so methods
 * added later are fuzzed too), a static method, a free function or a constructor exported by
 * `src/index.ts`, with hostile arguments (wrong types, negative/huge/fractional/NaN numbers,
 * bigints out of range, closed objects, objects of the wrong class, wrong-size and detached
 * buffers, and values returned by the matching getter with one field replaced by junk).
 *
 * Every call's outcome is classified:
 *   - `returned`;
 *   - `expected`: a TypeError/RangeError whose `code` starts with `ERR_`, a `KvmError`, or an Error
 *     whose `code` starts with `ERR_KVM_` (closed, in use, running, …), or the fuzzer's own
 *     hostile getter error propagated unchanged;
 *   - `engine`: the engine's own TypeError for a Symbol or a detached buffer given where a string
 *     or an iterable is expected (what the built-ins do: `new Error(Symbol())`), counted apart;
 *   - `unexpected`: anything else (a plain TypeError from reading a property of undefined, …).
 * A crash is a signal or a non-zero exit of this process: the parent sees it. The pool is closed
 * and rebuilt every `--rebuild` calls, so fds and mappings must come back (the summary reports the
 * fd count before and after).
 *
 * A vCPU may legitimately block in KVM_RUN (a guest in a loop, `hlt` with an in-kernel irqchip):
 * a watchdog thread sends this thread the kick signal every 200 ms while one call lasts longer than
 * that, so `run()` (or a blocking read) returns EINTR, which is an expected KvmError.
 *
 * Not fuzzed, on purpose (the unsafe seam, like kvm-ioctls' `unsafe fn`s): the backend's raw
 * syscalls (`NativeBackend`: raw fds, addresses, ioctl numbers and pointers), adopting raw fds or
 * addresses (`Kvm.fromRawFd`, `DeviceFd.fromRawFd`, `Tap.open` (it would create an interface in the
 * host's network namespace), `new Kvm(opts, fd)`, `createVmfdFromRawfd`, `createVcpuFromRawfd`,
 * `VmFd.borrow`, `borrowVcpu`, `VcpuFd.borrowed`, `GuestMemory.borrow`, `KvmRunWrapper.mmapFromFd`,
 * the `VmFd`/`VcpuFd`/`DeviceFd`/`GuestMemfd` constructors) and the TypeScript-`protected`/
 * `@internal` members (`ioctl`, `getStruct`, `onClosed`, `adopt`, `setOwner`, `attachRun`, `whenEnded`, `kick`, `GuestMemory#retain`, `KvmRunWrapper#pin`).
 *
 * Output: one line `FUZZ_RESULT <json>` on stdout.
 *
 * @module
 */
import fc from 'fast-check';
import { openSync, readdirSync, readlinkSync, writeSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import * as lib from '../../src/index';
import { MockBackend } from '../../src/backend/mock/index';
import type { IoctlBackend } from '../../src/backend/types';
import { enterRealMode } from '../../src/testing/real-mode';

// ---------------------------------------------------------------- options

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : def;
}
const CALLS = Number(arg('calls', '2000'));
const SEED = Number(arg('seed', String(Date.now() % 1_000_000)));
const BACKEND = arg('backend', 'native') as 'native' | 'mock';
const REBUILD = Number(arg('rebuild', '500'));
const VERBOSE = process.argv.includes('--verbose');
/** `--trace file`: each call's index and label is written (synchronously) before it is made, to find the call that crashed. */
const TRACE = arg('trace', '');

// ---------------------------------------------------------------- what is fuzzed

type AnyFn = (...a: unknown[]) => unknown;
type Ctor = new (...a: unknown[]) => unknown;

/** Members that adopt raw fds/addresses or are internal hooks: the unsafe seam, not fuzzed. */
const UNSAFE_MEMBERS = new Set([
  'ioctl',
  'getStruct',
  'onClosed',
  'adopt',
  'borrow',
  'setOwner',
  'attachRun',
  'whenEnded',
  'kick',
  'retain',
  'pin',
  'createVmfdFromRawfd',
  'createVcpuFromRawfd',
  'borrowVcpu',
]);
const UNSAFE_STATICS = new Set([
  // Creates a network interface in this process's namespace: network tests run only in a
  // namespace they create (spec/kvm/virtio-net.kvm.spec.ts), never in the host's.
  'Tap.open',
  'Kvm.fromRawFd',
  'DeviceFd.fromRawFd',
  'VmFd.borrow',
  'VcpuFd.borrowed',
  'GuestMemory.borrow',
  'KvmRunWrapper.mmapFromFd',
]);
/** Classes whose constructor takes raw fds/addresses (or is internal). */
const RAW_CTORS = new Set([
  'NativeBackend',
  'VmFd',
  'VcpuFd',
  'DeviceFd',
  'GuestMemfd',
  'GuestMemory',
  'KvmRunWrapper',
  'IoEventAddress',
  'VcpuRun',
  'FamCollection',
]);

const isClass = (v: unknown): v is Ctor =>
  typeof v === 'function' && /^class[\s{]/.test(Function.prototype.toString.call(v));

const exportsOf = lib as unknown as Record<string, unknown>;
const classes = Object.entries(exportsOf).filter(([, v]) => isClass(v)) as Array<[string, Ctor]>;
const freeFunctions = Object.entries(exportsOf).filter(([, v]) => typeof v === 'function' && !isClass(v)) as Array<
  [string, AnyFn]
>;

// ---------------------------------------------------------------- the hostile values

const HOSTILE = Symbol('hostile getter');
class HostileError extends Error {
  readonly [HOSTILE] = true;
}
function hostileObject(): object {
  return new Proxy(
    {},
    {
      get(_t, k) {
        if (k === Symbol.toPrimitive || k === 'then') return undefined;
        throw new HostileError(`hostile getter ${String(k)}`);
      },
      has() {
        throw new HostileError('hostile has');
      },
      ownKeys() {
        throw new HostileError('hostile ownKeys');
      },
    },
  );
}

/** Stands for a {@link hostileObject} until the call (fast-check itself would trip on the Proxy). */
const HOSTILE_TOKEN = Object.freeze({ hostileToken: true });
const resolve = (x: unknown): unknown => (x === HOSTILE_TOKEN ? hostileObject() : x);

function detachedBuffer(): Uint8Array {
  const ab = new ArrayBuffer(16);
  const view = new Uint8Array(ab);
  structuredClone(ab, { transfer: [ab] });
  return view;
}

interface Pool {
  backend: IoctlBackend;
  /** Named targets: live and closed objects of every class. */
  targets: Array<[string, object]>;
  /** Twins for `setX(getX())` values, keyed by class name. */
  open: Map<string, object>;
  /** Everything to close on rebuild (children first). */
  owned: Array<{ close(): void | Promise<void> }>;
}

const numbers = [
  0,
  1,
  -1,
  2,
  3,
  4,
  7,
  8,
  15,
  16,
  255,
  256,
  0x3f8,
  0x1000,
  0xffff,
  0x10000,
  2 ** 31 - 1,
  2 ** 31,
  -(2 ** 31),
  2 ** 32 - 1,
  2 ** 32,
  2 ** 53,
  -(2 ** 53),
  Number.MAX_SAFE_INTEGER,
  Number.MAX_VALUE,
  1.5,
  -0,
  NaN,
  Infinity,
  -Infinity,
  0.1,
];
const bigints = [
  0n,
  1n,
  -1n,
  0x1000n,
  0xfffffn,
  2n ** 32n,
  2n ** 63n - 1n,
  2n ** 63n,
  -(2n ** 63n),
  2n ** 64n - 1n,
  2n ** 64n,
  2n ** 100n,
];
const strings = [
  '',
  'a',
  '0',
  '0x10',
  'EINVAL',
  'pio',
  'mmio',
  '/dev/kvm',
  '/dev/null',
  '/nonexistent',
  'x'.repeat(5000),
  '\u0000',
  'constructor',
  '__proto__',
];

function valueArb(pool: Pool, closedish: object[]): fc.Arbitrary<unknown> {
  const objs = pool.targets.map(([, o]) => o);
  return fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(...numbers) },
    { weight: 4, arbitrary: fc.integer({ min: -0x2000, max: 0x20000 }) },
    { weight: 2, arbitrary: fc.double() },
    { weight: 5, arbitrary: fc.constantFrom(...bigints) },
    { weight: 2, arbitrary: fc.bigInt({ min: -(2n ** 65n), max: 2n ** 65n }) },
    {
      weight: 3,
      arbitrary: fc.constantFrom<unknown>(
        undefined,
        null,
        true,
        false,
        Symbol('s'),
        () => 1,
        [],
        {},
        [1, 2, 3],
        new Date(0),
        /x/,
      ),
    },
    { weight: 2, arbitrary: fc.constantFrom(...strings) },
    {
      weight: 4,
      arbitrary: fc.oneof(
        fc.integer({ min: 0, max: 9000 }).map((n) => new Uint8Array(n)),
        fc.constantFrom(0, 1, 7, 8, 64, 4096).map((n) => new Uint8Array(n)),
        fc.constantFrom(1, 8, 64).map((n) => new Uint32Array(n)),
        fc.constantFrom(0, 8, 4096).map((n) => new DataView(new ArrayBuffer(n))),
        fc.constantFrom(8, 4096).map((n) => new Uint8Array(new SharedArrayBuffer(n))),
        fc.constantFrom(8, 64).map((n) => new BigUint64Array(n)),
        fc.constant(null).map(() => detachedBuffer()),
        fc.constant(null).map(() => new ArrayBuffer(8)),
        fc.constant(null).map(() => new Uint8Array(new ArrayBuffer(64), 3, 5)),
      ),
    },
    { weight: 4, arbitrary: fc.constantFrom(...objs, ...closedish) },
    { weight: 1, arbitrary: fc.constant(HOSTILE_TOKEN) },
    { weight: 1, arbitrary: fc.constant(null).map(() => AbortSignal.abort()) },
  );
}

/** A structured value with one field (at any depth) replaced by `junk`. */
function mutate(value: unknown, path: number[], junk: unknown): unknown {
  if (value === null || typeof value !== 'object' || ArrayBuffer.isView(value)) return resolve(junk);
  const keys = Object.keys(value);
  if (keys.length === 0 || path.length === 0) return resolve(junk);
  const k = keys[path[0] % keys.length];
  const copy: Record<string, unknown> = Array.isArray(value)
    ? ([...value] as unknown as Record<string, unknown>)
    : { ...(value as Record<string, unknown>) };
  copy[k] = path.length === 1 ? junk : mutate(copy[k], path.slice(1), junk);
  return copy;
}

// ---------------------------------------------------------------- the pool

function tryMake<T>(f: () => T): T | undefined {
  try {
    return f();
  } catch {
    return undefined;
  }
}

function buildPool(backend: IoctlBackend): Pool {
  const L = lib;
  const targets: Array<[string, object]> = [];
  const owned: Array<{ close(): void | Promise<void> }> = [];
  const open = new Map<string, object>();
  const add = (name: string, o: object | undefined, isOpen = true) => {
    if (o === undefined) return;
    targets.push([name, o]);
    if (isOpen && !open.has(o.constructor.name)) open.set(o.constructor.name, o);
  };
  const own = <T extends { close(): void | Promise<void> }>(o: T): T => {
    owned.push(o);
    return o;
  };

  const kvm = own(new L.Kvm({ backend }));
  const mem = own(L.GuestMemory.anonymous(0x10000, { backend }));
  mem.bytes.fill(0xf4); // hlt everywhere
  const vm = kvm.createVm();
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory: mem });
  const vcpu = vm.createVcpu(0);
  enterRealMode(vcpu, { rip: 0x100n });
  const run = vcpu.getKvmRun();
  add('kvm', kvm);
  add('vm', vm);
  add('vcpu', vcpu);
  add('kvmRun', run);
  add('mem', mem);

  // Closed objects of each class.
  const k2 = new L.Kvm({ backend });
  const vm2 = k2.createVm();
  const vcpu2 = vm2.createVcpu(0);
  const run2 = vcpu2.getKvmRun();
  const mem2 = L.GuestMemory.anonymous(0x1000, { backend });
  const efd2 = new L.EventFd({ backend });
  k2.close();
  mem2.close();
  efd2.close();
  const closed = [k2, vm2, vcpu2, run2, mem2, efd2];
  add('closedKvm', k2, false);
  add('closedVm', vm2, false);
  add('closedVcpu', vcpu2, false);
  add('closedKvmRun', run2, false);
  add('closedMem', mem2, false);
  add('closedEventFd', efd2, false);

  const efd = own(new L.EventFd({ backend }));
  add('eventFd', efd);
  add('memMap', new L.GuestMemoryMap([{ guestPhysAddr: 0n, memory: mem }]));
  const dev = tryMake(() => vm.createDevice({ type: L.constants.KVM_DEV_TYPE_VFIO }));
  if (dev) {
    add('deviceFd', dev);
    const k3 = new L.Kvm({ backend });
    const closedDev = tryMake(() => k3.createVm().createDevice({ type: L.constants.KVM_DEV_TYPE_VFIO }));
    k3.close();
    add('closedDeviceFd', closedDev ?? undefined, false);
  }
  const protectedType = (L.constants as unknown as Record<string, number>).KVM_X86_SW_PROTECTED_VM;
  if (protectedType !== undefined) {
    const pvm = tryMake(() => kvm.createVmWithType(protectedType));
    const gmem = pvm && tryMake(() => pvm.createGuestMemfd({ size: 0x10000n }));
    if (gmem) add('guestMemfd', gmem);
    const k4 = new L.Kvm({ backend });
    const cg = tryMake(() => k4.createVmWithType(protectedType).createGuestMemfd({ size: 0x1000n }));
    k4.close();
    if (cg) add('closedGuestMemfd', cg, false);
  }
  add(
    'cpuId',
    tryMake(() => kvm.getSupportedCpuid(L.KVM_MAX_CPUID_ENTRIES)),
  );
  add(
    'msrs',
    tryMake(() => new L.Msrs([{ index: 0x10 }])),
  );
  add(
    'msrList',
    tryMake(() => kvm.getMsrIndexList()),
  );
  add(
    'regList',
    tryMake(() => new L.RegList(4)),
  );
  add(
    'xsave',
    tryMake(() => vcpu.getXsave()),
  );
  add(
    'nested',
    tryMake(() => new L.KvmNestedStateBuffer()),
  );
  add('ioAddress', L.IoEventAddress.pio(0x10));
  add(
    'exitStats',
    tryMake(() => new L.ExitStats()),
  );
  for (const [name, C] of classes) {
    // The device models and anything else whose constructor needs no arguments.
    if (/^(Uart16550|I8042|Cmos|PciAbsent|DebugPorts)$/.test(name))
      add(
        name,
        tryMake(() => new C() as object),
      );
  }
  add('runtime', own(new L.VcpuRuntime({ maxVcpus: 1 })));
  for (const o of closed) targets.push([`closed:${o.constructor.name}`, o]);
  return { backend, targets, open, owned: owned.reverse() };
}

async function closePool(pool: Pool): Promise<void> {
  for (const o of pool.owned) {
    try {
      await o.close();
    } catch (e) {
      // GuestMemory still used by a slot of a VM the fuzz created: closed with its Kvm above.
      if ((e as { code?: string }).code !== 'ERR_KVM_IN_USE') throw e;
    }
  }
}

// ---------------------------------------------------------------- calls

interface Member {
  name: string | symbol;
  kind: 'method' | 'get' | 'set';
}

function membersOf(obj: object): Member[] {
  const out: Member[] = [];
  const seen = new Set<string | symbol>(['constructor']);
  for (
    let p = Object.getPrototypeOf(obj) as object | null;
    p !== null && p !== Object.prototype;
    p = Object.getPrototypeOf(p) as object | null
  ) {
    for (const name of Reflect.ownKeys(p)) {
      if (seen.has(name) || UNSAFE_MEMBERS.has(String(name))) continue;
      seen.add(name);
      const d = Object.getOwnPropertyDescriptor(p, name)!;
      if (typeof d.value === 'function') out.push({ name, kind: 'method' });
      if (d.get) out.push({ name, kind: 'get' });
      if (d.set) out.push({ name, kind: 'set' });
    }
  }
  return out;
}

type Call = { label: string; invoke: () => unknown; returnsOwned?: boolean };

function callArb(pool: Pool): fc.Arbitrary<Call> {
  const closedish = pool.targets.filter(([n]) => n.startsWith('closed')).map(([, o]) => o);
  const v = valueArb(pool, closedish);
  const args = fc.array(v, { maxLength: 4 });

  const memberCalls: Array<{ label: string; obj: object; m: Member }> = [];
  for (const [name, obj] of pool.targets)
    for (const m of membersOf(obj)) memberCalls.push({ label: `${name}.${String(m.name)}`, obj, m });

  const twinValue = (obj: object, m: Member): unknown => {
    // The value a matching getter returns on an open object of the class (setRegs ← getRegs, …).
    const twin = pool.open.get(obj.constructor.name) ?? obj;
    const n = String(m.name);
    const rest = n.startsWith('set') ? n.slice(3) : n;
    for (const g of [`get${rest}`, rest.charAt(0).toLowerCase() + rest.slice(1)]) {
      const fn = (twin as Record<string, unknown>)[g];
      if (typeof fn !== 'function' || g === n) continue;
      try {
        return (fn as () => unknown).call(twin);
      } catch {
        return undefined;
      }
    }
    return undefined;
  };

  const member: fc.Arbitrary<Call> = fc
    .tuple(
      fc.integer({ min: 0, max: memberCalls.length - 1 }),
      args,
      fc.boolean(),
      fc.array(fc.nat(), { minLength: 1, maxLength: 3 }),
      v,
    )
    .map(([i, a, useTwin, path, junk]) => {
      const { label, obj, m } = memberCalls[i];
      const o = obj as Record<string | symbol, unknown>;
      if (m.kind === 'get') return { label: `${label} (get)`, invoke: () => o[m.name] };
      if (m.kind === 'set') return { label: `${label} (set)`, invoke: () => (o[m.name] = resolve(a[0])) };
      const invoke = () => {
        let callArgs = a.map(resolve);
        if (useTwin) {
          const t = twinValue(obj, m);
          if (t !== undefined) callArgs = [mutate(t, path, junk), ...callArgs.slice(1)];
        }
        return (o[m.name] as AnyFn).apply(obj, callArgs);
      };
      return { label, invoke, returnsOwned: true };
    });

  const statics: Array<{ label: string; fn: AnyFn; self: unknown }> = [];
  for (const [name, C] of classes) {
    for (const k of Object.getOwnPropertyNames(C)) {
      if (['length', 'name', 'prototype'].includes(k) || UNSAFE_STATICS.has(`${name}.${k}`)) continue;
      const f = (C as unknown as Record<string, unknown>)[k];
      if (typeof f === 'function') statics.push({ label: `${name}.${k}`, fn: f as AnyFn, self: C });
    }
  }
  for (const [name, f] of freeFunctions) statics.push({ label: name, fn: f, self: undefined });
  const withBackend = (a: unknown[]): unknown[] =>
    a.map((x) =>
      x !== null && typeof x === 'object' && !ArrayBuffer.isView(x) && Math.random() < 0.5
        ? { ...x, backend: pool.backend }
        : x,
    );
  const staticCall: fc.Arbitrary<Call> = fc
    .tuple(fc.integer({ min: 0, max: statics.length - 1 }), args)
    .map(([i, a]) => {
      const s = statics[i];
      return {
        label: s.label,
        invoke: () =>
          s.fn.apply(
            s.self,
            s.label.startsWith('GuestMemory.') || s.label.startsWith('Kvm.')
              ? withBackend(a.map(resolve))
              : a.map(resolve),
          ),
        returnsOwned: true,
      };
    });

  const ctors = classes.filter(([n]) => !RAW_CTORS.has(n));
  const ctorCall: fc.Arbitrary<Call> = fc
    .tuple(fc.integer({ min: 0, max: ctors.length - 1 }), args, fc.boolean())
    .map(([i, a, withB]) => {
      const [name, C] = ctors[i];
      const invoke = () => {
        // `new Kvm(options, fd)` adopts a raw fd: only the one-argument form is fuzzed.
        let callArgs = name === 'Kvm' ? a.slice(0, 1) : a;
        if (withB && (name === 'Kvm' || name === 'EventFd'))
          callArgs = [
            {
              ...(typeof a[0] === 'object' && a[0] !== null && a[0] !== HOSTILE_TOKEN ? a[0] : {}),
              backend: pool.backend,
            },
          ];
        return new C(...callArgs.map(resolve));
      };
      return { label: `new ${name}`, invoke, returnsOwned: true };
    });

  return fc.oneof(
    { weight: 8, arbitrary: member },
    { weight: 2, arbitrary: staticCall },
    { weight: 1, arbitrary: ctorCall },
  );
}

// ---------------------------------------------------------------- classification

interface Summary {
  seed: number;
  backend: string;
  calls: number;
  returned: number;
  expected: Record<string, number>;
  unexpected: number;
  unexpectedSamples: Record<string, string>;
  pending: number;
  kicks: number;
  fds: { before: number; after: number; added?: string[] };
  ms: number;
  members: number;
}

/** The error classes kvm-rx exports (subclasses of Error other than the built-ins). */
const libErrorClasses: Array<abstract new (...a: never[]) => Error> = (Object.values(lib) as unknown[]).filter(
  (v): v is abstract new (...a: never[]) => Error =>
    typeof v === 'function' &&
    (v as { prototype?: unknown }).prototype instanceof Error &&
    v !== TypeError &&
    v !== RangeError,
);

function classify(e: unknown): { ok: boolean; key: string } {
  if (e instanceof HostileError) return { ok: true, key: 'hostile getter (propagated)' };
  const x = e as { name?: string; code?: unknown; message?: string; constructor?: { name?: string } };
  if (e instanceof lib.KvmError) return { ok: true, key: `KvmError ${String(x.code)}` };
  const code = typeof x?.code === 'string' ? x.code : undefined;
  if ((e instanceof TypeError || e instanceof RangeError) && code?.startsWith('ERR_'))
    return { ok: true, key: `${x.name} ${code}` };
  if (e instanceof Error && code?.startsWith('ERR_KVM_'))
    return { ok: true, key: `${x.constructor?.name ?? x.name} ${code}` };
  if (e instanceof lib.AbortError) return { ok: true, key: 'AbortError' };
  // kvm-rx's own typed errors with an ERR_ code (VirtqueueError, SandboxError, …).
  if (e instanceof Error && code?.startsWith('ERR_') && libErrorClasses.some((C) => e instanceof C))
    return { ok: true, key: `${x.constructor?.name ?? x.name} ${code}` };
  // Node's own system errors from the file system (a snapshot or image path that does not exist):
  // the same contract as a KvmError (code, negative errno, syscall), as the members document.
  const sys = e as { errno?: unknown; syscall?: unknown };
  if (
    e instanceof Error &&
    code !== undefined &&
    /^E[A-Z0-9]+$/.test(code) &&
    typeof sys.errno === 'number' &&
    sys.errno < 0 &&
    typeof sys.syscall === 'string'
  )
    return { ok: true, key: `system error ${code} (${sys.syscall})` };
  // The engine's own TypeError for an argument no built-in can convert either (`new Error(Symbol())`,
  // `Array.from(detachedTypedArray)`): same behaviour as the built-ins, counted apart.
  if (
    e instanceof TypeError &&
    code === undefined &&
    /^Cannot convert a Symbol value to a string$|on a detached ArrayBuffer$/.test(String(x.message))
  ) {
    return { ok: true, key: 'engine TypeError: unconvertible argument (Symbol, detached buffer)' };
  }
  return {
    ok: false,
    key: `${x?.constructor?.name ?? typeof e}${code ? ` ${code}` : ''}: ${String(x?.message ?? e).slice(0, 160)}`,
  };
}

const fdCount = (): number => readdirSync('/proc/self/fd').length;
const fdTargets = (): string[] =>
  readdirSync('/proc/self/fd').map((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      return '?';
    }
  });
/** What fds 0, 1 and 2 refer to, as one string. */
const stdioTargets = (): string =>
  [0, 1, 2]
    .map((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        return 'closed';
      }
    })
    .join(', ');

// ---------------------------------------------------------------- watchdog

/** Kicks this thread out of a blocking call (KVM_RUN, …) that takes more than 200 ms. */
function startWatchdog(backend: IoctlBackend): { sab: Int32Array; tids: BigInt64Array; stop: () => void } {
  const sab = new SharedArrayBuffer(64);
  const ctl = new Int32Array(sab, 0, 4); // [0] call sequence, [1] in call, [2] kicks, [3] stop
  const tids = new BigInt64Array(sab, 16, 6); // [0] this thread
  tids[0] = backend.threadSelf();
  backend.kickSignal();
  const src = `
    const { workerData } = require('node:worker_threads');
    const { nativeBackend } = require(${JSON.stringify(require.resolve('../../src/backend/native'))});
    const b = nativeBackend();
    const ctl = new Int32Array(workerData, 0, 4);
    const tids = new BigInt64Array(workerData, 16, 6);
    let last = -1, same = 0;
    while (Atomics.load(ctl, 3) === 0) {
      Atomics.wait(ctl, 3, 0, 50);
      const seq = Atomics.load(ctl, 0);
      if (Atomics.load(ctl, 1) === 1 && seq === last) {
        if (++same >= 4) { // 200 ms in one call; then again every 200 ms
          b.kick(tids[0], 0n); // the signal only: the vCPU's kvm_run may be unmapped by now
          Atomics.add(ctl, 2, 1);
          same = 0;
        }
      } else { same = 0; last = seq; }
    }`;
  const w = new Worker(src, { eval: true, workerData: sab, execArgv: ['-r', 'ts-node/register/transpile-only'] });
  w.unref();
  return {
    sab: ctl,
    tids,
    stop: () => {
      Atomics.store(ctl, 3, 1);
      Atomics.notify(ctl, 3);
    },
  };
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const t0 = Date.now();
  const backend: IoctlBackend =
    BACKEND === 'mock' ? new MockBackend() : lib.NativeBackend ? new lib.NativeBackend() : (undefined as never);
  const dog = BACKEND === 'native' ? startWatchdog(backend) : undefined;
  const summary: Summary = {
    seed: SEED,
    backend: BACKEND,
    calls: 0,
    returned: 0,
    expected: {},
    unexpected: 0,
    unexpectedSamples: {},
    pending: 0,
    kicks: 0,
    fds: { before: 0, after: 0 },
    ms: 0,
    members: 0,
  };
  // Warm-up pool, for the fd baseline.
  await closePool(buildPool(backend));
  summary.fds.before = fdCount();
  const fds0 = fdTargets();
  // A call that closed stdin/stdout/stderr would make the next pipe or spawn get fd 0-2, which
  // libuv asserts on (SIGABRT, with nothing on stderr): check them after every batch instead.
  const stdio0 = stdioTargets();

  const record = (label: string, outcome: { returned: true } | { error: unknown }) => {
    if ('returned' in outcome) {
      summary.returned++;
      return;
    }
    const c = classify(outcome.error);
    if (c.ok) summary.expected[c.key] = (summary.expected[c.key] ?? 0) + 1;
    else {
      summary.unexpected++;
      const k = `${label} → ${c.key}`;
      if (summary.unexpectedSamples[k] === undefined) {
        summary.unexpectedSamples[k] =
          (outcome.error as Error)?.stack?.split('\n').slice(0, 4).join(' | ') ?? String(outcome.error);
        if (VERBOSE) process.stderr.write(`UNEXPECTED ${k}\n${(outcome.error as Error)?.stack}\n`);
      }
    }
  };

  let done = 0;
  let batch = 0;
  const inFlight: Array<Promise<unknown>> = [];
  // Each batch's list of objects to close: promises that settle after their batch ended add to it.
  const spawnedLists: Array<Array<{ close(): unknown }>> = [];
  const traceFd = TRACE ? openSync(TRACE, 'w') : -1;
  while (done < CALLS) {
    const n = Math.min(REBUILD, CALLS - done);
    const pool = buildPool(backend);
    summary.members = Math.max(
      summary.members,
      pool.targets.reduce((s, [, o]) => s + membersOf(o).length, 0),
    );
    const calls = fc.sample(callArb(pool), { seed: SEED + batch, numRuns: n });
    const spawned: Array<{ close(): unknown }> = [];
    const pending: Array<Promise<unknown>> = [];
    for (const call of calls) {
      if (dog) {
        Atomics.add(dog.sab, 0, 1);
        Atomics.store(dog.sab, 1, 1);
      }
      let r: unknown;
      if (traceFd >= 0) writeSync(traceFd, `${summary.calls} ${call.label}\n`);
      try {
        r = call.invoke();
        if (r instanceof Promise) {
          pending.push(
            r.then(
              (v) => {
                record(call.label, { returned: true });
                if (v && typeof (v as { close?: unknown }).close === 'function')
                  spawned.push(v as { close(): unknown });
              },
              (e: unknown) => record(call.label, { error: e }),
            ),
          );
        } else {
          record(call.label, { returned: true });
          // `Kvm.openWithCloexec[At]` return a raw fd the caller owns (as in kvm-ioctls).
          if (call.label.startsWith('Kvm.openWithCloexec') && typeof r === 'number')
            tryMake(() => backend.close(r as number));
          if (call.returnsOwned && r && typeof r === 'object' && typeof (r as { close?: unknown }).close === 'function')
            spawned.push(r as { close(): unknown });
          // A VcpuRun from runtime.start(): stop it (it owns a worker thread).
          if (r instanceof lib.VcpuRun) pending.push(r.stop());
        }
      } catch (e) {
        record(call.label, { error: e });
      } finally {
        if (dog) Atomics.store(dog.sab, 1, 0);
      }
      // A kick may have left immediate_exit set on the pool's vCPU: clear it for the next call.
      if (dog && Atomics.load(dog.sab, 2) !== summary.kicks) {
        summary.kicks = Atomics.load(dog.sab, 2);
        for (const [, o] of pool.targets) if (o instanceof lib.KvmRunWrapper) tryMake(() => (o.immediateExit = 0));
      }
      summary.calls++;
    }
    // Promises (readAsync, runtime.close, VcpuRun.stop, …): give them a moment, then move on.
    const settled = await Promise.race([
      Promise.allSettled(pending).then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), 500)),
    ]);
    if (!settled) summary.pending++;
    inFlight.push(...pending);
    for (const s of spawned.reverse()) tryMake(() => s.close());
    spawned.length = 0;
    spawnedLists.push(spawned);
    await closePool(pool);
    const stdio = stdioTargets();
    if (stdio !== stdio0)
      throw new Error(`stdio fds changed in calls ${done}..${done + n - 1}: ${stdio0} became ${stdio}`);
    done += n;
    batch++;
  }
  // Calls still in flight (checkHost's probes start a VM and a worker thread and take seconds)
  // hold fds until they settle: wait for them, bounded, before counting what is left open.
  const drained = await Promise.race([
    Promise.allSettled(inFlight).then(() => true),
    new Promise<boolean>((r) => setTimeout(() => r(false), 20_000).unref()),
  ]);
  if (!drained) summary.pending++;
  for (const list of spawnedLists) for (const s of list.reverse()) tryMake(() => s.close());
  // Objects the fuzz created and did not close are closed by their parents above; GC the rest.
  (globalThis as { gc?: () => void }).gc?.();
  summary.fds.after = fdCount();
  const fds1 = fdTargets();
  for (const f of fds0) fds1.splice(fds1.indexOf(f), fds1.includes(f) ? 1 : 0);
  const added = fds1.filter((f) => f !== '?'); // '?': the directory fd of the listing itself
  if (added.length > 0) summary.fds.added = added;
  summary.ms = Date.now() - t0;
  dog?.stop();
  process.stdout.write(`FUZZ_RESULT ${JSON.stringify(summary)}\n`);
  // Worker threads of runtimes the fuzz left open must not keep the process alive.
  process.exit(0);
}

process.on('unhandledRejection', (e) => {
  process.stderr.write(`unhandled rejection: ${(e as Error)?.stack ?? String(e)}\n`);
  process.exit(70);
});

main().catch((e: unknown) => {
  process.stderr.write(`fuzzer failed: ${(e as Error)?.stack ?? String(e)}\n`);
  process.exit(71);
});
