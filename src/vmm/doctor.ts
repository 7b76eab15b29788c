/**
 * `checkHost()`: what this machine offers kvm-rx, in the spirit of libvirt's `virt-host-validate`
 * (the library side of `kvm-rx doctor`).
 *
 * Every check reads the host or makes a short-lived probe (a VM, an eventfd, a tiny real-mode
 * guest, a throw-away network namespace) and closes everything it opened. Nothing persistent is
 * created and no existing interface or namespace is touched.
 *
 * @module
 */
import { spawnSync } from 'node:child_process';
import { closeSync, constants as fsConstants, existsSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { KvmError } from '../abi/errors';
import { kvm as K } from '../abi/kvm-constants';
import { checkBool, checkInt, checkObject, checkString, invalidType, invalidValue } from '../abi/validate';
import { VcpuRuntime } from '../runtime/pool';
import { Cap } from '../wrappers/cap';
import { EventFd } from '../wrappers/event-fd';
import { KVM_MAX_CPUID_ENTRIES } from '../wrappers/fam';
import { GuestMemory } from '../wrappers/guest-memory';
import { IoEventAddress, NoDatamatch } from '../wrappers/io-event';
import { Kvm } from '../wrappers/kvm';
import { hostVirtualization, type HostVirtualization } from './host';
import { enterRealMode } from './real-mode';

/** The outcome of one check: `fail` means kvm-rx cannot work as documented here. */
export type CheckStatus = 'pass' | 'warn' | 'fail' | 'skip';

/** One line of a {@link HostReport}. */
export interface HostCheck {
  /** A stable identifier, e.g. `kvm-device`, `ioeventfd`. */
  id: string;
  /** What was checked, in a few words. */
  title: string;
  status: CheckStatus;
  /** What was found. */
  detail: string;
  /** What to do about a `warn` or `fail` (absent when there is nothing to do). */
  remedy?: string;
}

/** The facts behind the checks, for programs (each `undefined` when it could not be found out). */
export interface HostFacts {
  kvmPath: string;
  /** Whether `kvmPath` opened read/write. */
  kvmOpen: boolean;
  /** The errno code when it did not (`ENOENT`, `EACCES`, …). */
  kvmError?: string;
  virtualization: HostVirtualization;
  /** `/proc/cpuinfo`'s `vendor_id` (`GenuineIntel`, `AuthenticAMD`, …). */
  cpuVendor?: string;
  /** `/proc/cpuinfo`'s `model name`. */
  cpuModel?: string;
  apiVersion?: number;
  /** The capabilities kvm-rx relies on, by `Cap` name: `true` when `KVM_CHECK_EXTENSION` > 0. */
  caps: Record<string, boolean>;
  /** `KVM_CAP_NR_VCPUS` (recommended), `KVM_CAP_MAX_VCPUS`, `KVM_CAP_MAX_VCPU_ID`. */
  vcpus?: { recommended: number; max: number; maxId: number };
  /** Entries of `KVM_GET_SUPPORTED_CPUID`. */
  cpuidEntries?: number;
  /** Indices in `KVM_GET_MSR_INDEX_LIST` and `KVM_GET_MSR_FEATURE_INDEX_LIST`. */
  msrIndices?: number;
  msrFeatureIndices?: number;
  /** Whether the guest's writes were counted by an ioeventfd without a vCPU exit. */
  ioeventfd?: { pio: boolean; mmio: boolean };
  /** Whether writing an irqfd raised the GSI in the in-kernel irqchip. */
  irqfd?: boolean;
  tun?: boolean;
  netns?: boolean;
  /** Huge page pools (`/sys/kernel/mm/hugepages`) and the transparent huge page mode. */
  hugepages: { pools: Array<{ sizeKiB: number; total: number; free: number }>; thp?: string };
}

/** What {@link checkHost} found. */
export interface HostReport {
  checks: HostCheck[];
  /** One line, e.g. `doctor: PVM (Intel Xeon), KVM API 12, 30/30 caps, max 255 vCPUs, …`. */
  summary: string;
  /** No check failed. */
  ok: boolean;
  facts: HostFacts;
}

/** Options of {@link checkHost}. */
export interface CheckHostOptions {
  /** The KVM device (default `/dev/kvm`). */
  kvmPath?: string;
  /** The TUN device (default `/dev/net/tun`). */
  tunPath?: string;
  /** Prefix for `/proc` and `/sys` (tests point it at a fixture tree). Default `''`. */
  root?: string;
  /** Run the ioeventfd and irqfd probes (a tiny guest, an irqchip). Default `true`. */
  probes?: boolean;
  /** Try a throw-away network namespace (`unshare --net true`). Default `true`. */
  netns?: boolean;
  /** The longest each probe may take, in ms (the guest is kicked out after it). Default 10000. */
  probeTimeoutMs?: number;
}

/** A capability kvm-rx relies on, and what its absence disables. */
export interface CapNeed {
  name: keyof typeof Cap;
  /** `true`: kvm-rx's VMs (`kvm-rx run`, `kvm-rx boot`, the runtime) do not work without it. */
  required: boolean;
  disables: string;
}

/** The capabilities the wrappers, the runtime and the VMM use (checked on the system fd). */
export const RELIED_ON_CAPS: ReadonlyArray<CapNeed> = [
  { name: 'UserMemory', required: true, disables: 'guest memory (setUserMemoryRegion): no VM at all' },
  { name: 'ImmediateExit', required: true, disables: 'kicking a vCPU out of KVM_RUN (stop(), timeouts, close)' },
  { name: 'Irqchip', required: true, disables: 'the in-kernel PIC/IOAPIC/LAPIC (createIrqChip: run, boot)' },
  { name: 'ExtCpuid', required: true, disables: 'getSupportedCpuid/setCpuid2 (bootLinux, enterLongMode)' },
  { name: 'SetTssAddr', required: true, disables: 'setTssAddress (bootLinux)' },
  { name: 'Pit2', required: true, disables: 'the in-kernel PIT (createPit2: bootLinux)' },
  { name: 'NrVcpus', required: false, disables: 'the recommended vCPU count (getNrVcpus falls back to 4)' },
  { name: 'MaxVcpus', required: false, disables: 'the vCPU limit (getMaxVcpus falls back to getNrVcpus)' },
  { name: 'SetIdentityMapAddr', required: false, disables: 'setIdentityMapAddress (bootLinux on Intel)' },
  { name: 'Ioeventfd', required: false, disables: 'registerIoevent and fromIoEvent (doorbells without exits)' },
  { name: 'IoeventfdNoLength', required: false, disables: 'ioeventfds with NoDatamatch (any-width writes)' },
  { name: 'Irqfd', required: false, disables: 'registerIrqfd (interrupts from an eventfd)' },
  { name: 'IrqfdResample', required: false, disables: 'registerIrqfdWithResample (level-triggered irqfds)' },
  { name: 'IrqRouting', required: false, disables: 'setGsiRouting' },
  { name: 'SignalMsi', required: false, disables: 'signalMsi' },
  { name: 'PitState2', required: false, disables: 'getPit2/setPit2' },
  { name: 'CoalescedMmio', required: false, disables: 'registerCoalescedMmio and the coalescedRing option' },
  { name: 'CoalescedPio', required: false, disables: 'coalesced PIO zones' },
  { name: 'SetGuestDebug', required: false, disables: 'setGuestDebug (single-step, breakpoints)' },
  { name: 'MpState', required: false, disables: 'getMpState/setMpState' },
  { name: 'VcpuEvents', required: false, disables: 'getVcpuEvents/setVcpuEvents (the emulation fallbacks)' },
  { name: 'Xsave', required: false, disables: 'getXsave/setXsave' },
  { name: 'Xcrs', required: false, disables: 'getXcrs/setXcrs' },
  { name: 'Debugregs', required: false, disables: 'getDebugRegs/setDebugRegs' },
  { name: 'SyncRegs', required: false, disables: 'syncRegs/setSyncRegs (registers in kvm_run)' },
  { name: 'ReadonlyMem', required: false, disables: 'KVM_MEM_READONLY slots' },
  { name: 'AdjustClock', required: false, disables: 'getClock/setClock' },
  { name: 'EnableCap', required: false, disables: 'vcpu.enableCap' },
  { name: 'CheckExtensionVm', required: false, disables: 'vm.checkExtension (answers come from the system fd)' },
  { name: 'GetMsrFeatures', required: false, disables: 'getMsrFeatureIndexList and kvm.getMsrs' },
  { name: 'X86MsrFilter', required: false, disables: 'setMsrFilter' },
];

const MARK: Record<CheckStatus, string> = { pass: '[ ok ]', warn: '[warn]', fail: '[FAIL]', skip: '[skip]' };

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function errCode(e: unknown): string {
  const err = e as { code?: unknown; message?: unknown };
  return typeof err.code === 'string' ? err.code : String(err.message ?? e);
}

/** "Intel(R) Xeon(R) Processor" → "Intel Xeon"; "AMD EPYC 7B13 64-Core Processor" → "AMD EPYC 7B13 64-Core". */
export function shortCpuName(model: string | undefined, vendor: string | undefined): string {
  let m = (model ?? '')
    .replace(/\((R|TM)\)/gi, '')
    .replace(/@.*$/, '')
    .replace(/\b(CPU|Processor)\b/g, '')
    .replace(/\s+/g, ' ')
    .trim();
  if (m === '') m = vendor === 'GenuineIntel' ? 'Intel' : vendor === 'AuthenticAMD' ? 'AMD' : (vendor ?? 'unknown CPU');
  return m;
}

const KVM_REMEDY_ACCESS =
  'add yourself to the group of /dev/kvm: `sudo usermod -aG kvm $USER`, then log in again; ' +
  'where no group owns it, a udev rule: KERNEL=="kvm", GROUP="kvm", MODE="0660" in ' +
  '/etc/udev/rules.d/65-kvm.rules and `sudo udevadm trigger /dev/kvm` ' +
  '(or, until the next boot: `sudo chgrp kvm /dev/kvm && sudo chmod 660 /dev/kvm`)';
const KVM_REMEDY_ABSENT =
  'load KVM: `sudo modprobe kvm_intel` (Intel) or `sudo modprobe kvm_amd` (AMD); if that fails, ' +
  'enable virtualization (VT-x / AMD-V, SVM) in the firmware, or nested virtualization in the ' +
  "VM's settings (a cloud VM without it can use a PVM kernel: kvm_pvm)";

const KVM_CHECKS = [
  ['api-version', 'KVM API version'],
  ['capabilities', 'capabilities kvm-rx relies on'],
  ['vcpus', 'vCPU limits'],
  ['cpuid-msrs', 'supported CPUID entries and MSR lists'],
  ['ioeventfd', 'ioeventfds deliver (PIO and MMIO)'],
  ['irqfd', 'irqfds deliver'],
] as const;

class Checks {
  readonly list: HostCheck[] = [];
  add(id: string, title: string, status: CheckStatus, detail: string, remedy?: string): HostCheck {
    const c: HostCheck = { id, title, status, detail, ...(remedy !== undefined ? { remedy } : {}) };
    this.list.push(c);
    return c;
  }
  skip(id: string, title: string, why: string): void {
    this.add(id, title, 'skip', why);
  }
}

function validate(options: CheckHostOptions): Required<CheckHostOptions> {
  checkObject('options', options);
  const o = {
    kvmPath: options.kvmPath ?? '/dev/kvm',
    tunPath: options.tunPath ?? '/dev/net/tun',
    root: options.root ?? '',
    probes: options.probes ?? true,
    netns: options.netns ?? true,
    probeTimeoutMs: options.probeTimeoutMs ?? 10_000,
  };
  checkString('options.kvmPath', o.kvmPath);
  checkString('options.tunPath', o.tunPath);
  checkString('options.root', o.root);
  checkBool('options.probes', o.probes);
  checkBool('options.netns', o.netns);
  checkInt('options.probeTimeoutMs', o.probeTimeoutMs, 1, 600_000);
  return o;
}

/**
 * The ioeventfd probe: a real-mode guest writes a PIO doorbell (port 0x510) and an MMIO doorbell
 * (0x20000, outside guest memory), both registered as ioeventfds, then halts. Delivered means each
 * eventfd counted one write and the guest's only exit was the HLT. The guest runs on a vCPU thread
 * and is kicked out when `timeoutMs` expires.
 */
async function probeIoeventfd(kvm: Kvm, timeoutMs: number): Promise<{ pio: bigint; mmio: bigint; exits: string[] }> {
  const PIO = 0x510;
  const MMIO = 0x20000n;
  // mov al,0x2a; mov dx,0x510; out dx,al; mov ax,0x2000; mov ds,ax; mov [0],al; hlt
  const code = [0xb0, 0x2a, 0xba, 0x10, 0x05, 0xee, 0xb8, 0x00, 0x20, 0x8e, 0xd8, 0xa2, 0x00, 0x00, 0xf4];
  const runtime = new VcpuRuntime({ maxVcpus: 1 });
  const mem = GuestMemory.anonymous(0x10000);
  const pio = new EventFd();
  const mmio = new EventFd();
  try {
    using vm = kvm.createVm();
    mem.bytes.fill(0xf4); // a stray jump halts
    mem.bytes.set(code, 0x1000);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memory: mem });
    vm.registerIoevent(pio, IoEventAddress.pio(PIO), NoDatamatch);
    vm.registerIoevent(mmio, IoEventAddress.mmio(MMIO), NoDatamatch);
    const vcpu = enterRealMode(vm.createVcpu(0), { rip: 0x1000n });
    const run = runtime.start(vcpu, { signal: AbortSignal.timeout(timeoutMs) });
    const exits: string[] = [];
    for await (const exit of run) {
      if (exit.kind === 'IoOut') exits.push(`IoOut 0x${exit.port.toString(16)}`);
      else if (exit.kind === 'MmioWrite') exits.push(`MmioWrite 0x${exit.addr.toString(16)}`);
      else exits.push(exit.kind);
      if (exit.kind === 'Hlt' || exits.length >= 8) break;
    }
    const outcome = await run.done;
    if (outcome.reason === 'stopped' && !exits.includes('Hlt')) exits.push(`timeout after ${timeoutMs} ms`);
    const take = (e: EventFd): bigint => {
      try {
        return e.read();
      } catch (err) {
        if (err instanceof KvmError && err.code === 'EAGAIN') return 0n;
        throw err;
      }
    };
    return { pio: take(pio), mmio: take(mmio), exits };
  } finally {
    pio.close();
    mmio.close();
    mem.close();
    await runtime.close();
  }
}

/**
 * The irqfd probe: an in-kernel irqchip, an irqfd on GSI 5 (IRQ 5 of the master PIC), one write;
 * delivered means the PIC's IRR bit 5 went from 0 to 1 (the kernel injects from a work queue, so it
 * is polled until `timeoutMs`).
 */
async function probeIrqfd(kvm: Kvm, timeoutMs: number): Promise<{ before: boolean; after: boolean }> {
  const GSI = 5;
  const evt = new EventFd();
  try {
    using vm = kvm.createVm();
    vm.createIrqChip();
    const irr = () => (vm.getIrqchip(K.KVM_IRQCHIP_PIC_MASTER).chip.pic.irr & (1 << GSI)) !== 0;
    const before = irr();
    vm.registerIrqfd(evt, GSI);
    try {
      evt.write(1n);
      const deadline = Date.now() + timeoutMs;
      let after = irr();
      while (!after && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 2));
        after = irr();
      }
      return { before, after };
    } finally {
      vm.unregisterIrqfd(evt, GSI);
    }
  } finally {
    evt.close();
  }
}

function cpuinfoField(cpuinfo: string | undefined, field: string): string | undefined {
  if (cpuinfo === undefined) return undefined;
  return new RegExp(`^${field}\\s*:\\s*(.*)$`, 'm').exec(cpuinfo)?.[1]?.trim();
}

function hugepages(root: string): HostFacts['hugepages'] {
  const dir = `${root}/sys/kernel/mm/hugepages`;
  const pools: HostFacts['hugepages']['pools'] = [];
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    /* no hugetlbfs support */
  }
  for (const name of names) {
    const m = /^hugepages-(\d+)kB$/.exec(name);
    if (!m) continue;
    const num = (f: string) => Number((readText(`${dir}/${name}/${f}`) ?? '0').trim()) || 0;
    pools.push({ sizeKiB: Number(m[1]), total: num('nr_hugepages'), free: num('free_hugepages') });
  }
  pools.sort((a, b) => a.sizeKiB - b.sizeKiB);
  const thpText = readText(`${root}/sys/kernel/mm/transparent_hugepage/enabled`);
  const thp = thpText === undefined ? undefined : (/\[(\w+)\]/.exec(thpText)?.[1] ?? thpText.trim());
  return { pools, ...(thp !== undefined ? { thp } : {}) };
}

function sizeName(kib: number): string {
  return kib >= 1 << 20 ? `${kib >> 20} GiB` : kib >= 1024 ? `${kib >> 10} MiB` : `${kib} KiB`;
}

/**
 * Checks what this host offers kvm-rx: `/dev/kvm` access, the kind of virtualization and CPU, the
 * KVM API version, the capabilities kvm-rx relies on, vCPU limits, CPUID and MSR lists, whether
 * ioeventfds (PIO and MMIO) and irqfds actually deliver (a tiny real-mode guest, an in-kernel
 * irqchip), `/dev/net/tun`, network namespaces and huge pages. Each probe is bounded by
 * `probeTimeoutMs` and closes what it opened; nothing persistent is created.
 *
 * @example
 * ```ts
 * const report = await checkHost();
 * console.log(report.summary); // doctor: PVM (Intel Xeon), KVM API 12, 31/31 caps, …
 * for (const c of report.checks) if (c.status === 'fail') console.log(c.title, c.remedy);
 * ```
 * @throws `TypeError` (`ERR_INVALID_ARG_TYPE`) for options that are not an object or a field of the
 *   wrong type; `RangeError` (`ERR_OUT_OF_RANGE`) for a `probeTimeoutMs` outside 1..600000. A host
 *   that lacks something is not an error: it is a `fail` or `warn` check in the report.
 */
export async function checkHost(options: CheckHostOptions = {}): Promise<HostReport> {
  const o = validate(options);
  const c = new Checks();
  const facts: HostFacts = {
    kvmPath: o.kvmPath,
    kvmOpen: false,
    virtualization: hostVirtualization(o.root),
    caps: {},
    hugepages: hugepages(o.root),
  };

  // /dev/kvm
  try {
    closeSync(openSync(o.kvmPath, fsConstants.O_RDWR));
    facts.kvmOpen = true;
    c.add('kvm-device', `${o.kvmPath} opens read/write`, 'pass', `${o.kvmPath} opened read/write`);
  } catch (e) {
    facts.kvmError = errCode(e);
    const absent = facts.kvmError === 'ENOENT' || facts.kvmError === 'ENODEV' || facts.kvmError === 'ENXIO';
    const denied = facts.kvmError === 'EACCES' || facts.kvmError === 'EPERM';
    c.add(
      'kvm-device',
      `${o.kvmPath} opens read/write`,
      'fail',
      absent
        ? `${o.kvmPath} does not exist (${facts.kvmError}): KVM is not loaded or not available`
        : `${o.kvmPath} cannot be opened read/write (${facts.kvmError})`,
      absent ? KVM_REMEDY_ABSENT : denied ? KVM_REMEDY_ACCESS : `${KVM_REMEDY_ABSENT}; or ${KVM_REMEDY_ACCESS}`,
    );
  }

  // Virtualization kind and CPU.
  const cpuinfo = readText(`${o.root}/proc/cpuinfo`);
  const vendor = cpuinfoField(cpuinfo, 'vendor_id');
  const model = cpuinfoField(cpuinfo, 'model name');
  if (vendor !== undefined) facts.cpuVendor = vendor;
  if (model !== undefined) facts.cpuModel = model;
  const cpu = `${model ?? 'unknown CPU'}${vendor ? ` (${vendor})` : ''}`;
  switch (facts.virtualization) {
    case 'vmx':
    case 'svm':
      c.add(
        'virtualization',
        'virtualization kind',
        'pass',
        `${facts.virtualization.toUpperCase()} (hardware virtualization) on ${cpu}`,
      );
      break;
    case 'pvm':
      c.add(
        'virtualization',
        'virtualization kind',
        'warn',
        `PVM (kvm_pvm: software nested virtualization, no vmx/svm CPU flag) on ${cpu}: guest CPL-0 ` +
          "code (real mode, a kernel) runs through KVM's instruction emulator, much slower than user code",
        'nothing to fix: kvm-rx works; a Linux guest boots in minutes, not seconds. `kvm-rx boot` ' +
          'already uses the PVM command line (noxsave, clearcpuid=…). For speed, use a host with VT-x/AMD-V',
      );
      break;
    default:
      c.add(
        'virtualization',
        'virtualization kind',
        'warn',
        `neither /sys/module/kvm_pvm nor a vmx/svm CPU flag found (${cpu})`,
        'enable VT-x/AMD-V in the firmware or nested virtualization in the VM settings; ' +
          '`kvm-rx boot` assumes an emulating host meanwhile',
      );
  }

  let kvm: Kvm | undefined;
  if (facts.kvmOpen) {
    try {
      kvm = Kvm.newWithPath(o.kvmPath);
    } catch (e) {
      c.add('kvm-open', 'KVM system fd', 'fail', `Kvm.newWithPath failed: ${(e as Error).message}`, KVM_REMEDY_ACCESS);
    }
  }
  if (kvm === undefined) {
    for (const [id, title] of KVM_CHECKS) c.skip(id, title, `needs ${o.kvmPath}`);
  } else {
    try {
      await kvmFacts(kvm, o, c, facts);
    } finally {
      kvm.close();
    }
  }

  // TUN
  try {
    closeSync(openSync(o.tunPath, fsConstants.O_RDWR));
    facts.tun = true;
    c.add('tun', `${o.tunPath} opens`, 'pass', `${o.tunPath} opened read/write (no interface created)`);
  } catch (e) {
    facts.tun = false;
    const code = errCode(e);
    c.add(
      'tun',
      `${o.tunPath} opens`,
      'warn',
      `${o.tunPath} cannot be opened (${code}): no TAP networking for guests`,
      code === 'ENOENT'
        ? '`sudo modprobe tun` (in a container: pass the device in, e.g. `--device /dev/net/tun`)'
        : 'give your user access to /dev/net/tun (usually mode 0666), or run with CAP_NET_ADMIN',
    );
  }

  // Network namespaces
  if (!o.netns) c.skip('netns', 'network namespaces', 'not checked (netns: false)');
  else if (!existsSync(`${o.root}/proc/self/ns/net`)) {
    facts.netns = false;
    c.add(
      'netns',
      'network namespaces',
      'warn',
      'the kernel has no network namespaces (/proc/self/ns/net missing)',
      'a kernel with CONFIG_NET_NS=y',
    );
  } else {
    const args = process.getuid?.() === 0 ? ['--net', 'true'] : ['--map-root-user', '--net', 'true'];
    const r = spawnSync('unshare', args, { encoding: 'utf8', timeout: o.probeTimeoutMs });
    facts.netns = r.status === 0;
    const ip = spawnSync('ip', ['-V'], { encoding: 'utf8', timeout: o.probeTimeoutMs }).status === 0;
    if (facts.netns)
      c.add(
        'netns',
        'network namespaces',
        'pass',
        `a throw-away namespace was created (unshare ${args.join(' ')}); ip ${ip ? 'found (for ip netns)' : 'missing: install iproute2 for ip netns'}`,
      );
    else
      c.add(
        'netns',
        'network namespaces',
        'warn',
        r.error
          ? `unshare could not run: ${errCode(r.error)}`
          : `unshare ${args.join(' ')} failed: ${(r.stderr || `status ${r.status}`).trim()}`,
        r.error
          ? 'install util-linux (unshare) and iproute2 (ip netns)'
          : 'allow unprivileged user namespaces (`sudo sysctl -w kernel.unprivileged_userns_clone=1` or ' +
              '`user.max_user_namespaces=15000`), or run as root',
      );
  }

  // Huge pages
  const hp = facts.hugepages;
  const pools = hp.pools.map((p) => `${sizeName(p.sizeKiB)}: ${p.free}/${p.total} free`).join(', ');
  const anyFree = hp.pools.some((p) => p.free > 0);
  const thpOk = hp.thp === 'always' || hp.thp === 'madvise';
  const hugetlbHint =
    `reserve a pool for hugePages: 'hugetlb', e.g. \`echo 512 | sudo tee ` +
    `/sys/kernel/mm/hugepages/hugepages-${hp.pools.find((p) => p.sizeKiB === 2048)?.sizeKiB ?? hp.pools[0]?.sizeKiB ?? 2048}kB/nr_hugepages\``;
  c.add(
    'hugepages',
    'huge pages',
    anyFree || thpOk ? 'pass' : 'warn',
    `pools ${pools || 'none'}; transparent huge pages: ${hp.thp ?? 'not available'}` +
      (thpOk ? " (GuestMemory hugePages: 'madvise' works)" : '') +
      (anyFree ? '' : "; no free hugetlb page (hugePages: 'hugetlb' would fail with ENOMEM)"),
    anyFree || thpOk
      ? undefined
      : `${hugetlbHint}, or \`echo madvise | sudo tee /sys/kernel/mm/transparent_hugepage/enabled\``,
  );

  const ok = !c.list.some((x) => x.status === 'fail');
  return { checks: c.list, summary: summarize(facts), ok, facts };
}

async function kvmFacts(kvm: Kvm, o: Required<CheckHostOptions>, c: Checks, facts: HostFacts): Promise<void> {
  try {
    facts.apiVersion = kvm.getApiVersion();
  } catch (e) {
    c.add(
      'api-version',
      'KVM API version',
      'fail',
      `KVM_GET_API_VERSION on ${o.kvmPath} failed (${errCode(e)}): not a KVM device`,
      `point kvm-rx at the KVM device node (/dev/kvm, character device 10:232); ${KVM_REMEDY_ABSENT}`,
    );
    for (const [id, title] of KVM_CHECKS.slice(1)) c.skip(id, title, `needs a working ${o.kvmPath}`);
    return;
  }
  const api = facts.apiVersion;
  c.add(
    'api-version',
    'KVM API version',
    api === 12 ? 'pass' : 'fail',
    `KVM_GET_API_VERSION = ${api}${api === 12 ? '' : ' (kvm-rx needs 12)'}`,
    api === 12 ? undefined : 'a Linux kernel with the stable KVM API (2.6.22 or later answers 12)',
  );

  const missing: CapNeed[] = [];
  for (const need of RELIED_ON_CAPS) {
    let n = 0;
    try {
      n = kvm.checkExtensionInt(Cap[need.name]);
    } catch {
      n = 0;
    }
    facts.caps[need.name] = n > 0;
    if (n <= 0) missing.push(need);
  }
  const total = RELIED_ON_CAPS.length;
  const have = total - missing.length;
  const missingRequired = missing.filter((m) => m.required);
  c.add(
    'capabilities',
    'capabilities kvm-rx relies on',
    missingRequired.length ? 'fail' : missing.length ? 'warn' : 'pass',
    missing.length === 0
      ? `all ${total} present (${RELIED_ON_CAPS.map((x) => x.name).join(', ')})`
      : `${have}/${total} present; missing: ${missing.map((m) => `${m.name} (no ${m.disables})`).join('; ')}`,
    missing.length
      ? `a newer kernel, or a KVM module with these capabilities${missingRequired.length ? ` (${missingRequired.map((m) => m.name).join(', ')} are needed by every kvm-rx VM)` : ''}`
      : undefined,
  );

  facts.vcpus = { recommended: kvm.getNrVcpus(), max: kvm.getMaxVcpus(), maxId: kvm.getMaxVcpuId() };
  c.add(
    'vcpus',
    'vCPU limits',
    'pass',
    `recommended ${facts.vcpus.recommended}, max ${facts.vcpus.max} per VM, ids below ${facts.vcpus.maxId}`,
  );

  const lists: string[] = [];
  let listsFailed = false;
  try {
    facts.cpuidEntries = kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES).entries.length;
    lists.push(`CPUID ${facts.cpuidEntries} entries`);
  } catch (e) {
    listsFailed = true;
    lists.push(`KVM_GET_SUPPORTED_CPUID failed (${errCode(e)})`);
  }
  try {
    facts.msrIndices = kvm.getMsrIndexList().entries.length;
    lists.push(`MSR index list ${facts.msrIndices}`);
  } catch (e) {
    listsFailed = true;
    lists.push(`KVM_GET_MSR_INDEX_LIST failed (${errCode(e)})`);
  }
  try {
    facts.msrFeatureIndices = kvm.getMsrFeatureIndexList().entries.length;
    lists.push(`feature MSRs ${facts.msrFeatureIndices}`);
  } catch (e) {
    lists.push(`feature MSR list unavailable (${errCode(e)})`);
  }
  c.add(
    'cpuid-msrs',
    'supported CPUID entries and MSR lists',
    listsFailed ? 'fail' : 'pass',
    lists.join(', '),
    listsFailed
      ? 'a KVM that answers KVM_GET_SUPPORTED_CPUID and KVM_GET_MSR_INDEX_LIST (bootLinux needs both)'
      : undefined,
  );

  if (!o.probes) {
    c.skip('ioeventfd', 'ioeventfds deliver (PIO and MMIO)', 'not probed (probes: false)');
    c.skip('irqfd', 'irqfds deliver', 'not probed (probes: false)');
    return;
  }

  try {
    const r = await probeIoeventfd(kvm, o.probeTimeoutMs);
    facts.ioeventfd = {
      pio: r.pio === 1n && !r.exits.includes('IoOut 0x510'),
      mmio: r.mmio === 1n && !r.exits.includes('MmioWrite 0x20000'),
    };
    const ok = facts.ioeventfd.pio && facts.ioeventfd.mmio && r.exits.length === 1 && r.exits[0] === 'Hlt';
    c.add(
      'ioeventfd',
      'ioeventfds deliver (PIO and MMIO)',
      ok ? 'pass' : 'fail',
      `a real-mode guest wrote port 0x510 and MMIO 0x20000: eventfd counts pio ${r.pio}, mmio ${r.mmio}; vCPU exits: ${r.exits.join(', ') || 'none'}`,
      ok ? undefined : 'fromIoEvent/registerIoevent doorbells will exit to userspace or be lost: try a newer kernel',
    );
  } catch (e) {
    facts.ioeventfd = { pio: false, mmio: false };
    c.add(
      'ioeventfd',
      'ioeventfds deliver (PIO and MMIO)',
      'fail',
      `the probe failed: ${(e as Error).message}`,
      'a kernel with KVM_CAP_IOEVENTFD',
    );
  }

  try {
    const r = await probeIrqfd(kvm, o.probeTimeoutMs);
    facts.irqfd = !r.before && r.after;
    c.add(
      'irqfd',
      'irqfds deliver',
      facts.irqfd ? 'pass' : 'fail',
      `an irqfd on GSI 5: PIC IRR bit 5 ${r.before ? 'already set' : 'clear'} before the write, ${r.after ? 'set' : 'still clear'} after`,
      facts.irqfd ? undefined : 'registerIrqfd interrupts will not reach the guest: try a newer kernel',
    );
  } catch (e) {
    facts.irqfd = false;
    c.add(
      'irqfd',
      'irqfds deliver',
      'fail',
      `the probe failed: ${(e as Error).message}`,
      'a kernel with KVM_CAP_IRQFD and an in-kernel irqchip',
    );
  }
}

function summarize(f: HostFacts): string {
  const parts: string[] = [];
  const kind = f.virtualization === 'unknown' ? 'no VMX/SVM/PVM seen' : f.virtualization.toUpperCase();
  parts.push(`${kind} (${shortCpuName(f.cpuModel, f.cpuVendor)})`);
  if (!f.kvmOpen) parts.push(`${f.kvmPath} ${f.kvmError ?? 'unavailable'}`);
  else if (f.apiVersion === undefined) parts.push(`${f.kvmPath} is not a KVM device`);
  else {
    parts.push(`KVM API ${f.apiVersion}`);
    const caps = Object.values(f.caps);
    parts.push(`${caps.filter(Boolean).length}/${caps.length} caps`);
    if (f.vcpus) parts.push(`max ${f.vcpus.max} vCPUs`);
    if (f.cpuidEntries !== undefined) parts.push(`CPUID ${f.cpuidEntries}`);
    if (f.msrIndices !== undefined) parts.push(`MSRs ${f.msrIndices}`);
    if (f.ioeventfd) {
      const ok = [f.ioeventfd.pio ? 'pio' : '', f.ioeventfd.mmio ? 'mmio' : ''].filter(Boolean).join('+');
      parts.push(
        f.ioeventfd.pio && f.ioeventfd.mmio ? `ioeventfd ${ok} ok` : `ioeventfd ${ok ? `${ok} only` : 'FAILED'}`,
      );
    }
    if (f.irqfd !== undefined) parts.push(`irqfd ${f.irqfd ? 'ok' : 'FAILED'}`);
  }
  if (f.tun !== undefined) parts.push(`tun ${f.tun ? 'ok' : 'missing'}`);
  if (f.netns !== undefined) parts.push(`netns ${f.netns ? 'ok' : 'unavailable'}`);
  return `doctor: ${parts.join(', ')}`;
}

/**
 * The one-line summary of {@link checkHost} (for the header of a benchmark or an e2e run).
 *
 * @example `console.log(await hostSummary()); // doctor: PVM (Intel Xeon), KVM API 12, …`
 * @throws as {@link checkHost}
 */
export async function hostSummary(options: CheckHostOptions = {}): Promise<string> {
  return (await checkHost(options)).summary;
}

/**
 * The report as text: one line per check (`[ ok ]`, `[warn]`, `[FAIL]`, `[skip]`, the title and
 * what was found), the remedy indented under it, and the summary at the end.
 *
 * @example `process.stdout.write(formatReport(await checkHost()))`
 * @throws `TypeError` (`ERR_INVALID_ARG_TYPE`) when `report` is not an object, its `checks` not
 *   an array of objects or its `summary` not a string; `ERR_INVALID_ARG_VALUE` for an unknown status
 */
export function formatReport(report: HostReport): string {
  checkObject('report', report);
  if (!Array.isArray(report.checks)) invalidType('report.checks', 'an array', report.checks);
  if (typeof report.summary !== 'string') invalidType('report.summary', 'of type string', report.summary);
  const lines: string[] = [];
  report.checks.forEach((ch: unknown, i) => {
    checkObject(`report.checks[${i}]`, ch);
    const { status, title, detail, remedy } = ch as Record<string, unknown>;
    if (typeof status !== 'string' || !Object.hasOwn(MARK, status))
      invalidValue(`report.checks[${i}].status`, "must be 'pass', 'warn', 'fail' or 'skip'", status);
    lines.push(
      `${MARK[status as CheckStatus]} ${checkString(`report.checks[${i}].title`, title)}: ${checkString(`report.checks[${i}].detail`, detail)}`,
    );
    if (remedy !== undefined) lines.push(`       remedy: ${checkString(`report.checks[${i}].remedy`, remedy)}`);
  });
  lines.push('', report.summary);
  return `${lines.join('\n')}\n`;
}

/**
 * The report as JSON (bigints, if any, as decimal strings).
 *
 * @example `JSON.parse(reportJson(await checkHost())).ok`
 * @throws `TypeError` (`ERR_INVALID_ARG_TYPE`) when `report` is not an object;
 *   `ERR_INVALID_ARG_VALUE` when it contains a cycle
 */
export function reportJson(report: HostReport): string {
  checkObject('report', report);
  let json: string;
  try {
    json = JSON.stringify(report, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2);
  } catch (e) {
    // A cycle: JSON's own TypeError, said as an argument error. Anything else (a getter that
    // throws) is the caller's own error and propagates.
    if (e instanceof TypeError && /circular/i.test(e.message)) invalidValue('report', 'must not contain cycles');
    throw e;
  }
  return `${json}\n`;
}
