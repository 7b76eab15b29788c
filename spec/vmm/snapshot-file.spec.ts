import { createHash } from 'node:crypto';
import {
  copyFileSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import {
  SNAPSHOT_FORMAT_VERSION,
  checkSnapshotHost,
  decodeSnapshotState,
  encodeSnapshotState,
  hostOfKvm,
  mapSnapshotMemory,
  mergeSnapshots,
  readSnapshotChain,
  readSnapshotFile,
  snapshotHost,
  writeSnapshotFile,
  type SnapshotHost,
} from '../../src/vmm/snapshot-file';
import { SnapshotError } from '../../src/vmm/errors';
import type { KvmCpuidEntry2 } from '../../src/abi/layouts';
import { MockBackend } from '../../src/backend/mock/index';
import { KVM_MAX_CPUID_ENTRIES } from '../../src/wrappers/fam';
import { Kvm } from '../../src/wrappers/kvm';

const PAGE = 4096;
const host: SnapshotHost = {
  vendor: 'AuthenticAMD',
  signature: 0xa00f11,
  model: 'test CPU',
  kernel: '6.1.0-test',
  features: { '0x1.0.ecx': 0x1, '0x7.0.ebx': 0x21 },
};

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kvmrx-snapfile-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** RAM of `pages` pages, page p filled with (p * 7 + seed) & 0xff, except every third page zero. */
function ram(pages: number, seed = 1): Uint8Array {
  const b = new Uint8Array(pages * PAGE);
  for (let p = 0; p < pages; p++) if (p % 3 !== 0) b.fill((p * 7 + seed) & 0xff || 1, p * PAGE, (p + 1) * PAGE);
  return b;
}

function bitmapOf(pages: number, set: number[]): BigUint64Array {
  const b = new BigUint64Array(Math.ceil(pages / 64));
  for (const p of set) b[p >> 6] |= 1n << BigInt(p & 63);
  return b;
}

const state = {
  regs: { rip: 0xffff_ffff_8100_0000n, rax: -5n },
  xsave: Uint8Array.of(1, 2, 3),
  list: [1, 'two', null, true],
};

function full(path: string, bytes: Uint8Array, extra: Partial<Parameters<typeof writeSnapshotFile>[1]> = {}) {
  return writeSnapshotFile(path, { machine: 'test', state, regions: [{ guestPhysAddr: 0n, bytes }], host, ...extra });
}

function expectSnapshotError(fn: () => unknown, code: string, detail?: RegExp): SnapshotError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(SnapshotError);
  const e = caught as SnapshotError;
  expect(e.code).toBe(code);
  if (detail) expect(e.detail).toMatch(detail);
  return e;
}

describe('snapshot state encoding', () => {
  it('round-trips bigints, bytes and plain JSON data', () => {
    const text = encodeSnapshotState(state);
    expect(text).toContain('"$bigint":"0xffffffff81000000"');
    expect(decodeSnapshotState(text)).toEqual(state);
  });

  it('refuses what JSON cannot hold', () => {
    expect(() => encodeSnapshotState({ f: () => 1 })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => encodeSnapshotState({ a: new Uint16Array(2) })).toThrow(TypeError);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => encodeSnapshotState(cyclic)).toThrow(TypeError);
  });

  it('refuses malformed tagged values', () => {
    expect(() => decodeSnapshotState('{"a":{"$bigint":"12"}}')).toThrow(TypeError);
    expect(() => decodeSnapshotState('{"a":{"$bytes":"@@@@"}}')).toThrow(TypeError);
    // an object with more keys is data, not a tag
    expect(decodeSnapshotState('{"a":{"$bigint":"12","b":1}}')).toEqual({ a: { $bigint: '12', b: 1 } });
  });

  it('decodes tags at any depth, in arrays too, and keeps a __proto__ key a plain property', () => {
    const got = decodeSnapshotState(
      '{"a":[{"$bigint":"0x10"},[{"$bytes":"AQI="}]],"__proto__":{"$bigint":"-0x1"},"b":{"c":{"$bigint":"0x0"}}}',
    ) as Record<string, unknown>;
    expect(got.a).toEqual([16n, [Uint8Array.of(1, 2)]]);
    expect(Object.getPrototypeOf(got)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(got, '__proto__')?.value).toBe(-1n);
    expect(got.b).toEqual({ c: 0n });
  });
});

describe('writeSnapshotFile / readSnapshotFile', () => {
  it('writes a full snapshot that reads back and maps the same memory, zero pages as holes', () => {
    const bytes = ram(64);
    const path = join(dir, 'a.snap');
    const header = full(path, bytes);
    expect(header).toMatchObject({
      format: 'kvm-rx snapshot',
      version: SNAPSHOT_FORMAT_VERSION,
      kind: 'full',
      machine: 'test',
      host,
    });
    const file = readSnapshotFile(path);
    expect(file.header).toEqual(header);
    expect(file.state).toEqual(state);
    expect(file.regions).toEqual([expect.objectContaining({ gpa: 0n, size: 64 * PAGE })]);
    expect(statSync(path).size).toBe(header.fileSize);
    const [mem] = mapSnapshotMemory([file]);
    try {
      expect(Buffer.from(mem.bytes).equals(Buffer.from(bytes))).toBe(true);
      mem.bytes[5] = 0xee; // private: the file does not change
    } finally {
      mem.close();
    }
    expect(readFileSync(path)[(file.regions[0].offset as number) + 5]).toBe(0);
  });

  it('writes a diff with only the pages given, and a chain maps as base plus diffs in order', () => {
    const pages = 100;
    const base = ram(pages, 1);
    full(join(dir, 'base.snap'), base);
    const baseFile = readSnapshotFile(join(dir, 'base.snap'));
    const v1 = base.slice();
    v1.fill(0xa1, 3 * PAGE, 4 * PAGE);
    v1.fill(0xa2, 70 * PAGE, 71 * PAGE);
    const h1 = writeSnapshotFile(join(dir, 'd1.snap'), {
      machine: 'test',
      state: { n: 1 },
      regions: [{ guestPhysAddr: 0n, bytes: v1, dirty: bitmapOf(pages, [3, 70]) }],
      host,
      parent: { id: baseFile.header.id, path: join(dir, 'base.snap') },
      checksumMemory: true,
    });
    expect(h1.kind).toBe('diff');
    expect(h1.parent).toEqual({ id: baseFile.header.id, path: 'base.snap' });
    expect(h1.memory[0].dirty?.pages).toBe(2);
    const v2 = v1.slice();
    v2.fill(0xb3, 3 * PAGE, 4 * PAGE);
    v2.fill(0xb9, 99 * PAGE, 100 * PAGE);
    writeSnapshotFile(join(dir, 'd2.snap'), {
      machine: 'test',
      state: { n: 2 },
      regions: [{ guestPhysAddr: 0n, bytes: v2, dirty: bitmapOf(pages, [3, 99]) }],
      host,
      parent: { id: h1.id, path: 'd1.snap' },
    });
    const chain = readSnapshotChain(join(dir, 'd2.snap'), { verifyMemory: true });
    expect(chain.map((f) => f.header.kind)).toEqual(['full', 'diff', 'diff']);
    const [mem] = mapSnapshotMemory(chain);
    try {
      expect(Buffer.from(mem.bytes).equals(Buffer.from(v2))).toBe(true);
    } finally {
      mem.close();
    }
    const merged = mergeSnapshots(join(dir, 'd2.snap'), join(dir, 'merged.snap'));
    expect(merged.kind).toBe('full');
    const m = readSnapshotFile(join(dir, 'merged.snap'));
    expect(m.state).toEqual({ n: 2 });
    expect(m.header.id).toBe(chain[2].header.id); // diffs on top of d2 find their parent in the merged file
    const [mm] = mapSnapshotMemory([m]);
    try {
      expect(Buffer.from(mm.bytes).equals(Buffer.from(v2))).toBe(true);
    } finally {
      mm.close();
    }
  });

  it('refuses a diff whose parent was replaced', () => {
    const bytes = ram(8);
    const base = full(join(dir, 'base.snap'), bytes);
    writeSnapshotFile(join(dir, 'd.snap'), {
      machine: 'test',
      state: {},
      regions: [{ guestPhysAddr: 0n, bytes, dirty: bitmapOf(8, [1]) }],
      host,
      parent: { id: base.id, path: 'base.snap' },
    });
    full(join(dir, 'base.snap'), bytes); // a new snapshot under the same name
    expectSnapshotError(() => readSnapshotChain(join(dir, 'd.snap')), 'ERR_KVM_SNAPSHOT_MISMATCH', /not /);
    rmSync(join(dir, 'base.snap'));
    expectSnapshotError(() => readSnapshotChain(join(dir, 'd.snap')), 'ERR_KVM_SNAPSHOT_MISMATCH', /cannot be read/);
  });

  it('leaves no temporary file when writing fails', () => {
    expect(() =>
      writeSnapshotFile(join(dir, 'x.snap'), { machine: 'test', state: { f: () => 0 }, regions: [], host }),
    ).toThrow(TypeError);
    expect(() => full(join(dir, 'missing', 'x.snap'), ram(1))).toThrow(expect.objectContaining({ code: 'ENOENT' }));
    expect(readdirSync(dir)).toEqual([]);
  });

  it('refuses bad writer options', () => {
    expect(() => full(join(dir, 'x.snap'), new Uint8Array(100))).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() =>
      writeSnapshotFile(join(dir, 'x.snap'), {
        machine: 'test',
        state: {},
        regions: [{ guestPhysAddr: 0n, bytes: ram(2) }],
        host,
        parent: { id: 'p', path: 'p.snap' },
      }),
    ).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' })); // a diff needs dirty bitmaps
  });
});

describe('readSnapshotFile refuses what it cannot restore', () => {
  let path: string;
  let good: Buffer;
  beforeEach(() => {
    path = join(dir, 'g.snap');
    full(path, ram(16), { checksumMemory: true });
    good = readFileSync(path);
  });

  it('a file that is not a snapshot', () => {
    writeFileSync(path, 'hello world, this is not a snapshot file at all, no no no');
    expectSnapshotError(() => readSnapshotFile(path), 'ERR_KVM_SNAPSHOT_CORRUPT', /magic/);
    writeFileSync(path, '');
    expectSnapshotError(() => readSnapshotFile(path), 'ERR_KVM_SNAPSHOT_CORRUPT');
  });

  it('a truncated file, wherever it is cut', () => {
    for (const cut of [10, 56, 4096, good.length - 1, good.length - 200]) {
      writeFileSync(path, good.subarray(0, cut));
      const e = expectSnapshotError(
        () => readSnapshotFile(path),
        cut < 56 ? 'ERR_KVM_SNAPSHOT_TRUNCATED' : 'ERR_KVM_SNAPSHOT_TRUNCATED',
      );
      expect(e.message).toContain(path);
    }
  });

  it('a newer format version', () => {
    const b = Buffer.from(good);
    b.writeUInt32LE(SNAPSHOT_FORMAT_VERSION + 1, 8);
    writeFileSync(path, b);
    expectSnapshotError(() => readSnapshotFile(path), 'ERR_KVM_SNAPSHOT_VERSION', /newer than this kvm-rx reads/);
  });

  it('a changed header or state byte (checksums)', () => {
    const b = Buffer.from(good);
    const headerAt = Number(b.readBigUInt64LE(16));
    b[headerAt + 20] ^= 1;
    writeFileSync(path, b);
    expectSnapshotError(() => readSnapshotFile(path), 'ERR_KVM_SNAPSHOT_CORRUPT', /header checksum/);
    const c = Buffer.from(good);
    c[4096 + 3] ^= 1;
    writeFileSync(path, c);
    expectSnapshotError(() => readSnapshotFile(path), 'ERR_KVM_SNAPSHOT_CORRUPT', /state checksum/);
  });

  it('a changed memory byte, with verifyMemory', () => {
    const file = readSnapshotFile(path);
    const b = Buffer.from(good);
    b[(file.regions[0].offset as number) + PAGE + 1] ^= 0xff;
    writeFileSync(path, b);
    expect(() => readSnapshotFile(path)).not.toThrow(); // memory is not read by default
    expectSnapshotError(() => readSnapshotFile(path, { verifyMemory: true }), 'ERR_KVM_SNAPSHOT_CORRUPT', /region 0/);
  });

  it('random damage: a SnapshotError, or (damage in memory) a file that reads', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.record({ kind: fc.constant('cut' as const), at: fc.nat({ max: good.length - 1 }) }),
          fc.record({
            kind: fc.constant('flip' as const),
            at: fc.nat({ max: good.length - 1 }),
            bits: fc.integer({ min: 1, max: 255 }),
          }),
          fc.record({ kind: fc.constant('garbage' as const), bytes: fc.uint8Array({ maxLength: 300 }) }),
        ),
        (damage) => {
          let b: Buffer;
          if (damage.kind === 'cut') b = good.subarray(0, damage.at);
          else if (damage.kind === 'flip') {
            b = Buffer.from(good);
            b[damage.at] ^= damage.bits;
          } else b = Buffer.concat([Buffer.from('KVMRXSNP'), Buffer.from(damage.bytes)]);
          writeFileSync(path, b);
          try {
            readSnapshotFile(path, { verifyMemory: true });
          } catch (e) {
            expect(e).toBeInstanceOf(SnapshotError);
            return;
          }
          // Only a flip in the padding after the state or in a zero-page hole can go unnoticed.
          expect(damage.kind).toBe('flip');
        },
      ),
      { numRuns: 300 },
    );
  });

  it('a header that is valid JSON with a checksum but not a snapshot header', () => {
    const b = Buffer.from(good);
    const headerAt = Number(b.readBigUInt64LE(16));
    const header = JSON.parse(b.subarray(headerAt, headerAt + b.readUInt32LE(12)).toString()) as Record<
      string,
      unknown
    >;
    for (const change of [
      { kind: 'diff' },
      { memory: [{ guestPhysAddr: '0x0', size: 4096, offset: 12345 }] },
      { memory: [{ guestPhysAddr: '0x0', size: 1 << 40, offset: 8192 }] },
      { state: { offset: 4096, length: 1e12, sha256: 'x' } },
      { host: null },
    ]) {
      const text = Buffer.from(JSON.stringify({ ...header, ...change }));
      const next = Buffer.concat([b.subarray(0, headerAt), text]);
      next.writeUInt32LE(text.length, 12);
      createHash('sha256').update(text).digest().copy(next, 24);
      writeFileSync(path, next);
      let caught: unknown;
      try {
        readSnapshotFile(path);
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(SnapshotError);
    }
  });
});

describe('snapshotHost / checkSnapshotHost', () => {
  const entry = (fn: number, index: number, regs: Partial<KvmCpuidEntry2>): KvmCpuidEntry2 => ({
    function: fn,
    index,
    flags: 0,
    eax: 0,
    ebx: 0,
    ecx: 0,
    edx: 0,
    ...regs,
  });

  it('records the vendor, signature and feature registers of the CPUID KVM offers', () => {
    const vendor = Buffer.from('GenuineIntel', 'latin1');
    const h = snapshotHost(
      [
        entry(0, 0, { ebx: vendor.readUInt32LE(0), edx: vendor.readUInt32LE(4), ecx: vendor.readUInt32LE(8) }),
        entry(1, 0, { eax: 0x906ea, ecx: 0x8000_0001, edx: 0xff }),
        entry(7, 0, { ebx: 0x21 }),
      ],
      'model name\t: Test Xeon\n',
    );
    expect(h).toMatchObject({ vendor: 'GenuineIntel', signature: 0x906ea, model: 'Test Xeon' });
    expect(h.features).toMatchObject({
      '0x1.0.ecx': 0x8000_0001,
      '0x1.0.edx': 0xff,
      '0x7.0.ebx': 0x21,
      '0x7.0.ecx': 0,
    });
  });

  it('hostOfKvm: what snapshotHost makes of KVM_GET_SUPPORTED_CPUID, asked once per backend, frozen', () => {
    const backend = new MockBackend();
    const kvm = new Kvm({ backend });
    const spy = jest.spyOn(kvm, 'getSupportedCpuid');
    const h = hostOfKvm(kvm);
    expect(h).toEqual(snapshotHost(kvm.getSupportedCpuid(KVM_MAX_CPUID_ENTRIES).entries));
    const other = new Kvm({ backend });
    expect(hostOfKvm(other)).toBe(h);
    expect(hostOfKvm(kvm)).toBe(h);
    expect(spy).toHaveBeenCalledTimes(2); // once for hostOfKvm, once above
    expect(Object.isFrozen(h) && Object.isFrozen(h.features)).toBe(true);
    const third = new Kvm({ backend: new MockBackend() });
    expect(hostOfKvm(third)).not.toBe(h);
    third.close();
    kvm.close();
    other.close();
  });

  it('refuses another vendor and features this host does not offer, naming them', () => {
    const path = join(dir, 'h.snap');
    full(path, ram(1));
    const file = readSnapshotFile(path);
    expect(() => checkSnapshotHost(file, { ...host, features: { '0x1.0.ecx': 0x3, '0x7.0.ebx': 0x21 } })).not.toThrow();
    expectSnapshotError(
      () => checkSnapshotHost(file, { ...host, vendor: 'GenuineIntel' }),
      'ERR_KVM_SNAPSHOT_HOST',
      /AuthenticAMD.*GenuineIntel/,
    );
    expectSnapshotError(
      () => checkSnapshotHost(file, { ...host, features: { '0x1.0.ecx': 0x1, '0x7.0.ebx': 0x1 } }),
      'ERR_KVM_SNAPSHOT_HOST',
      /0x7\.0\.ebx bits 0x20/,
    );
  });
});

it('copies of a snapshot restore alike (no path inside a full snapshot)', () => {
  const path = join(dir, 'a.snap');
  full(path, ram(4));
  copyFileSync(path, join(dir, 'b.snap'));
  expect(readSnapshotFile(join(dir, 'b.snap')).state).toEqual(state);
  truncateSync(join(dir, 'b.snap'), 100);
  expectSnapshotError(() => readSnapshotFile(join(dir, 'b.snap')), 'ERR_KVM_SNAPSHOT_TRUNCATED');
});
