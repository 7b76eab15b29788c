/**
 * Resource leaks: 200 VMs, each with 2 vCPUs (2 fds + 2 kvm_run mappings) and a GuestMemory slot
 * (1 mapping), whose vCPUs run a 1-byte `hlt` guest, are created and closed. On the real kernel,
 * kvm-rx's own resources are counted exactly: the fds by their targets in /proc/self/fd (`/dev/kvm`,
 * `anon_inode:kvm-vm`, `anon_inode:kvm-vcpu:N`, eventfds), the kvm_run mappings (backed by
 * `anon_inode:kvm-vcpu`) and the guest memory (by the addresses the GuestMemory objects had) in
 * /proc/self/maps: back to the baseline after every batch. The rest of the process (all fds, all
 * map lines) is judged per batch against the same loop's warm-up in this process
 * (`linearGrowth`, spec/helpers/resources.ts), never against a constant. On the mock, `openFds`
 * and `mappings` end empty.
 */
import { MockBackend, hlt } from '../../src/backend/mock/index';
import type { IoctlBackend } from '../../src/backend/types';
import { GuestMemory } from '../../src/wrappers/guest-memory';
import { Kvm } from '../../src/wrappers/kvm';
import { describeKvm } from '../helpers/kvm';
import { fdCensus, linearGrowth, mapCensus } from '../helpers/resources';
import { count, timeout } from '../helpers/stress';
import { enterRealMode } from '../../src/testing/real-mode';

/** 200 in `npm test`, 1,000 in `npm run stress`. */
const CYCLES = count(200, 1000);
/** The cycles are measured in 4 batches, after a warm-up batch of the same size. */
const BATCHES = 4;
const GUEST_ADDR = 0x1000n;
/** The guest: `hlt` (real mode, cs.base = 0, rip = 0x1000). */
const HLT_GUEST = Uint8Array.of(0xf4);

/** The host address of every GuestMemory a cycle created (the mappings that are ours). */
const guestAddresses = new Set<bigint>();

/** One VM life: slot, 2 vCPUs run to Hlt, then everything closed (VM first, then memory, then /dev/kvm). */
function cycle(backend: IoctlBackend, beforeRun?: () => void): void {
  const kvm = new Kvm({ backend });
  const mem = GuestMemory.anonymous(backend.pageSize, { backend });
  guestAddresses.add(mem.hostAddress);
  try {
    mem.write(0, HLT_GUEST);
    const vm = kvm.createVm();
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: GUEST_ADDR, memory: mem });
    for (const id of [0, 1]) {
      beforeRun?.();
      const vcpu = vm.createVcpu(id);
      enterRealMode(vcpu, { rip: GUEST_ADDR });
      expect(vcpu.run().kind).toBe('Hlt');
    }
    vm.close();
  } finally {
    kvm.close();
    mem.close();
  }
}

describeKvm(`leaks: ${CYCLES} VMs with 2 vCPUs and a memory slot`, () => {
  it(
    'gives back every fd and every mapping of its own; the rest of the process does not grow with the cycles',
    async () => {
      const { nativeBackend } = await import('../../src/backend/native');
      const backend = nativeBackend();
      const perBatch = CYCLES / BATCHES;
      const fds: number[] = [];
      const maps: number[] = [];
      const take = () => {
        const f = fdCensus();
        const m = mapCensus(guestAddresses);
        fds.push(f.total);
        maps.push(m.total);
        return { own: f.own, kvmRun: m.kvmRun, guest: m.guest };
      };
      const before = take();
      for (let b = 0; b <= BATCHES; b++) {
        // batch 0 is the warm-up: loads the addon, compiles the code paths, lets V8 size its heap
        for (let i = 0; i < perBatch; i++) cycle(backend);
        // ours: exactly what there was before the first cycle, after every batch
        expect({ batch: b, ...take() }).toEqual({ batch: b, ...before });
      }
      expect(guestAddresses.size).toBeGreaterThan(0);
      const fdGrowth = linearGrowth(fds, perBatch, 1);
      const mapGrowth = linearGrowth(maps, perBatch, 1);
      console.log(`leaks: fds ${fdGrowth.detail}; map lines ${mapGrowth.detail}`);
      expect({ fds: fdGrowth.linear, maps: mapGrowth.linear }).toEqual({ fds: false, maps: false });
    },
    timeout(30_000, 120_000),
  );
});

describe(`leaks: ${CYCLES} VMs with 2 vCPUs and a memory slot [mock]`, () => {
  it(
    'leaves no open fd and no mapping in the mock kernel',
    () => {
      const backend = new MockBackend();
      for (let i = 0; i < CYCLES; i++) {
        // Each new vCPU takes the exits scripted for its id: one Hlt.
        let id = 0;
        cycle(backend, () => backend.vcpu(id++).script([hlt()]));
        expect(backend.openFds).toEqual([]);
        expect(backend.mappings).toEqual([]);
      }
      expect(backend.vms).toEqual([]);
    },
    timeout(30_000, 120_000),
  );
});
