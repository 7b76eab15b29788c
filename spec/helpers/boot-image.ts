/**
 * For the loader specs: the BootImageError a call throws.
 */
import { BootImageError } from '../../src/vmm/errors';

/** Runs `fn`, expects it to throw a {@link BootImageError}, and returns that error. */
export function bootError(fn: () => unknown): BootImageError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BootImageError);
    return e as BootImageError;
  }
  throw new Error('expected a BootImageError');
}
