/**
 * The `{ backend }` option of every constructor that opens or adopts an fd, and its check.
 *
 * @module
 */
import { checkObject, invalidValue } from '../abi/validate';
import { nativeBackend } from '../backend/native';
import type { IoctlBackend } from '../backend/types';

/** Options accepted by every constructor that opens an fd. */
export interface BackendOptions {
  /** The syscall backend: the native one (default) or a `MockBackend` from `kvm-rx/testing`. */
  backend?: IoctlBackend;
}

/** @internal The backend `options` names, or the native one. */
export function backendOf(options: BackendOptions | undefined): IoctlBackend {
  if (options === undefined) return nativeBackend();
  checkObject('options', options);
  if (options.backend === undefined) return nativeBackend();
  const b = options.backend as Partial<IoctlBackend>;
  if (typeof b !== 'object' || b === null || typeof b.ioctl !== 'function') {
    invalidValue('options.backend', 'must implement IoctlBackend', options.backend);
  }
  return options.backend;
}
