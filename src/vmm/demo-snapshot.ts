/**
 * What a snapshot of the demo VM (`startDemo()`, `kvm-rx run`) holds, and how the machine is
 * rebuilt from one: the VM with its irqchip, the 64 KiB of RAM mapped privately from the snapshot
 * file, the vCPU and the VM's in-kernel devices restored in the kernel's order. The device models
 * (COM1 and the other legacy ports) are restored after this in the vCPU's worker, and the console's
 * own state (input held back until the banner is out) on the main thread, by `restoreDemo()`.
 *
 * @module
 */
import type { GuestMemory } from '../wrappers/guest-memory';
import type { Kvm } from '../wrappers/kvm';
import type { VcpuFd } from '../wrappers/vcpu-fd';
import type { VmFd } from '../wrappers/vm-fd';
import { SnapshotError } from './errors';
import {
  checkSnapshotFileArg,
  checkSnapshotHost,
  mapSnapshotMemory,
  hostOfKvm,
  type SnapshotFile,
} from './snapshot-file';
import { restoreVcpuState, restoreVmState, type VcpuState, type VmState } from './vcpu-state';

/** The machine kind a demo snapshot records (`SnapshotHeader.machine`). */
export const DEMO_SNAPSHOT_MACHINE = 'demo';

/** The demo VM's RAM: the IVT, the guest's code at 0x1000, its stack below 0x7000. */
export const DEMO_MEM_SIZE = 0x10000;

/** The most input a demo snapshot may hold back for the guest (bytes typed before its banner was out). */
const MAX_HELD_BYTES = 1 << 20;

/** What the demo's console (on the main thread) keeps: input is held back until the guest's banner is out. */
export interface DemoConsoleState {
  /** Whether the guest's banner is out (typed input goes to COM1 from then on). */
  ready: boolean;
  /** The part of the banner printed so far, while not `ready` (Latin-1). */
  banner: string;
  /** Input typed before the banner was out, in order, not yet given to the guest. */
  held: Uint8Array[];
}

/** The state of a demo VM in a snapshot (the file's state part). */
export interface DemoSnapshotState {
  version: 1;
  /** Always {@link DEMO_MEM_SIZE}. */
  memSize: number;
  console: DemoConsoleState;
  /** `LegacyPcDevices.saveState()` of the demo's devices (COM1, i8042, CMOS, PCI, debug ports). */
  legacyDevices: unknown;
  vcpu: VcpuState;
  vm: VmState;
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Checks the outline of a demo snapshot's state (what the machine is made of) before anything is
 * created; the parts (vCPU, VM and device state) are checked by their own restore functions.
 *
 * @example
 * ```ts
 * const state = checkDemoSnapshotState(readSnapshotFile('demo.snap'));
 * state.console.ready; // true once the guest's banner was out
 * ```
 * @throws {@link SnapshotError} `ERR_KVM_SNAPSHOT_MISMATCH` for another machine kind,
 *   `ERR_KVM_SNAPSHOT_CORRUPT` for a state that does not fit the file's memory or itself
 */
export function checkDemoSnapshotState(file: SnapshotFile): DemoSnapshotState {
  checkSnapshotFileArg('file', file);
  const bad = (detail: string): never => {
    throw new SnapshotError('ERR_KVM_SNAPSHOT_CORRUPT', file.path, `the machine state ${detail}`);
  };
  if (file.header.machine !== DEMO_SNAPSHOT_MACHINE)
    throw new SnapshotError(
      'ERR_KVM_SNAPSHOT_MISMATCH',
      file.path,
      `it is a '${file.header.machine}' machine, not the demo VM (restore it with what took it)`,
    );
  const s = file.state;
  if (!isObj(s)) return bad('is not an object');
  if (s.version !== 1) bad(`has version ${String(s.version)}, not 1`);
  if (s.memSize !== DEMO_MEM_SIZE) bad(`has memSize ${String(s.memSize)}, not ${DEMO_MEM_SIZE}`);
  if (file.regions.length !== 1 || file.regions[0].gpa !== 0n || file.regions[0].size !== DEMO_MEM_SIZE)
    bad(
      `says ${DEMO_MEM_SIZE} bytes of RAM at 0; the file holds ${file.regions.map((r) => `${r.size} at ${r.guestPhysAddr}`).join(', ') || 'none'}`,
    );
  const con = s.console;
  if (!isObj(con) || typeof con.ready !== 'boolean' || typeof con.banner !== 'string' || !Array.isArray(con.held))
    return bad('has no console { ready, banner, held }');
  if (con.banner.length > 4096 || (con.ready && con.banner !== '')) bad('has a bad console banner');
  let heldBytes = 0;
  for (const [i, b] of (con.held as unknown[]).entries()) {
    if (!(b instanceof Uint8Array)) bad(`has console input ${i} that is not bytes`);
    heldBytes += (b as Uint8Array).length;
  }
  if (heldBytes > MAX_HELD_BYTES) bad(`holds ${heldBytes} bytes of console input, more than ${MAX_HELD_BYTES}`);
  if (con.ready && con.held.length > 0) bad('holds console input back after the banner was out');
  if (!isObj(s.legacyDevices)) bad('has no legacy device state');
  const v = s.vcpu;
  if (!isObj(v) || v.id !== 0 || !Array.isArray(v.cpuid)) bad('has no state for vCPU 0');
  if (!isObj(s.vm)) bad('has no VM state');
  const chips = (s.vm as Record<string, unknown>).irqchips;
  if (!Array.isArray(chips) || chips.length !== 3) bad('has no irqchip state (the demo VM has the in-kernel irqchip)');
  return s as unknown as DemoSnapshotState;
}

/** A demo VM rebuilt from a snapshot, not yet running. */
export interface DemoMachine {
  vm: VmFd;
  vcpu: VcpuFd;
  memory: GuestMemory;
}

/**
 * Rebuilds the demo VM from a snapshot chain (oldest first; see `readSnapshotChain`): checks the
 * host can stand in for the saved one, creates the VM and its irqchip (before any vCPU), maps RAM
 * from the file (`mapSnapshotMemory`: constant time), creates vCPU 0 and restores it
 * (`restoreVcpuState`), then the VM's clock and irqchips (after the vCPU, whose restore could
 * change them). On any failure everything made so far is closed (`kvm` stays open: it is the
 * caller's).
 *
 * @throws {@link SnapshotError} (`ERR_KVM_SNAPSHOT_HOST`, `ERR_KVM_SNAPSHOT_CORRUPT` for state the
 *   restore functions refuse); `KvmError` from the ioctls
 */
export function restoreDemoMachine(kvm: Kvm, chain: readonly SnapshotFile[], state: DemoSnapshotState): DemoMachine {
  const last = chain[chain.length - 1];
  checkSnapshotHost(last, hostOfKvm(kvm));
  const vm = kvm.createVm();
  let memory: GuestMemory | undefined;
  try {
    vm.createIrqChip(); // the 8259 that turns the UART's IRQ 4 into an interrupt
    [memory] = mapSnapshotMemory(chain, vm.backend);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory });
    const vcpu = vm.createVcpu(0);
    try {
      restoreVcpuState(vcpu, state.vcpu);
      restoreVmState(vm, state.vm);
    } catch (e) {
      if (e instanceof TypeError || e instanceof RangeError)
        throw new SnapshotError('ERR_KVM_SNAPSHOT_CORRUPT', last.path, `its KVM state is refused: ${e.message}`);
      throw e;
    }
    return { vm, vcpu, memory };
  } catch (e) {
    vm.close(); // closes the vCPU with it
    memory?.close();
    throw e;
  }
}
