/**
 * `checkHost()` and `kvm-rx doctor`: the report's facts agree with probes made here through other
 * paths (the Kvm wrapper, /proc/cpuinfo, /sys/module), the delivery probes pass on a real KVM, the
 * CLI prints the same summary and JSON, and a bad KVM device path fails with remedies (exit 1).
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeKvm } from '../helpers/kvm';
import { Cap } from '../../src/wrappers/cap';
import { KVM_MAX_CPUID_ENTRIES } from '../../src/wrappers/fam';
import { Kvm } from '../../src/wrappers/kvm';
import {
  checkHost,
  formatReport,
  hostSummary,
  RELIED_ON_CAPS,
  reportJson,
  type HostReport,
} from '../../src/vmm/doctor';

const ROOT = join(__dirname, '..', '..');
const CLI = join(ROOT, 'src', 'cli', 'kvm-rx.ts');
const IDS = [
  'kvm-device',
  'virtualization',
  'api-version',
  'capabilities',
  'vcpus',
  'cpuid-msrs',
  'ioeventfd',
  'irqfd',
  'tun',
  'netns',
  'hugepages',
];

function cli(args: string[]): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', CLI, ...args], {
    cwd: ROOT,
    input: '',
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' },
  });
}

const check = (r: HostReport, id: string) => {
  const c = r.checks.find((x) => x.id === id);
  if (c === undefined) throw new Error(`no check ${id} in ${r.checks.map((x) => x.id).join(',')}`);
  return c;
};

/** The kind, read here from the files themselves (not through host.ts). */
function kindHere(): 'pvm' | 'vmx' | 'svm' | 'unknown' {
  if (existsSync('/sys/module/kvm_pvm')) return 'pvm';
  const flags = /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.split(/\s+/) ?? [];
  return flags.includes('vmx') ? 'vmx' : flags.includes('svm') ? 'svm' : 'unknown';
}

const openFds = () => readdirSync('/proc/self/fd').length;

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kvm-rx-doctor-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describeKvm('checkHost on this host', () => {
  jest.setTimeout(120_000);
  let report: HostReport;
  let fdsBefore: number;
  let fdsAfter: number;
  beforeAll(async () => {
    fdsBefore = openFds();
    report = await checkHost();
    fdsAfter = openFds();
  });

  it('has every check once, each with a status, a detail and (when not passing or skipped) a remedy', () => {
    expect(report.checks.map((c) => c.id)).toEqual(IDS);
    for (const c of report.checks) {
      expect(['pass', 'warn', 'fail', 'skip']).toContain(c.status);
      expect(c.detail.length).toBeGreaterThan(0);
      if (c.status === 'fail') expect(c.remedy?.length).toBeGreaterThan(0);
    }
    // /dev/kvm opens here (this suite runs only then): nothing that needs it was skipped.
    expect(report.checks.filter((c) => c.status === 'skip')).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.checks.filter((c) => c.status === 'fail')).toEqual([]);
  });

  it('agrees with the Kvm wrapper: API version, capabilities, vCPU limits, CPUID and MSR lists', () => {
    using kvm = new Kvm();
    const api = kvm.getApiVersion();
    expect(report.facts.apiVersion).toBe(api);
    expect(check(report, 'api-version').status).toBe(api === 12 ? 'pass' : 'fail');
    const caps = Object.fromEntries(RELIED_ON_CAPS.map((c) => [c.name, kvm.checkExtension(Cap[c.name])]));
    expect(report.facts.caps).toEqual(caps);
    const have = Object.values(caps).filter(Boolean).length;
    expect(report.summary).toContain(`, ${have}/${RELIED_ON_CAPS.length} caps,`);
    expect(report.facts.vcpus).toEqual({
      recommended: kvm.getNrVcpus(),
      max: kvm.getMaxVcpus(),
      maxId: kvm.getMaxVcpuId(),
    });
    expect(report.summary).toContain(`max ${kvm.getMaxVcpus()} vCPUs`);
    const cpuid = kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES).entries.length;
    const msrs = kvm.getMsrIndexList().entries.length;
    expect(cpuid).toBeGreaterThan(0);
    expect(report.facts.cpuidEntries).toBe(cpuid);
    expect(report.facts.msrIndices).toBe(msrs);
    expect(report.summary).toContain(`CPUID ${cpuid}, MSRs ${msrs}`);
  });

  it('agrees with /proc/cpuinfo and /sys/module on the CPU and the kind of virtualization', () => {
    const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
    const vendor = /^vendor_id\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim();
    const model = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim();
    expect(report.facts.cpuVendor).toBe(vendor);
    expect(report.facts.cpuModel).toBe(model);
    const kind = kindHere();
    expect(report.facts.virtualization).toBe(kind);
    const brand = vendor === 'GenuineIntel' ? 'Intel' : vendor === 'AuthenticAMD' ? 'AMD' : '';
    expect(report.summary).toMatch(
      new RegExp(`^doctor: ${kind === 'unknown' ? 'no VMX/SVM/PVM seen' : kind.toUpperCase()} \\(${brand}`),
    );
    const v = check(report, 'virtualization');
    expect(v.status).toBe(kind === 'vmx' || kind === 'svm' ? 'pass' : 'warn');
    if (kind === 'pvm') expect(v.detail).toMatch(/CPL-0 code .* emulator/);
  });

  it('ioeventfds (PIO and MMIO) and the irqfd delivered: counted without an exit, IRR bit raised', () => {
    expect(check(report, 'ioeventfd')).toMatchObject({ status: 'pass' });
    expect(check(report, 'ioeventfd').detail).toMatch(/counts pio 1, mmio 1; vCPU exits: Hlt$/);
    expect(report.facts.ioeventfd).toEqual({ pio: true, mmio: true });
    expect(check(report, 'irqfd')).toMatchObject({ status: 'pass' });
    expect(check(report, 'irqfd').detail).toMatch(/bit 5 clear before the write, set after$/);
    expect(report.facts.irqfd).toBe(true);
    expect(report.summary).toContain('ioeventfd pio+mmio ok, irqfd ok');
  });

  it('tun, netns and huge pages agree with the files; every fd the probes opened is closed', () => {
    let tun: boolean;
    try {
      closeSync(openSync('/dev/net/tun', 'r+'));
      tun = true;
    } catch {
      tun = false;
    }
    expect(report.facts.tun).toBe(tun);
    expect(check(report, 'tun').status).toBe(report.facts.tun ? 'pass' : 'warn');
    expect(report.summary).toContain(`tun ${report.facts.tun ? 'ok' : 'missing'}`);
    expect(check(report, 'netns').status).toBe(report.facts.netns ? 'pass' : 'warn');
    const sizes = existsSync('/sys/kernel/mm/hugepages')
      ? readdirSync('/sys/kernel/mm/hugepages')
          .map((n) => Number(/^hugepages-(\d+)kB$/.exec(n)?.[1]))
          .filter((n) => n > 0)
          .sort((a, b) => a - b)
      : [];
    expect(report.facts.hugepages.pools.map((p) => p.sizeKiB)).toEqual(sizes);
    expect(fdsAfter).toBe(fdsBefore);
  });

  it('kvm-rx doctor prints one line per check and the summary, exit 0; --json is the same report', async () => {
    const text = cli(['doctor']);
    expect(text.status).toBe(0);
    const lines = text.stdout.trimEnd().split('\n');
    expect(lines.filter((l) => /^\[( ok |warn|FAIL|skip)\] /.test(l))).toHaveLength(IDS.length);
    expect(lines[lines.length - 1]).toBe(report.summary);
    expect(await hostSummary()).toBe(report.summary);
    const json = cli(['doctor', '--json']);
    expect(json.status).toBe(0);
    const parsed = JSON.parse(json.stdout) as HostReport;
    expect(parsed.summary).toBe(report.summary);
    expect(parsed.ok).toBe(true);
    expect(parsed.checks.map((c) => [c.id, c.status])).toEqual(report.checks.map((c) => [c.id, c.status]));
    expect(parsed.facts.apiVersion).toBe(report.facts.apiVersion);
  });
});

describe('checkHost and kvm-rx doctor with a bad KVM device', () => {
  jest.setTimeout(120_000);

  it('a missing device node: kvm-device fails with the modprobe remedy, the KVM checks are skipped', async () => {
    const missing = join(dir, 'no-kvm');
    const r = await checkHost({ kvmPath: missing });
    expect(r.ok).toBe(false);
    expect(check(r, 'kvm-device')).toMatchObject({ status: 'fail' });
    expect(check(r, 'kvm-device').detail).toContain('ENOENT');
    expect(check(r, 'kvm-device').remedy).toMatch(/modprobe kvm_intel.*kvm_amd/);
    for (const id of ['api-version', 'capabilities', 'vcpus', 'cpuid-msrs', 'ioeventfd', 'irqfd'])
      expect(check(r, id).status).toBe('skip');
    expect(r.summary).toContain(`${missing} ENOENT`);
    expect(r.facts).toMatchObject({ kvmOpen: false, kvmError: 'ENOENT', caps: {} });
  });

  it('a node that opens but is not KVM (/dev/null): the API version check fails, the rest is skipped', async () => {
    const r = await checkHost({ kvmPath: '/dev/null', netns: false });
    expect(r.ok).toBe(false);
    expect(check(r, 'kvm-device').status).toBe('pass');
    expect(check(r, 'api-version')).toMatchObject({ status: 'fail' });
    expect(check(r, 'api-version').detail).toMatch(/KVM_GET_API_VERSION on \/dev\/null failed \(ENOTTY\)/);
    expect(check(r, 'api-version').remedy).toMatch(/10:232/);
    expect(check(r, 'ioeventfd').status).toBe('skip');
    expect(check(r, 'netns').status).toBe('skip');
    expect(r.summary).toContain('/dev/null is not a KVM device');
  });

  it('kvm-rx doctor --kvm-path <missing>: a [FAIL] line with an indented remedy under it, exit 1', () => {
    const missing = join(dir, 'also-missing');
    const r = cli(['doctor', '--kvm-path', missing]);
    expect(r.status).toBe(1);
    const lines = r.stdout.split('\n');
    const at = lines.findIndex((l) => l.startsWith(`[FAIL] ${missing} opens read/write:`));
    expect(at).toBeGreaterThanOrEqual(0);
    expect(lines[at + 1]).toMatch(/^ {7}remedy: load KVM: `sudo modprobe kvm_intel`/);
    const json = cli(['doctor', '--json', '--kvm-path', missing]);
    expect(json.status).toBe(1);
    expect((JSON.parse(json.stdout) as HostReport).ok).toBe(false);
  });

  it('bad options are TypeError/RangeError with ERR_ codes; the formatters take the report', async () => {
    await expect(checkHost({ kvmPath: 1 as unknown as string })).rejects.toMatchObject({
      name: 'TypeError',
      code: 'ERR_INVALID_ARG_TYPE',
    });
    await expect(checkHost({ probeTimeoutMs: 0 })).rejects.toMatchObject({
      name: 'RangeError',
      code: 'ERR_OUT_OF_RANGE',
    });
    await expect(checkHost(null as unknown as object)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    expect(() => formatReport(undefined as unknown as HostReport)).toThrow(
      expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }),
    );
    const report: HostReport = {
      checks: [{ id: 'x', title: 'X', status: 'warn', detail: 'd', remedy: 'r' }],
      summary: 'doctor: s',
      ok: true,
      facts: { big: 1n << 70n } as unknown as HostReport['facts'],
    };
    expect(formatReport(report)).toBe('[warn] X: d\n       remedy: r\n\ndoctor: s\n');
    expect(JSON.parse(reportJson(report))).toMatchObject({ facts: { big: (1n << 70n).toString() } });
  });
});
