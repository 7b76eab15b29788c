/**
 * A minimal writer of uncompressed `newc` cpio archives: the initramfs format Linux unpacks
 * (`070701` headers, 4-byte alignment, `TRAILER!!!`).
 *
 * @module
 */

import { checkInt, checkObject, checkString, invalidType, invalidValue, outOfRange } from '../abi/validate';

/** One archive entry. Directories before their contents; paths without a leading `/`. */
export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Uint8Array | string; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function field(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

/**
 * Builds a `newc` cpio archive (owner root, mtime 0, so the output is reproducible).
 *
 * @example
 * ```ts
 * const initrd = cpioNewc([{ type: 'dir', path: 'dev' }, { type: 'file', path: 'init', data: '#!/bin/sh\n', mode: 0o755 }]);
 * ```
 * @throws `TypeError` (`ERR_INVALID_ARG_TYPE`/`ERR_INVALID_ARG_VALUE`) for entries that are not
 *   objects of a known `type`, an empty or absolute path, a NUL in a path or target, data that is
 *   not a string or Uint8Array; `RangeError` (`ERR_OUT_OF_RANGE`) for a mode beyond 0o7777, a
 *   device number beyond 2^32 − 1, or a file of 4 GiB or more (newc sizes have 8 hex digits)
 */
export function cpioNewc(entries: ReadonlyArray<CpioEntry>): Uint8Array {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const push = (b: Uint8Array) => {
    chunks.push(b);
    size += b.length;
  };
  const pad = () => {
    const n = (4 - (size % 4)) % 4;
    if (n) push(new Uint8Array(n));
  };
  const record = (
    ino: number,
    name: string,
    mode: number,
    data: Uint8Array,
    rdev: [number, number] = [0, 0],
    nlink = 1,
  ) => {
    const nameBytes = Buffer.from(name + '\0', 'utf8');
    const hdr =
      '070701' +
      [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, rdev[0], rdev[1], nameBytes.length, 0].map(field).join('');
    push(Buffer.from(hdr, 'latin1'));
    push(nameBytes);
    pad();
    if (data.length) push(data);
    pad();
  };
  if (!Array.isArray(entries)) invalidType('entries', 'an array of cpio entries', entries);
  let ino = 1;
  entries.forEach((e: CpioEntry, i) => {
    const at = `entries[${i}]`;
    checkObject(at, e);
    const path = checkString(`${at}.path`, e.path);
    if (path === '' || path.startsWith('/')) invalidValue(`${at}.path`, 'must be relative and non-empty', path);
    const mode = (def: number): number =>
      'mode' in e && e.mode !== undefined ? checkInt(`${at}.mode`, e.mode, 0, 0o7777) : def;
    switch (e.type) {
      case 'dir':
        record(ino++, path, S_IFDIR | mode(0o755), new Uint8Array(0), [0, 0], 2);
        break;
      case 'file': {
        let data: Uint8Array;
        if (typeof e.data === 'string') data = Buffer.from(e.data, 'utf8');
        else if (e.data instanceof Uint8Array) data = e.data;
        else return invalidType(`${at}.data`, 'a string or a Uint8Array', e.data);
        if (data.length > 0xffff_ffff) outOfRange(`${at}.data.length`, '< 4 GiB (newc sizes)', data.length);
        record(ino++, path, S_IFREG | mode(0o644), data);
        break;
      }
      case 'symlink':
        record(ino++, path, S_IFLNK | 0o777, Buffer.from(checkString(`${at}.target`, e.target), 'utf8'));
        break;
      case 'chardev':
        record(ino++, path, S_IFCHR | mode(0o600), new Uint8Array(0), [
          checkInt(`${at}.major`, e.major, 0, 0xffff_ffff),
          checkInt(`${at}.minor`, e.minor, 0, 0xffff_ffff),
        ]);
        break;
      default:
        invalidValue(`${at}.type`, "must be 'dir', 'file', 'symlink' or 'chardev'", (e as { type?: unknown }).type);
    }
  });
  record(0, 'TRAILER!!!', 0, new Uint8Array(0), [0, 0], 1);
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
