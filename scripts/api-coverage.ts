/**
 * API coverage: every public method of kvm-ioctls 0.24 (Kvm 25, VmFd 42, VcpuFd 52, DeviceFd 3,
 * KvmRunWrapper 2, and the free function `reg_size`) and every fd trait constructor or accessor it
 * implements (`AsRawFd` on Kvm, VmFd, VcpuFd and DeviceFd; `FromRawFd` on Kvm and DeviceFd; no
 * `IntoRawFd`), our camelCase name for it, whether our class
 * has it (read from the loaded class: prototype for methods, the class itself for statics), and
 * which spec files call it (`.name(` in `spec/**\/*.ts`), real-KVM or mock-only.
 *
 * Run: `npx ts-node --transpile-only scripts/api-coverage.ts` (or `npm run coverage:api`); it
 * writes `docs/api-coverage.md` and prints a summary. `spec/unit/api-coverage.spec.ts` runs the
 * same checks as tests.
 *
 * Spec matching is by name: a call `.checkExtension(` counts for every class that has a method of
 * that name (Kvm and VmFd both do), since the receiver's type is not known to a text search.
 */
import { readdirSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';

/** kvm-ioctls' architecture tags: x86 = x86_64, arm = aarch64, rv = riscv64. */
export type Arch = 'x86' | 'arm' | 'rv';
export type KvmIoctlsType = 'Kvm' | 'VmFd' | 'VcpuFd' | 'DeviceFd' | 'KvmRunWrapper' | '(free fn)';

/** One kvm-ioctls method: its type, Rust name, architectures, and how it exists in TypeScript. */
export interface ApiMethod {
  type: KvmIoctlsType;
  rust: string;
  arch: readonly Arch[];
  /** `static` for associated functions without `self`; `constructor` for `Kvm::new`; `function` for a free function. */
  kind: 'method' | 'static' | 'constructor' | 'function';
  /** The std trait the method comes from (`AsRawFd::as_raw_fd`, `FromRawFd::from_raw_fd`), if any. */
  trait?: FdTrait;
}

/** The `std::os::fd` traits kvm-ioctls implements on its fd types. */
export type FdTrait = 'AsRawFd' | 'FromRawFd' | 'IntoRawFd';

const ALL: readonly Arch[] = ['x86', 'arm', 'rv'];
const X86: readonly Arch[] = ['x86'];
const ARM: readonly Arch[] = ['arm'];
const X86_ARM: readonly Arch[] = ['x86', 'arm'];
const ARM_RV: readonly Arch[] = ['arm', 'rv'];

function list(type: KvmIoctlsType, rows: Array<[string, readonly Arch[], ApiMethod['kind']?, FdTrait?]>): ApiMethod[] {
  return rows.map(([rust, arch, kind, trait]) => ({
    type,
    rust,
    arch,
    kind: kind ?? 'method',
    ...(trait === undefined ? {} : { trait }),
  }));
}

/** `as_raw_fd` (`AsRawFd`), and `from_raw_fd` (`FromRawFd`) where the type implements it. */
const fdTraits = (fromRawFd: boolean): Array<[string, readonly Arch[], ApiMethod['kind'], FdTrait]> => [
  ['as_raw_fd', ALL, 'method', 'AsRawFd'],
  ...(fromRawFd
    ? [['from_raw_fd', ALL, 'static', 'FromRawFd'] as [string, readonly Arch[], ApiMethod['kind'], FdTrait]]
    : []),
];

/** kvm-ioctls 0.24 public surface (rust-vmm/kvm main 3ffc9b6; /work/shared/notes/kvm-ioctls-api.md §2). */
export const KVM_IOCTLS_API: readonly ApiMethod[] = [
  ...list('Kvm', [
    ['new', ALL, 'constructor'],
    ['new_with_path', ALL, 'static'],
    ['open_with_cloexec', ALL, 'static'],
    ['open_with_cloexec_at', ALL, 'static'],
    ['get_api_version', ALL],
    ['get_host_ipa_limit', ARM],
    ['get_guest_debug_hw_bps', ARM],
    ['get_guest_debug_hw_wps', ARM],
    ['check_extension_raw', ALL],
    ['check_extension_int', ALL],
    ['check_extension', ALL],
    ['get_vcpu_mmap_size', ALL],
    ['get_nr_vcpus', ALL],
    ['get_nr_memslots', ALL],
    ['get_max_vcpus', ALL],
    ['get_max_vcpu_id', ALL],
    ['get_emulated_cpuid', X86],
    ['get_supported_cpuid', X86],
    ['get_msr_index_list', X86],
    ['get_msr_feature_index_list', X86],
    ['get_msrs', X86],
    ['create_vm', ALL],
    ['create_vm_with_ipa_size', ARM],
    ['create_vm_with_type', ALL],
    ['create_vmfd_from_rawfd', ALL],
    ...fdTraits(true),
  ]),
  ...list('VmFd', [
    ['set_user_memory_region', ALL],
    ['set_user_memory_region2', ALL],
    ['set_tss_address', X86],
    ['set_identity_map_address', X86],
    ['create_irq_chip', X86_ARM],
    ['get_irqchip', X86],
    ['set_irqchip', X86],
    ['create_pit2', X86],
    ['get_pit2', X86],
    ['set_pit2', X86],
    ['get_clock', X86],
    ['set_clock', X86],
    ['set_msr_filter_unchecked', X86],
    ['set_msr_filter', X86],
    ['signal_msi', ALL],
    ['set_gsi_routing', ALL],
    ['register_ioevent', ALL],
    ['unregister_ioevent', ALL],
    ['get_dirty_log', ALL],
    ['register_irqfd', ALL],
    ['register_irqfd_with_resample', ALL],
    ['unregister_irqfd', ALL],
    ['set_irq_line', ALL],
    ['create_vcpu', ALL],
    ['create_vcpu_from_rawfd', ALL],
    ['create_device', ALL],
    ['get_preferred_target', ARM],
    ['enable_cap', X86],
    ['run_size', ALL],
    ['check_extension_int', ALL],
    ['check_extension_raw', ALL],
    ['check_extension', ALL],
    ['create_guest_memfd', ALL],
    ['set_memory_attributes', X86_ARM],
    ['encrypt_op', X86],
    ['encrypt_op_sev', X86],
    ['register_enc_memory_region', X86],
    ['unregister_enc_memory_region', X86],
    ['register_coalesced_mmio', ALL],
    ['unregister_coalesced_mmio', ALL],
    ['set_device_attr', ARM],
    ['has_device_attr', ARM],
    ...fdTraits(false),
  ]),
  ...list('VcpuFd', [
    ['get_regs', X86],
    ['set_regs', X86],
    ['get_sregs', X86],
    ['set_sregs', X86],
    ['get_fpu', X86],
    ['set_fpu', X86],
    ['set_cpuid2', X86],
    ['get_cpuid2', X86],
    ['enable_cap', X86],
    ['get_lapic', X86],
    ['set_lapic', X86],
    ['get_msrs', X86],
    ['set_msrs', X86],
    ['get_mp_state', ALL],
    ['set_mp_state', ALL],
    ['get_xsave', X86],
    ['get_xsave2', X86],
    ['set_xsave', X86],
    ['set_xsave2', X86],
    ['get_xcrs', X86],
    ['set_xcrs', X86],
    ['get_debug_regs', X86],
    ['set_debug_regs', X86],
    ['get_vcpu_events', X86_ARM],
    ['set_vcpu_events', X86_ARM],
    ['vcpu_init', ARM],
    ['vcpu_finalize', ARM],
    ['get_reg_list', ARM_RV],
    ['set_guest_debug', X86_ARM],
    ['set_one_reg', ARM_RV],
    ['get_one_reg', ARM_RV],
    ['set_device_attr', ARM],
    ['has_device_attr', ARM],
    ['kvmclock_ctrl', X86],
    ['run', ALL],
    ['get_kvm_run', ALL],
    ['set_kvm_immediate_exit', ALL],
    ['get_tsc_khz', X86],
    ['set_tsc_khz', X86],
    ['translate_gva', X86],
    ['set_sync_valid_reg', X86],
    ['set_sync_dirty_reg', X86],
    ['clear_sync_valid_reg', X86],
    ['clear_sync_dirty_reg', X86],
    ['sync_regs', X86],
    ['sync_regs_mut', X86],
    ['smi', X86],
    ['nmi', X86],
    ['nested_state', X86],
    ['set_nested_state', X86],
    ['map_coalesced_mmio_ring', ALL],
    ['coalesced_mmio_read', ALL],
    ...fdTraits(false),
  ]),
  ...list('DeviceFd', [
    ['has_device_attr', ALL],
    ['set_device_attr', ALL],
    ['get_device_attr', ALL],
    ...fdTraits(true),
  ]),
  ...list('KvmRunWrapper', [
    ['mmap_from_fd', ALL, 'static'],
    ['as_mut_ref', ALL],
  ]),
  ...list('(free fn)', [['reg_size', ARM_RV, 'function']]),
];

/** `create_irq_chip` → `createIrqChip`, `set_user_memory_region2` → `setUserMemoryRegion2`. */
export function camelCase(rust: string): string {
  return rust.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}

export type Status = 'done' | 'mock only' | 'no test' | 'missing';
export type SpecKind = 'real' | 'mock' | 'both';

export interface CoverageRow extends ApiMethod {
  /** Our name: the camelCase method, `new Kvm()` for the constructor. */
  ours: string;
  exists: boolean;
  specs: Array<{ file: string; kind: SpecKind }>;
  status: Status;
}

const ROOT = join(__dirname, '..');

type AnyClass = (abstract new (...args: never[]) => unknown) & Record<string, unknown>;

/** Every class and function exported by the modules of `src/wrappers/` and by `src/index.ts`. */
function loadExports(): Map<string, unknown> {
  const out = new Map<string, unknown>();
  const files = readdirSync(join(ROOT, 'src/wrappers'))
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))
    .map((f) => join(ROOT, 'src/wrappers', f));
  for (const file of [...files, join(ROOT, 'src/index.ts')]) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const mod = require(file) as Record<string, unknown>;
    for (const [name, value] of Object.entries(mod)) {
      if (typeof value === 'function' && !out.has(name)) out.set(name, value);
    }
  }
  return out;
}

function hasMember(loaded: Map<string, unknown>, m: ApiMethod, ours: string): boolean {
  if (m.kind === 'function') return typeof loaded.get(ours) === 'function';
  const cls = loaded.get(m.type) as AnyClass | undefined;
  if (typeof cls !== 'function') return false;
  if (m.kind === 'constructor') return true;
  if (m.kind === 'static') return typeof cls[ours] === 'function';
  for (
    let p = cls.prototype as object | null;
    p !== null && p !== Object.prototype;
    p = Object.getPrototypeOf(p) as object | null
  ) {
    const d = Object.getOwnPropertyDescriptor(p, ours);
    if (d !== undefined) return typeof d.value === 'function';
  }
  return false;
}

function specFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...specFiles(p));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out.sort();
}

function specKind(rel: string, text: string): SpecKind {
  if (rel.startsWith('spec/contract/') || text.includes('contractBackends(')) return 'both';
  if (rel.startsWith('spec/kvm/') || text.includes('describeKvm(')) return 'real';
  return 'mock';
}

const escapeRe = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Builds the coverage table from the loaded classes and the spec files. */
export function collect(): CoverageRow[] {
  const loaded = loadExports();
  const specs = specFiles(join(ROOT, 'spec'))
    .map((file) => ({ rel: relative(ROOT, file).split('\\').join('/'), text: readFileSync(file, 'utf8') }))
    // the helpers are not tests, and the coverage spec names no method calls of its own
    .filter((s) => !s.rel.startsWith('spec/helpers/') && s.rel.endsWith('.spec.ts'));
  return KVM_IOCTLS_API.map((m) => {
    const name = camelCase(m.rust);
    const ours = m.kind === 'constructor' ? 'new Kvm()' : m.kind === 'static' ? `${m.type}.${name}` : name;
    const exists = hasMember(loaded, m, name);
    const re =
      m.kind === 'constructor'
        ? /\bnew Kvm\(/
        : m.kind === 'function'
          ? new RegExp(`\\b${escapeRe(name)}\\(`)
          : m.kind === 'static'
            ? new RegExp(`\\b${escapeRe(m.type)}\\.${escapeRe(name)}\\(`)
            : new RegExp(`\\.${escapeRe(name)}\\(`);
    const hits = specs.filter((s) => re.test(s.text)).map((s) => ({ file: s.rel, kind: specKind(s.rel, s.text) }));
    const real = hits.some((h) => h.kind !== 'mock');
    const status: Status = !exists ? 'missing' : hits.length === 0 ? 'no test' : real ? 'done' : 'mock only';
    return { ...m, ours, exists, specs: hits, status };
  });
}

const ARCH_NAME: Record<Arch, string> = { x86: 'x86_64', arm: 'aarch64', rv: 'riscv64' };

/** The markdown report. */
export function renderMarkdown(rows: readonly CoverageRow[]): string {
  const archs = (a: readonly Arch[]): string => (a.length === 3 ? 'all' : a.map((x) => ARCH_NAME[x]).join(', '));
  const count = (pred: (r: CoverageRow) => boolean, rs: readonly CoverageRow[] = rows): number =>
    rs.filter(pred).length;
  const x86 = rows.filter((r) => r.arch.includes('x86'));
  const lines: string[] = [
    '# kvm-ioctls API coverage',
    '',
    'Generated by `scripts/api-coverage.ts` (`npm run coverage:api`); do not edit by hand.',
    '',
    'Every public method of rust-vmm kvm-ioctls 0.24 and every fd trait it implements (`AsRawFd::as_raw_fd` on',
    'Kvm, VmFd, VcpuFd and DeviceFd; `FromRawFd::from_raw_fd` on Kvm and DeviceFd; it has no `IntoRawFd`), our name',
    'for it, and the spec files that call it (`.name(` in `spec/**/*.ts`, `Type.name(` for a static; a method name',
    'shared by several classes, such as `checkExtension`, counts for each).',
    'Spec kinds: **real** = `spec/kvm/` (real KVM only), **both** = contract spec (mock and real KVM),',
    '**mock** = mock backend only.',
    '',
    'Status: **done** = exists and a real-KVM or contract spec calls it; **mock only** = exists, only mock specs',
    'call it; **no test** = exists, no spec calls it; **missing** = not implemented.',
    '',
    `| | all (${rows.length}) | x86_64 (${x86.length}) |`,
    '|---|---|---|',
    ...(['done', 'mock only', 'no test', 'missing'] as const).map(
      (s) => `| ${s} | ${count((r) => r.status === s)} | ${count((r) => r.status === s, x86)} |`,
    ),
    '',
  ];
  let type: string | undefined;
  for (const r of rows) {
    if (r.type !== type) {
      type = r.type;
      lines.push(`## ${type}`, '', '| kvm-ioctls | kvm-rx | arch | specs | status |', '|---|---|---|---|---|');
    }
    const specs = r.specs.length === 0 ? '—' : r.specs.map((s) => `\`${s.file}\` (${s.kind})`).join('<br>');
    const status = r.status === 'done' ? 'done' : `**${r.status}**`;
    const rust = r.trait === undefined ? r.rust : `${r.trait}::${r.rust}`;
    lines.push(`| \`${rust}\` | \`${r.ours}\` | ${archs(r.arch)} | ${specs} | ${status} |`);
    const next = rows[rows.indexOf(r) + 1];
    if (next?.type !== r.type) lines.push('');
  }
  return lines.join('\n');
}

if (require.main === module) {
  const rows = collect();
  const out = join(ROOT, 'docs/api-coverage.md');
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, renderMarkdown(rows));
  const x86 = rows.filter((r) => r.arch.includes('x86'));
  const by = (s: Status, rs: CoverageRow[]): number => rs.filter((r) => r.status === s).length;
  console.log(`wrote ${relative(process.cwd(), out)}: ${rows.length} methods`);
  for (const s of ['done', 'mock only', 'no test', 'missing'] as const) {
    console.log(`  ${s.padEnd(9)} ${String(by(s, rows)).padStart(3)} (x86_64: ${by(s, x86)})`);
  }
}
