/**
 * What a snapshot of a `bootLinux()` machine holds, and how the machine is rebuilt from one: the
 * VM with its irqchip and PIT, guest RAM mapped privately from the snapshot file, the vCPUs and
 * the VM's in-kernel devices restored in the kernel's order. The device models (legacy PC, virtio)
 * are restored by `restoreLinux()` after this, as Firecracker does: after the KVM state, so an
 * interrupt a device raises on restore is not overwritten by the saved irqchip state.
 *
 * @module
 */
import { checkBool, checkInt, checkObject, invalidType, outOfRange } from '../abi/validate';
import { KvmClosedError } from '../abi/errors';
import { GuestMemory } from '../wrappers/guest-memory';
import { Kvm } from '../wrappers/kvm';
import type { VcpuFd } from '../wrappers/vcpu-fd';
import type { VmFd } from '../wrappers/vm-fd';
import type { BootInfo, LinuxMachine } from './boot';
import { createLinuxVmShell } from './boot';
import { SnapshotError } from './errors';
import { MPTABLE_MAX_CPUS } from './mptable';
import {
  SNAPSHOT_PAGE_SIZE,
  checkSnapshotFileArg,
  checkSnapshotHost,
  mapSnapshotMemory,
  hostOfKvm,
  type SnapshotFile,
} from './snapshot-file';
import { restoreVcpuState, restoreVmState, type VcpuState, type VmState } from './vcpu-state';

/** The machine kind a `bootLinux()` snapshot records. */
export const LINUX_SNAPSHOT_MACHINE = 'linux';

/** One virtio device of a Linux snapshot. */
export interface LinuxSnapshotVirtio {
  name: string;
  deviceId: number;
  /** The register window, `0x` hex. */
  base: string;
  gsi: number;
  /** `VirtioMmioDevice.saveState()`. */
  state: unknown;
}

/** The state of a `bootLinux()` machine in a snapshot (the file's state part). */
export interface LinuxSnapshotState {
  version: 1;
  memSize: number;
  irqchip: boolean;
  cpus: number;
  /** Where the legacy devices ran (`'main'` for several vCPUs). */
  legacy: 'worker' | 'main';
  /** Whether the guest's writes were logged (diff snapshots). */
  trackDirtyPages: boolean;
  boot: BootInfo;
  /** `LegacyPcDevices.saveState()`. */
  legacyDevices: unknown;
  virtio: LinuxSnapshotVirtio[];
  vcpus: VcpuState[];
  vm: VmState;
  /** What the snapshot's taker added (`linux.snapshot(path, { meta })`), e.g. how to reopen devices. */
  meta?: unknown;
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Checks the outline of a Linux snapshot's state (what the machine is made of) before anything is
 * created; the parts (vCPU state, device state) are checked by their own restore functions.
 *
 * @throws {@link SnapshotError} `ERR_KVM_SNAPSHOT_MISMATCH` for another machine kind,
 *   `ERR_KVM_SNAPSHOT_CORRUPT` for a state that does not fit the file's memory or itself
 */
export function checkLinuxSnapshotState(file: SnapshotFile): LinuxSnapshotState {
  checkSnapshotFileArg('file', file);
  const bad = (detail: string): never => {
    throw new SnapshotError('ERR_KVM_SNAPSHOT_CORRUPT', file.path, `the machine state ${detail}`);
  };
  if (file.header.machine !== LINUX_SNAPSHOT_MACHINE)
    throw new SnapshotError(
      'ERR_KVM_SNAPSHOT_MISMATCH',
      file.path,
      `it is a '${file.header.machine}' machine, not a bootLinux() one`,
    );
  const s = file.state;
  if (!isObj(s)) return bad('is not an object');
  if (s.version !== 1) bad(`has version ${String(s.version)}, not 1`);
  const memSize = s.memSize;
  if (typeof memSize !== 'number' || !Number.isInteger(memSize) || memSize <= 0 || memSize % SNAPSHOT_PAGE_SIZE !== 0)
    bad('has no valid memSize');
  if (file.regions.length !== 1 || file.regions[0].gpa !== 0n || file.regions[0].size !== memSize)
    bad(
      `says ${String(memSize)} bytes of RAM at 0; the file holds ${file.regions.map((r) => `${r.size} at ${r.guestPhysAddr}`).join(', ')}`,
    );
  if (typeof s.irqchip !== 'boolean' || typeof s.trackDirtyPages !== 'boolean')
    bad('has no irqchip/trackDirtyPages flags');
  const cpus = s.cpus;
  if (typeof cpus !== 'number' || !Number.isInteger(cpus) || cpus < 1 || cpus > MPTABLE_MAX_CPUS)
    bad('has a bad cpus count');
  if (s.legacy !== 'worker' && s.legacy !== 'main') bad('has a bad legacy placement');
  if (s.legacy === 'worker' && cpus !== 1) bad('runs legacy devices in the worker with several vCPUs');
  if (!isObj(s.boot)) bad('has no boot information');
  if (!isObj(s.legacyDevices)) bad('has no legacy device state');
  if (!isObj(s.vm)) bad('has no VM state');
  if (!Array.isArray(s.vcpus) || s.vcpus.length !== cpus)
    bad(`has ${Array.isArray(s.vcpus) ? s.vcpus.length : 'no'} vCPU states for ${String(cpus)} vCPUs`);
  for (const [i, v] of (s.vcpus as unknown[]).entries()) {
    if (!isObj(v) || v.id !== i || !Array.isArray(v.cpuid)) bad(`has a malformed state for vCPU ${i}`);
  }
  if (!Array.isArray(s.virtio) || s.virtio.length > 8) bad('has no list of at most 8 virtio devices');
  for (const [i, d] of (s.virtio as unknown[]).entries()) {
    if (
      !isObj(d) ||
      typeof d.name !== 'string' ||
      typeof d.deviceId !== 'number' ||
      typeof d.base !== 'string' ||
      !/^0x[0-9a-f]{1,13}$/.test(d.base) ||
      typeof d.gsi !== 'number'
    )
      bad(`has a malformed virtio device ${i}`);
  }
  if ((s.virtio as unknown[]).length > 0 && s.irqchip !== true) bad('has virtio devices without an irqchip');
  return s as unknown as LinuxSnapshotState;
}

/** Options of {@link prepareLinuxRestore}: what the snapshots it will take have. */
export interface PrepareLinuxRestoreOptions {
  /** Guest RAM in bytes (a multiple of 4096), as in the snapshot. */
  memSize: number;
  /** vCPUs, as in the snapshot. Default 1. */
  cpus?: number;
  /** Log the guest's writes (diff snapshots of the restored VM). Default `false`. */
  trackDirtyPages?: boolean;
  /** The `/dev/kvm` to use (kept open by the VM restored into it). Default: a new one, owned. */
  kvm?: Kvm;
}

const PREPARED = Symbol('PreparedLinuxVm');

/**
 * A VM made ahead of a restore (see {@link prepareLinuxRestore}): KVM_CREATE_VM, a private
 * anonymous RAM mapping in slot 0, TSS, identity map, irqchip, PIT and the vCPUs, none of which
 * has run. `restoreLinux(path, { prepared })` maps the snapshot's RAM over that mapping in place
 * and restores the vCPUs into it. One restore per prepared VM; close it if it is not used.
 */
export class PreparedLinuxVm implements Disposable {
  /** The `Kvm` it was made with. */
  readonly kvm: Kvm;
  readonly memSize: number;
  readonly cpus: number;
  readonly trackDirtyPages: boolean;
  /** @internal Whether {@link close} closes `kvm` too (it made it). */
  readonly ownKvm: boolean;
  #parts: { vm: VmFd; vcpus: VcpuFd[]; memory: GuestMemory } | undefined;

  /**
   * @internal Use {@link prepareLinuxRestore}.
   * @throws `TypeError` `ERR_ILLEGAL_CONSTRUCTOR` when called from outside
   */
  constructor(
    token: symbol,
    kvm: Kvm,
    ownKvm: boolean,
    options: Required<Omit<PrepareLinuxRestoreOptions, 'kvm'>>,
    parts: { vm: VmFd; vcpus: VcpuFd[]; memory: GuestMemory },
  ) {
    if (token !== PREPARED)
      throw Object.assign(new TypeError('PreparedLinuxVm is made by prepareLinuxRestore()'), {
        code: 'ERR_ILLEGAL_CONSTRUCTOR',
      });
    this.kvm = kvm;
    this.ownKvm = ownKvm;
    this.memSize = options.memSize;
    this.cpus = options.cpus;
    this.trackDirtyPages = options.trackDirtyPages;
    this.#parts = parts;
  }

  /** Whether it was used by a restore or closed. */
  get used(): boolean {
    return this.#parts === undefined;
  }

  /** @internal Hands the parts to a restore, once. */
  take(): { vm: VmFd; vcpus: VcpuFd[]; memory: GuestMemory } {
    const parts = this.#parts;
    if (parts === undefined) throw new KvmClosedError('PreparedLinuxVm (used up by a restore, or closed)');
    this.#parts = undefined;
    return parts;
  }

  /** Closes the VM, its vCPUs and RAM (and the `Kvm` it made) unless a restore took them. Idempotent. */
  close(): void {
    const parts = this.#parts;
    this.#parts = undefined;
    if (parts !== undefined) {
      parts.vm.close();
      parts.memory.close();
      if (this.ownKvm) this.kvm.close();
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Makes a VM ready for a later `restoreLinux(path, { prepared })` of a snapshot with this RAM size,
 * vCPU count and dirty tracking: the kernel work that does not depend on the snapshot
 * (KVM_CREATE_VM, the memory slot, TSS, irqchip, PIT, KVM_CREATE_VCPU: 3–4 ms on the PVM hosts
 * measured) is done now, off the restore's clock, as a service keeps a prepared VM for its next
 * restore. Its RAM is a private anonymous mapping reserved with `MAP_NORESERVE`: nothing is
 * allocated until a restored guest writes.
 *
 * @example
 * ```ts
 * // @ts-setup: import { prepareLinuxRestore, restoreLinux } from 'kvm-rx';
 * const prepared = prepareLinuxRestore({ memSize: 2 ** 31 });
 * // … later, when a request comes:
 * const linux = restoreLinux('booted.snap', { prepared });
 * ```
 * @throws `TypeError`/`RangeError` (`ERR_INVALID_ARG_TYPE`, `ERR_OUT_OF_RANGE`) for bad options;
 *   {@link KvmError} from the ioctls or `mmap` (nothing is left open)
 */
export function prepareLinuxRestore(options: PrepareLinuxRestoreOptions): PreparedLinuxVm {
  checkObject('options', options);
  const memSize = checkInt('options.memSize', options.memSize, SNAPSHOT_PAGE_SIZE, Number.MAX_SAFE_INTEGER);
  if (memSize % SNAPSHOT_PAGE_SIZE !== 0) outOfRange('options.memSize', `a multiple of ${SNAPSHOT_PAGE_SIZE}`, memSize);
  const cpus = checkInt('options.cpus', options.cpus ?? 1, 1, MPTABLE_MAX_CPUS);
  const trackDirtyPages = checkBool('options.trackDirtyPages', options.trackDirtyPages ?? false);
  if (options.kvm !== undefined && !(options.kvm instanceof Kvm))
    invalidType('options.kvm', 'an instance of Kvm', options.kvm);
  const ownKvm = options.kvm === undefined;
  const kvm = options.kvm ?? new Kvm();
  let memory: GuestMemory | undefined;
  let vm: VmFd | undefined;
  try {
    memory = GuestMemory.anonymous(memSize, { shared: false, backend: kvm.backend });
    vm = createLinuxVmShell(kvm, true, { memory, trackDirtyPages });
    const vcpus: VcpuFd[] = [];
    for (let id = 0; id < cpus; id++) vcpus.push(vm.createVcpu(id));
    return new PreparedLinuxVm(PREPARED, kvm, ownKvm, { memSize, cpus, trackDirtyPages }, { vm, vcpus, memory });
  } catch (e) {
    vm?.close();
    memory?.close();
    if (ownKvm) kvm.close();
    throw e;
  }
}

/**
 * Checks that `prepared` can take a snapshot with `state` (restored with `trackDirtyPages`).
 *
 * @throws {@link SnapshotError} `ERR_KVM_SNAPSHOT_MISMATCH` naming what differs; `KvmClosedError`
 *   for a prepared VM already used or closed
 */
export function checkPreparedFor(
  prepared: PreparedLinuxVm,
  file: SnapshotFile,
  state: LinuxSnapshotState,
  trackDirtyPages: boolean,
): void {
  if (prepared.used) throw new KvmClosedError('PreparedLinuxVm (used up by a restore, or closed)');
  const differs: string[] = [];
  if (prepared.memSize !== state.memSize) differs.push(`${state.memSize} bytes of RAM, not ${prepared.memSize}`);
  if (prepared.cpus !== state.cpus) differs.push(`${state.cpus} vCPUs, not ${prepared.cpus}`);
  if (!state.irqchip) differs.push('no irqchip');
  if (prepared.trackDirtyPages !== trackDirtyPages)
    differs.push(`trackDirtyPages ${String(trackDirtyPages)}, not ${String(prepared.trackDirtyPages)}`);
  if (differs.length > 0)
    throw new SnapshotError(
      'ERR_KVM_SNAPSHOT_MISMATCH',
      file.path,
      `the prepared VM does not fit it: it has ${differs.join(', ')}`,
    );
}

/**
 * Rebuilds a Linux machine from a snapshot chain (oldest first; see `readSnapshotChain`): checks
 * the host can stand in for the saved one, creates the VM (TSS, identity map, irqchip and PIT
 * before any vCPU), maps RAM from the file (`mapSnapshotMemory`: constant time for a full
 * snapshot), creates every vCPU and restores it (`restoreVcpuState`: CPUID first, events last),
 * then the VM's PIT, clock and irqchips (after the vCPUs, whose restore could change them). On any
 * failure everything made so far is closed.
 *
 * @throws {@link SnapshotError} (`ERR_KVM_SNAPSHOT_HOST`, `ERR_KVM_SNAPSHOT_CORRUPT` for state the
 *   restore functions refuse); `KvmError` from the ioctls
 */
export function restoreLinuxMachine(
  kvm: Kvm,
  chain: readonly SnapshotFile[],
  state: LinuxSnapshotState,
  options: { trackDirtyPages: boolean; prepared?: PreparedLinuxVm },
): LinuxMachine {
  const last = chain[chain.length - 1];
  checkSnapshotHost(last, hostOfKvm(kvm));
  const { prepared } = options;
  if (prepared !== undefined) checkPreparedFor(prepared, last, state, options.trackDirtyPages);
  let memory: GuestMemory;
  let vm: VmFd;
  let vcpus: VcpuFd[];
  if (prepared !== undefined) {
    // Made before the clock: the snapshot's RAM goes over the prepared mapping, in its slot.
    ({ vm, vcpus, memory } = prepared.take());
    try {
      mapSnapshotMemory(chain, kvm.backend, [memory]);
    } catch (e) {
      vm.close();
      memory.close();
      throw e;
    }
  } else {
    [memory] = mapSnapshotMemory(chain, kvm.backend);
    try {
      vm = createLinuxVmShell(kvm, state.irqchip, { memory, trackDirtyPages: options.trackDirtyPages });
    } catch (e) {
      memory.close();
      throw e;
    }
    vcpus = [];
  }
  try {
    if (prepared === undefined) for (const v of state.vcpus) vcpus.push(vm.createVcpu(v.id));
    try {
      for (const [i, v] of state.vcpus.entries()) restoreVcpuState(vcpus[i], v);
      restoreVmState(vm, state.vm);
    } catch (e) {
      if (e instanceof TypeError || e instanceof RangeError)
        throw new SnapshotError('ERR_KVM_SNAPSHOT_CORRUPT', last.path, `its KVM state is refused: ${e.message}`);
      throw e;
    }
    const mem = memory;
    const close = () => {
      vm.close();
      mem.close();
    };
    return {
      vm,
      vcpu: vcpus[0],
      vcpus,
      memory: mem,
      memSize: state.memSize,
      boot: state.boot,
      irqchip: state.irqchip,
      close,
      [Symbol.dispose]: close,
    };
  } catch (e) {
    vm.close(); // closes the vCPUs made so far
    memory.close();
    throw e;
  }
}
