/**
 * The worker ↔ main-thread protocol: the layout handed to the addon's fast path, and errors as
 * they cross threads (structured-cloned, as a MessagePort and piscina clone them).
 */
import { nativeBackend } from '../../src/backend/native';
import { KvmError, KvmRangeError, KvmTypeError, KvmClosedError } from '../../src/abi/errors';
import { UnhandledExitError, reviveError, serializeError } from '../../src/runtime/errors';
import {
  CONTROL_BYTES,
  ControlWord,
  RECORD_BYTES,
  RECORD_DATA_BYTES,
  RUN_FAST_LAYOUT_SLOTS,
  RecordField,
  THREAD_ID_SLOT,
  runFastLayout,
} from '../../src/runtime/protocol';
import { makeExit } from '../../src/testing/exits';

/** `e` after the trip a worker's error makes: serialized, structured-cloned, revived. */
function crossThreads<T extends Error = Error>(e: unknown): T {
  const revived: Error = reviveError(structuredClone(serializeError(e)));
  return revived as T;
}

describe('protocol', () => {
  it("builds runFast's layout in the addon's slot order", () => {
    expect([...RUN_FAST_LAYOUT_SLOTS]).toEqual(nativeBackend().runPostedLayout());
    const layout = runFastLayout();
    expect(layout.length).toBe(RUN_FAST_LAYOUT_SLOTS.length);
    const at = (name: (typeof RUN_FAST_LAYOUT_SLOTS)[number]) => layout[RUN_FAST_LAYOUT_SLOTS.indexOf(name)];
    expect(at('ringWrite')).toBe(ControlWord.ringWrite);
    expect(at('exitKind')).toBe(RecordField.exitKind);
    expect(at('dataMax')).toBe(RECORD_DATA_BYTES);
  });

  it('keeps control words, the thread id and record fields inside their blocks', () => {
    const words = Object.values(ControlWord);
    expect(new Set(words).size).toBe(words.length);
    for (const w of words) expect(w * 4 + 4).toBeLessThanOrEqual(THREAD_ID_SLOT * 8); // below the thread id
    expect(THREAD_ID_SLOT * 8 + 8).toBeLessThanOrEqual(CONTROL_BYTES);
    expect(RecordField.data + RECORD_DATA_BYTES).toBe(RECORD_BYTES);
  });
});

describe('errors across threads', () => {
  it('a KvmError comes back as a KvmError with code, errno, syscall, request, message and stack', () => {
    const original = KvmError.fromCode('EEXIST', 'ioctl', 'KVM_CREATE_VCPU');
    const e = crossThreads<KvmError>(original);
    expect(e).toBeInstanceOf(KvmError);
    expect(e).toMatchObject({
      name: 'KvmError',
      code: 'EEXIST',
      errno: -17,
      syscall: 'ioctl',
      request: 'KVM_CREATE_VCPU',
    });
    expect(e.message).toBe(original.message);
    expect(e.stack).toBe(original.stack);
  });

  it.each([
    ['KvmTypeError', () => new KvmTypeError('ERR_INVALID_ARG_TYPE', 'bad'), TypeError],
    ['KvmRangeError', () => new KvmRangeError('ERR_OUT_OF_RANGE', 'far'), RangeError],
    ['KvmClosedError', () => new KvmClosedError('VmFd'), KvmClosedError],
    ['TypeError', () => Object.assign(new TypeError('t'), { code: 'ERR_X' }), TypeError],
    ['SyntaxError', () => new SyntaxError('s'), SyntaxError],
  ])('a %s keeps its class and code', (_name, make, Class) => {
    const original = make() as Error & { code?: string };
    const e = crossThreads<Error & { code?: string }>(original);
    expect(e).toBeInstanceOf(Class);
    expect(Object.getPrototypeOf(e)).toBe(Object.getPrototypeOf(original));
    expect([e.name, e.code, e.message]).toEqual([original.name, original.code, original.message]);
  });

  it('an UnhandledExitError carries a copy of the exit and the RIP', () => {
    const exit = makeExit.ioOut(0x3f8, [0x41]);
    const original = new UnhandledExitError(exit);
    original.rip = 0x1004n;
    const e = crossThreads<UnhandledExitError>(original);
    expect(e).toBeInstanceOf(UnhandledExitError);
    expect(e.rip).toBe(0x1004n);
    expect(e.exit).toEqual({ kind: 'IoOut', port: 0x3f8, size: 1, count: 1, data: Uint8Array.of(0x41) });
    expect(e.exit).not.toBe(exit);
  });

  it('an error of a class of its own comes back as an Error with its name; a thrown string as an Error', () => {
    class DeviceError extends Error {
      readonly code = 'EDEVICE';
      constructor() {
        super('device broke');
        this.name = 'DeviceError';
      }
    }
    const e = crossThreads<Error & { code?: string }>(new DeviceError());
    expect(e).toBeInstanceOf(Error);
    expect([e.name, e.code, e.message]).toEqual(['DeviceError', 'EDEVICE', 'device broke']);
    const s = crossThreads('just a string');
    expect(s).toBeInstanceOf(Error);
    expect(s.message).toBe('just a string');
  });
});
