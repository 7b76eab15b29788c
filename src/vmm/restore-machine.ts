/**
 * `restoreMachine()`: restores whatever kvm-rx machine a snapshot holds (a `bootLinux()` VM or
 * the demo VM), by the machine kind its header names.
 *
 * @module
 */
import { checkObject, checkString } from '../abi/validate';
import { restoreDemo, type DemoVm, type RestoreDemoOptions } from './demo';
import { SnapshotError } from './errors';
import { restoreLinux, type LinuxVm, type RestoreLinuxOptions } from './linux';
import { LINUX_SNAPSHOT_MACHINE } from './linux-snapshot';
import { readSnapshotFile } from './snapshot-file';

/** Options of {@link restoreMachine}: each machine kind's own. */
export interface RestoreMachineOptions {
  /** For a `bootLinux()` snapshot. */
  linux?: RestoreLinuxOptions;
  /** For a demo snapshot (`output` is required there). */
  demo?: RestoreDemoOptions;
}

/** A restored machine, by kind. */
export type RestoredMachine = { kind: 'linux'; vm: LinuxVm } | { kind: 'demo'; vm: DemoVm };

/**
 * Restores the machine a snapshot file holds, with the options given for its kind: a
 * `bootLinux()` VM through {@link restoreLinux}, the demo VM through {@link restoreDemo}.
 *
 * @example
 * ```ts
 * const m = restoreMachine('vm.snap', { linux: {}, demo: { output: (b) => process.stdout.write(b) } });
 * if (m.kind === 'linux') await m.vm.done;
 * ```
 * @throws {@link SnapshotError} `ERR_KVM_SNAPSHOT_MISMATCH` for another machine kind, or one
 *   without options here; what `restoreLinux`/`restoreDemo` throw
 */
export function restoreMachine(path: string, options: RestoreMachineOptions): RestoredMachine {
  checkString('path', path);
  checkObject('options', options);
  const { header, path: abs } = readSnapshotFile(path);
  if (header.machine === LINUX_SNAPSHOT_MACHINE && options.linux !== undefined)
    return { kind: 'linux', vm: restoreLinux(path, options.linux) };
  if (header.machine === 'demo' && options.demo !== undefined)
    return { kind: 'demo', vm: restoreDemo(path, options.demo) };
  throw new SnapshotError(
    'ERR_KVM_SNAPSHOT_MISMATCH',
    abs,
    `it holds a '${header.machine}' machine, which ${header.machine === LINUX_SNAPSHOT_MACHINE || header.machine === 'demo' ? 'was given no options here' : 'kvm-rx does not restore (a VMM of your own: read it with readSnapshotFile)'}`,
  );
}
