/**
 * The kvm-ioctls API coverage (scripts/api-coverage.ts) as tests: every method we have is called
 * by some spec, and every x86_64 method of kvm-ioctls 0.24 exists. `npm run coverage:api` writes
 * the full table to docs/api-coverage.md.
 */
import { KVM_IOCTLS_API, camelCase, collect, renderMarkdown } from '../../scripts/api-coverage';

const rows = collect();
const x86 = rows.filter((r) => r.arch.includes('x86'));
const show = (r: (typeof rows)[number]): string => `${r.type}::${r.rust} -> ${r.ours}`;

describe('kvm-ioctls API coverage', () => {
  it('lists the 125 public methods of kvm-ioctls 0.24 (110 on x86_64) and its 6 fd trait impls', () => {
    const per = (t: string): number => KVM_IOCTLS_API.filter((m) => m.type === t && m.trait === undefined).length;
    expect([per('Kvm'), per('VmFd'), per('VcpuFd'), per('DeviceFd'), per('KvmRunWrapper'), per('(free fn)')]).toEqual([
      25, 42, 52, 3, 2, 1,
    ]);
    // AsRawFd on every fd type, FromRawFd on Kvm and DeviceFd, IntoRawFd on none (kvm-ioctls 0.24)
    const traits = KVM_IOCTLS_API.filter((m) => m.trait !== undefined).map((m) => `${m.type}: ${m.trait}::${m.rust}`);
    expect(traits.sort()).toEqual([
      'DeviceFd: AsRawFd::as_raw_fd',
      'DeviceFd: FromRawFd::from_raw_fd',
      'Kvm: AsRawFd::as_raw_fd',
      'Kvm: FromRawFd::from_raw_fd',
      'VcpuFd: AsRawFd::as_raw_fd',
      'VmFd: AsRawFd::as_raw_fd',
    ]);
    expect(x86).toHaveLength(116);
    expect(new Set(KVM_IOCTLS_API.map((m) => `${m.type}::${m.rust}`)).size).toBe(131);
    expect(camelCase('set_user_memory_region2')).toBe('setUserMemoryRegion2');
    expect(camelCase('get_pit2')).toBe('getPit2');
  });

  it('counts a static only when called on its own class', () => {
    const from = (t: string) => rows.find((r) => r.type === t && r.rust === 'from_raw_fd')!;
    expect(from('DeviceFd')).toMatchObject({ ours: 'DeviceFd.fromRawFd', exists: true, status: 'done' });
    expect(from('DeviceFd').specs.map((s) => s.file)).toContain('spec/contract/vm.contract.spec.ts');
    expect(from('Kvm').specs.map((s) => s.file)).toContain('spec/contract/backend.contract.spec.ts');
    expect(from('Kvm').specs.map((s) => s.file)).not.toContain('spec/contract/vm.contract.spec.ts');
  });

  it('finds the methods that exist and the specs that call them', () => {
    const run = rows.find((r) => r.type === 'VcpuFd' && r.rust === 'run')!;
    expect(run.exists).toBe(true);
    expect(run.specs.map((s) => s.file)).toContain('spec/kvm/leaks.kvm.spec.ts');
    expect(run.specs.find((s) => s.file === 'spec/kvm/leaks.kvm.spec.ts')?.kind).toBe('real');
    const md = renderMarkdown(rows);
    expect(md).toContain('| `create_vcpu` | `createVcpu` | all |');
    expect(md).toContain('| `FromRawFd::from_raw_fd` | `DeviceFd.fromRawFd` | all |');
    expect(md.split('\n').filter((l) => l.startsWith('| `'))).toHaveLength(131);
  });

  it('every method that exists is called by at least one spec', () => {
    expect(rows.filter((r) => r.exists && r.specs.length === 0).map(show)).toEqual([]);
  });

  it('every x86_64 kvm-ioctls method exists', () => {
    expect(x86.filter((r) => !r.exists).map(show)).toEqual([]);
  });
});
