/**
 * `writeAnswer`: how a handler's answer becomes the bytes of a PIO/MMIO read (little-endian,
 * truncated to the access size, two's complement for negative numbers). Numbers into 1-4 bytes
 * take a path without BigInts; every other answer the BigInt one: both must agree.
 */
import { writeAnswer } from '../../src/runtime/operators/handleExits';

const bytes = (size: number, answer: Parameters<typeof writeAnswer>[1]) => {
  const data = new Uint8Array(size).fill(0xaa);
  writeAnswer(data, answer);
  return [...data];
};

describe('writeAnswer', () => {
  it.each([
    [1, 0x42, [0x42]],
    [2, 0x1234, [0x34, 0x12]],
    [3, 0x123456, [0x56, 0x34, 0x12]],
    [4, 0xdeadbeef, [0xef, 0xbe, 0xad, 0xde]],
    [1, 0x1ff, [0xff]],
    [2, -2, [0xfe, 0xff]],
    [4, -1, [0xff, 0xff, 0xff, 0xff]],
    [4, 2 ** 32 + 5, [5, 0, 0, 0]],
    [4, -(2 ** 40) - 3, [0xfd, 0xff, 0xff, 0xff]],
    [4, Number.MAX_SAFE_INTEGER, [0xff, 0xff, 0xff, 0xff]],
    [8, 2 ** 32 + 5, [5, 0, 0, 0, 1, 0, 0, 0]],
    [8, -1, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]],
    [6, -(2 ** 40) - 3, [0xfd, 0xff, 0xff, 0xff, 0xff, 0xfe]],
    [2, 0x1234n, [0x34, 0x12]],
    [8, -1n, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]],
  ])('%i byte(s) answered with %p: %j', (size, answer, expected) => {
    expect(bytes(size, answer)).toEqual(expected);
  });

  it('copies byte arrays and zero-fills the rest; undefined leaves the bytes alone', () => {
    expect(bytes(4, [1, 2])).toEqual([1, 2, 0, 0]);
    expect(bytes(2, Uint8Array.of(7, 8, 9))).toEqual([7, 8]);
    expect(bytes(2, undefined)).toEqual([0xaa, 0xaa]);
  });

  it.each([1.5, NaN, Infinity, 2 ** 53])('refuses the number %p with ERR_OUT_OF_RANGE, writing nothing', (answer) => {
    const data = new Uint8Array(2).fill(0xaa);
    expect(() => writeAnswer(data, answer)).toThrow(
      expect.objectContaining({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }),
    );
    expect([...data]).toEqual([0xaa, 0xaa]);
  });

  it('refuses a byte array holding a value above 255', () => {
    expect(() => writeAnswer(new Uint8Array(2), [1, 256])).toThrow(
      expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }),
    );
  });
});
