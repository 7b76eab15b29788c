/**
 * A minimal writer of uncompressed `newc` cpio archives: the initramfs format Linux unpacks
 * (`070701` headers, 4-byte alignment, `TRAILER!!!`).
 *
 * @module
 */

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
 * @throws `TypeError` for an empty or absolute path
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
  let ino = 1;
  for (const e of entries) {
    if (typeof e.path !== 'string' || e.path === '' || e.path.startsWith('/')) {
      throw new TypeError(`cpio entry path must be relative and non-empty, got '${e.path}'`);
    }
    switch (e.type) {
      case 'dir':
        record(ino++, e.path, S_IFDIR | (e.mode ?? 0o755), new Uint8Array(0), [0, 0], 2);
        break;
      case 'file': {
        const data = typeof e.data === 'string' ? Buffer.from(e.data, 'utf8') : e.data;
        record(ino++, e.path, S_IFREG | (e.mode ?? 0o644), data);
        break;
      }
      case 'symlink':
        record(ino++, e.path, S_IFLNK | 0o777, Buffer.from(e.target, 'utf8'));
        break;
      case 'chardev':
        record(ino++, e.path, S_IFCHR | (e.mode ?? 0o600), new Uint8Array(0), [e.major, e.minor]);
        break;
    }
  }
  record(0, 'TRAILER!!!', 0, new Uint8Array(0), [0, 0], 1);
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
