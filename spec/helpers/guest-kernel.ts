/**
 * Where the micro-VM guest kernel (`npm run guest:kernel`, docs/guest-kernel.md) is, for the specs
 * that boot it: `KVMRX_GUEST_KERNEL`, else the build cache (`scripts/guest-kernel.sh --cached`,
 * which never builds). Without one these specs are skipped with the reason in their title, unless
 * `KVMRX_REQUIRE_GUEST_KERNEL=1` (set by .ci/run), where a missing kernel fails them.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describeKvm } from './kvm';

function locate(): { path: string } | { reason: string } {
  const fromEnv = process.env.KVMRX_GUEST_KERNEL;
  if (fromEnv !== undefined && fromEnv !== '')
    return existsSync(fromEnv) ? { path: fromEnv } : { reason: `KVMRX_GUEST_KERNEL=${fromEnv} does not exist` };
  const r = spawnSync('bash', [join(__dirname, '../../scripts/guest-kernel.sh'), '--cached'], { encoding: 'utf8' });
  const path = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status === 0 && existsSync(path)) return { path };
  return { reason: 'no guest kernel built: run npm run guest:kernel' };
}

/** The guest kernel's bzImage, or why there is none. */
export const guestKernel = locate();

const required = process.env.KVMRX_REQUIRE_GUEST_KERNEL === '1';

/**
 * `describeKvm` for specs that boot the guest kernel: `path` is its bzImage. Skipped (reason in
 * the title) without one, unless the run requires it: then it fails, naming why.
 */
export function describeGuestKernel(name: string, fn: (path: string) => void): void {
  if ('path' in guestKernel) {
    const path = guestKernel.path;
    describeKvm(name, () => fn(path));
  } else if (required) {
    describe(name, () => {
      it('has the guest kernel (KVMRX_REQUIRE_GUEST_KERNEL=1)', () => {
        throw new Error(guestKernel.reason);
      });
    });
  } else {
    describe.skip(`${name} [skipped: ${guestKernel.reason}]`, () => fn(''));
  }
}
