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
  it('lists the 125 public methods of kvm-ioctls 0.24 (110 on x86_64)', () => {
    const per = (t: string): number => KVM_IOCTLS_API.filter((m) => m.type === t).length;
    expect([per('Kvm'), per('VmFd'), per('VcpuFd'), per('DeviceFd'), per('KvmRunWrapper'), per('(free fn)')]).toEqual([
      25, 42, 52, 3, 2, 1,
    ]);
    expect(x86).toHaveLength(110);
    expect(new Set(KVM_IOCTLS_API.map((m) => `${m.type}::${m.rust}`)).size).toBe(125);
    expect(camelCase('set_user_memory_region2')).toBe('setUserMemoryRegion2');
    expect(camelCase('get_pit2')).toBe('getPit2');
  });

  it('finds the methods that exist and the specs that call them', () => {
    const run = rows.find((r) => r.type === 'VcpuFd' && r.rust === 'run')!;
    expect(run.exists).toBe(true);
    expect(run.specs.map((s) => s.file)).toContain('spec/kvm/leaks.kvm.spec.ts');
    expect(run.specs.find((s) => s.file === 'spec/kvm/leaks.kvm.spec.ts')?.kind).toBe('real');
    const md = renderMarkdown(rows);
    expect(md).toContain('| `create_vcpu` | `createVcpu` | all |');
    expect(md.split('\n').filter((l) => l.startsWith('| `'))).toHaveLength(125);
  });

  it('every method that exists is called by at least one spec', () => {
    expect(rows.filter((r) => r.exists && r.specs.length === 0).map(show)).toEqual([]);
  });

  it('every x86_64 kvm-ioctls method exists', () => {
    expect(x86.filter((r) => !r.exists).map(show)).toEqual([]);
  });
});
