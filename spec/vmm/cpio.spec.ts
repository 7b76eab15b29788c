/**
 * The newc cpio writer used to build the e2e initramfs.
 */
import { cpioNewc } from '../../src/vmm/cpio';

function parse(a: Uint8Array) {
  const out: Array<{ name: string; mode: number; size: number; rdev: [number, number]; data: string }> = [];
  let at = 0;
  const txt = Buffer.from(a).toString('latin1');
  for (;;) {
    expect(txt.slice(at, at + 6)).toBe('070701');
    const f = (i: number) => parseInt(txt.slice(at + 6 + 8 * i, at + 14 + 8 * i), 16);
    const namesize = f(11);
    const size = f(6);
    const name = txt.slice(at + 110, at + 110 + namesize - 1);
    let p = at + 110 + namesize;
    p = (p + 3) & ~3;
    const data = txt.slice(p, p + size);
    out.push({ name, mode: f(1), size, rdev: [f(9), f(10)], data });
    at = (p + size + 3) & ~3;
    if (name === 'TRAILER!!!') break;
  }
  expect(at).toBe(a.length);
  return out;
}

describe('cpioNewc', () => {
  it('writes 070701 records with 4-byte alignment, modes, symlinks, device nodes and the trailer', () => {
    const a = cpioNewc([
      { type: 'dir', path: 'bin' },
      { type: 'file', path: 'init', data: '#!/bin/sh\necho hi\n', mode: 0o755 },
      { type: 'symlink', path: 'bin/sh', target: 'busybox' },
      { type: 'chardev', path: 'dev/console', major: 5, minor: 1 },
    ]);
    expect(a.length % 4).toBe(0);
    expect(parse(a)).toEqual([
      { name: 'bin', mode: 0o40755, size: 0, rdev: [0, 0], data: '' },
      { name: 'init', mode: 0o100755, size: 18, rdev: [0, 0], data: '#!/bin/sh\necho hi\n' },
      { name: 'bin/sh', mode: 0o120777, size: 7, rdev: [0, 0], data: 'busybox' },
      { name: 'dev/console', mode: 0o20600, size: 0, rdev: [5, 1], data: '' },
      { name: 'TRAILER!!!', mode: 0, size: 0, rdev: [0, 0], data: '' },
    ]);
  });

  it('refuses absolute or empty paths', () => {
    expect(() => cpioNewc([{ type: 'dir', path: '/bin' }])).toThrow(TypeError);
    expect(() => cpioNewc([{ type: 'dir', path: '' }])).toThrow(/relative and non-empty/);
  });

  it.each([
    ['not an array', 'init', 'TypeError', 'ERR_INVALID_ARG_TYPE', /"entries"/],
    ['an entry that is not an object', [null], 'TypeError', 'ERR_INVALID_ARG_TYPE', /entries\[0\]/],
    ['an unknown type', [{ type: 'fifo', path: 'p' }], 'TypeError', 'ERR_INVALID_ARG_VALUE', /entries\[0\]\.type/],
    ['a path that is not a string', [{ type: 'dir', path: 7 }], 'TypeError', 'ERR_INVALID_ARG_TYPE', /\.path/],
    ['a NUL in a path', [{ type: 'dir', path: 'a\0b' }], 'TypeError', 'ERR_INVALID_ARG_VALUE', /\.path/],
    ['a mode beyond 0o7777', [{ type: 'dir', path: 'd', mode: 0o10000 }], 'RangeError', 'ERR_OUT_OF_RANGE', /\.mode/],
    ['a fractional mode', [{ type: 'dir', path: 'd', mode: 1.5 }], 'RangeError', 'ERR_OUT_OF_RANGE', /\.mode/],
    [
      'file data of the wrong type',
      [{ type: 'file', path: 'f', data: 5 }],
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
      /\.data/,
    ],
    [
      'a symlink target that is not a string',
      [{ type: 'symlink', path: 'l' }],
      'TypeError',
      'ERR_INVALID_ARG_TYPE',
      /\.target/,
    ],
    [
      'a device number beyond 32 bits',
      [{ type: 'chardev', path: 'c', major: 2 ** 32, minor: 0 }],
      'RangeError',
      'ERR_OUT_OF_RANGE',
      /\.major/,
    ],
  ])('refuses %s, naming the field', (_what, entries, name, code, message) => {
    let thrown: unknown;
    try {
      cpioNewc(entries as never);
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toMatchObject({ name, code, message: expect.stringMatching(message) });
  });
});
