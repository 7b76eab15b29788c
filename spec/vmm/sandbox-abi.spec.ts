/**
 * The sandbox ABI without KVM: guest/sdk/kvmrx.h and src/vmm/sandbox/abi.ts agree; values round-trip
 * through the call-area encoding, and any bytes a guest may write decode to a value or a
 * SandboxError (ERR_SANDBOX_BAD_VALUE), never another exception; the page tables keep the ring-0
 * structures away from CPL 3.
 */
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  AREA,
  SANDBOX_ABI_VERSION,
  SANDBOX_FAULT_PORT,
  SANDBOX_LAYOUT as L,
  SANDBOX_MAGIC,
  SandboxExit,
  ValueTag,
} from '../../src/vmm/sandbox/abi';
import { SandboxError } from '../../src/vmm/sandbox/errors';
import { sandboxSystemPages } from '../../src/vmm/sandbox/layout';
import { DecodedError, decodeValue, encodeValue } from '../../src/vmm/sandbox/values';

const header = readFileSync(join(__dirname, '../../guest/sdk/kvmrx.h'), 'utf8');
function define(name: string): number {
  const m = new RegExp(`^#define ${name} (0x[0-9a-f]+|\\d+)u?l?u?\\b`, 'm').exec(header);
  if (m === null) throw new Error(`kvmrx.h has no #define ${name}`);
  return Number(m[1]);
}

describe('sandbox ABI: kvmrx.h and abi.ts', () => {
  it('have the same constants', () => {
    expect(define('KVMRX_ABI_VERSION')).toBe(SANDBOX_ABI_VERSION);
    expect(define('KVMRX_MAGIC')).toBe(SANDBOX_MAGIC);
    expect(define('KVMRX_TLS')).toBe(L.tls);
    expect(define('KVMRX_AREA')).toBe(L.area);
    expect(define('KVMRX_IN')).toBe(L.in);
    expect(define('KVMRX_IN_SIZE')).toBe(L.inSize);
    expect(define('KVMRX_OUT')).toBe(L.out);
    expect(define('KVMRX_OUT_SIZE')).toBe(L.outSize);
    expect(define('KVMRX_IMAGE_BASE')).toBe(L.imageBase);
    expect(define('KVMRX_STACK_SIZE')).toBe(L.stackSize);
    expect(define('KVMRX_DOORBELL')).toBe(L.doorbell);
    expect(define('KVMRX_FAULT_PORT')).toBe(SANDBOX_FAULT_PORT);
    expect(define('KVMRX_EXIT_READY')).toBe(SandboxExit.ready);
    expect(define('KVMRX_EXIT_RETURN')).toBe(SandboxExit.return);
    expect(define('KVMRX_EXIT_HOSTCALL')).toBe(SandboxExit.hostCall);
    expect(define('KVMRX_EXIT_OUTPUT')).toBe(SandboxExit.output);
    expect(define('KVMRX_EXIT_ABORT')).toBe(SandboxExit.abort);
    for (const [name, tag] of Object.entries(ValueTag))
      expect([name, define(`KVMRX_T_${name.toUpperCase()}`)]).toEqual([name, tag]);
    expect(L.in).toBe(L.area + 0x1000);
    expect(L.out).toBe(L.in + L.inSize);
  });

  it('has the header fields at the offsets kvmrx.h comments give', () => {
    const offsets = new Map<string, number>();
    for (const m of header.matchAll(/^\s+\w+ (\w+);\s+\/\* (0x[0-9a-f]+)/gm)) offsets.set(m[1], Number(m[2]));
    const expected: Record<string, number> = {
      magic: AREA.magic,
      abi: AREA.abi,
      mem_size: AREA.memSize,
      op: AREA.op,
      func: AREA.func,
      argc: AREA.argc,
      in_len: AREA.inLen,
      status: AREA.status,
      out_len: AREA.outLen,
      out_off: AREA.outOff,
      hostfn: AREA.hostFn,
      out_count: AREA.outCount,
      now_ms: AREA.nowMs,
    };
    for (const [field, at] of Object.entries(expected)) expect([field, offsets.get(field)]).toEqual([field, at]);
  });
});

describe('sandbox values', () => {
  const buf = new Uint8Array(1 << 16);
  const view = new DataView(buf.buffer);
  const json = fc.jsonValue({ maxDepth: 3 }).filter((v) => typeof v === 'object' && v !== null && !Object.is(v, -0));

  it('round-trip every kind of value', () => {
    const value = fc.oneof(
      fc.constant(undefined),
      fc.constant(null),
      fc.boolean(),
      fc.double(),
      fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
      fc.string({ unit: 'grapheme', maxLength: 40 }),
      fc.uint8Array({ maxLength: 64 }),
      json,
    );
    fc.assert(
      fc.property(fc.array(value, { maxLength: 8 }), (values) => {
        let at = 0;
        for (const v of values) at = encodeValue(buf, view, at, buf.length, v, 'v');
        let r = 0;
        for (const v of values) {
          const { value: got, next } = decodeValue(buf, view, r, at);
          // JSON values travel as JSON text: a -0 inside one comes back as 0, as JSON.stringify makes it.
          const isJson = typeof v === 'object' && v !== null && !(v instanceof Uint8Array);
          expect(got).toEqual(isJson ? JSON.parse(JSON.stringify(v)) : v);
          expect(next % 8).toBe(0);
          r = next;
        }
        expect(r).toBe(at);
      }),
    );
  });

  it('decode any guest bytes to a value or ERR_SANDBOX_BAD_VALUE', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 0, maxLength: 96 }),
        fc.integer({ min: 0, max: 9 }),
        fc.nat(100),
        (bytes, tag, len) => {
          buf.fill(0, 0, 128);
          buf.set(bytes);
          if (bytes.length >= 8 && tag < 9) {
            view.setUint32(0, tag, true); // a known tag half of the time
            view.setUint32(4, len, true);
          }
          try {
            const { value, next } = decodeValue(buf, view, 0, bytes.length);
            expect(next).toBeLessThanOrEqual(bytes.length);
            if (value instanceof DecodedError) expect(typeof value.message).toBe('string');
          } catch (e) {
            expect(e).toBeInstanceOf(SandboxError);
            expect((e as SandboxError).code).toBe('ERR_SANDBOX_BAD_VALUE');
          }
        },
      ),
    );
  });

  it('refuse values that cannot cross, before writing', () => {
    expect(() => encodeValue(buf, view, 0, buf.length, 2n ** 63n, 'x')).toThrow(
      expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }),
    );
    expect(() => encodeValue(buf, view, 0, buf.length, Symbol('s'), 'x')).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => encodeValue(buf, view, 0, buf.length, new Uint16Array(2), 'x')).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => encodeValue(buf, view, 0, buf.length, cyclic, 'x')).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => encodeValue(buf, view, 0, 16, 'too long for 16 bytes', 'x')).toThrow(
      expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }),
    );
  });
});

describe('sandbox page tables', () => {
  const pages = new Map(sandboxSystemPages(64 << 20));
  const pt = new DataView(pages.get(L.pt)!.buffer);
  const pte = (addr: number) => pt.getBigUint64(8 * (addr >>> 12), true);

  it('leave page 0 unmapped and the ring-0 structures supervisor-only', () => {
    expect(pte(0)).toBe(0n);
    for (const a of [
      L.gdt,
      L.idt,
      L.tss,
      L.faultRecord,
      L.pml4,
      L.pdpt,
      L.pd,
      L.pt,
      L.ring0Code,
      L.ring0StackTop - 0x1000,
      L.doorbellPd,
    ]) {
      expect([a, pte(a) & 7n]).toEqual([a, 3n]); // present, writable, not user
    }
    expect(pte(L.tls) & 7n).toBe(7n);
    expect(pte(0x20000)).toBe(0n); // the rest of the first 2 MiB is not mapped
  });

  it('map RAM and the doorbell for CPL 3, nothing between', () => {
    const pd = new DataView(pages.get(L.pd)!.buffer);
    expect(pd.getBigUint64(8 * 1, true)).toBe(0x20_0000n | 0x87n); // the call area
    expect(pd.getBigUint64(8 * 31, true)).toBe((31n << 21n) | 0x87n); // the last 2 MiB of 64 MiB
    expect(pd.getBigUint64(8 * 32, true)).toBe(0n);
    const dpd = new DataView(pages.get(L.doorbellPd)!.buffer);
    expect(dpd.getBigUint64(0, true)).toBe(BigInt(L.doorbell) | 0x87n);
    expect(dpd.getBigUint64(8, true)).toBe(0n);
  });
});
