/**
 * Gates for real-KVM specs: they run wherever /dev/kvm opens, and skip with the reason elsewhere.
 */
import { existsSync, openSync, closeSync } from 'node:fs';
import { nativeBackend } from '../../src/backend/native';
import { MockBackend } from '../../src/backend/mock/index';
import type { IoctlBackend } from '../../src/backend/types';

function probe(): { ok: true } | { ok: false; reason: string } {
  try {
    closeSync(openSync('/dev/kvm', 'r+'));
  } catch (e) {
    return { ok: false, reason: `/dev/kvm cannot be opened: ${(e as Error).message}` };
  }
  try {
    nativeBackend();
  } catch (e) {
    return { ok: false, reason: `the native addon did not load: ${(e as Error).message}` };
  }
  return { ok: true };
}

/** Whether real-KVM specs can run here, and why not. */
export const kvmAvailable = probe();

/**
 * Which vendor module runs this host's VMs, by the modules loaded: `'pvm'` (kvm_pvm: no VMX/SVM,
 * KVM emulates what hardware would run, e.g. real mode and some privileged instructions), `'svm'`
 * (kvm_amd), `'vmx'` (kvm_intel), `'unknown'`. The specs assert each host's documented behaviour
 * against this probe where hosts legitimately differ (docs/testing.md, "Host-defined behaviours").
 */
export const kvmVendor: 'pvm' | 'svm' | 'vmx' | 'unknown' = existsSync('/sys/module/kvm_pvm')
  ? 'pvm'
  : existsSync('/sys/module/kvm_amd')
    ? 'svm'
    : existsSync('/sys/module/kvm_intel')
      ? 'vmx'
      : 'unknown';

/** `describe` for specs that need /dev/kvm: skipped, with the reason in the title, where it cannot open. */
export const describeKvm: (name: string, fn: () => void) => void = kvmAvailable.ok
  ? (name, fn) => describe(`${name} [real KVM]`, fn)
  : (name, fn) => describe.skip(`${name} [skipped: ${kvmAvailable.reason}]`, fn);

/** The backends a contract suite runs against: the mock always, the native one where KVM works. */
export function contractBackends(): Array<[string, () => IoctlBackend]> {
  const list: Array<[string, () => IoctlBackend]> = [['mock', () => new MockBackend()]];
  if (kvmAvailable.ok) list.push(['native', () => nativeBackend()]);
  else {
    console.warn(`contract suite: native backend skipped (${kvmAvailable.reason})`);
  }
  return list;
}

/** Expects `fn` to throw a KvmError with this code (and, for ioctls, request). */
export function expectKvmError(fn: () => unknown, code: string, request?: string): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeDefined();
  const e = thrown as { name?: string; code?: string; request?: string; errno?: number; syscall?: string };
  expect({ name: e.name, code: e.code }).toEqual({ name: 'KvmError', code });
  expect(e.errno).toBeLessThan(0);
  if (request !== undefined) expect({ syscall: e.syscall, request: e.request }).toEqual({ syscall: 'ioctl', request });
}

/** Expects `fn` to throw an error with this `code` (ERR_*) and class name. */
export function expectCode(
  fn: () => unknown,
  name: 'TypeError' | 'RangeError' | 'KvmClosedError' | 'Error',
  code: string,
): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  const e = thrown as { name?: string; code?: string } | undefined;
  expect({ name: e?.name, code: e?.code }).toEqual({ name, code });
}
