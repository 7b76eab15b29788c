/**
 * `Sandbox` on real KVM with the guest SDK's example guest (guest/examples/hello.c, built by
 * scripts/sandbox-guest.sh): the exports, values both ways, host functions, output, state kept
 * between calls, typed errors, and the guests that misbehave: a fault, a triple fault, an endless
 * loop stopped by the time limit, a guest that gives up, one that corrupts the call area.
 */
import { GuestError, Sandbox, SandboxError } from '../../src/vmm/sandbox/index';
import { SANDBOX_LAYOUT } from '../../src/vmm/sandbox/abi';
import { memoryOf } from '../../src/vmm/sandbox/sandbox';
import { describeSandbox, rawElf } from '../helpers/sandbox-guest';

describeSandbox('Sandbox with the example guest', 'hello', (image) => {
  let sandbox: Sandbox;
  const output: string[] = [];
  const hostCalls: unknown[][] = [];

  beforeAll(async () => {
    sandbox = await Sandbox.create(image, {
      memSize: 16 << 20,
      hostFunctions: {
        double: (...args) => {
          hostCalls.push(args);
          return 2 * (args[0] as number);
        },
      },
      output: (b) => output.push(Buffer.from(b).toString()),
    });
  });
  afterAll(() => sandbox?.close());

  it('boots to its ready point and lists the exports', () => {
    expect([...sandbox.exports].sort()).toEqual(
      ['abort', 'add', 'count', 'crash', 'echo', 'greet', 'nop', 'scribble', 'spin', 'sum', 'twice'].sort(),
    );
  });

  it('calls exports with numbers, strings and bytes, inside the VM', async () => {
    await expect(sandbox.call('add', 2, 3)).resolves.toBe(5);
    await expect(sandbox.call('add', 0.5, -2.25)).resolves.toBe(-1.75);
    await expect(sandbox.call('sum', Uint8Array.of(1, 2, 3, 250))).resolves.toBe(256n);
    await expect(sandbox.call('greet', 'wörld')).resolves.toBe('hello, wörld');
    expect(output.join('')).toContain('hello, wörld\n');
    await expect(sandbox.call('nop')).resolves.toBeUndefined();
  });

  it('returns every kind of value unchanged (echo)', async () => {
    const values = [
      null,
      true,
      false,
      0,
      -1.5,
      Number.MAX_VALUE,
      2n ** 63n - 1n,
      -(2n ** 63n),
      '',
      'x'.repeat(100_000),
    ];
    for (const v of values) await expect(sandbox.call('echo', v)).resolves.toEqual(v);
    await expect(sandbox.call('echo', { a: [1, 'two', null, { b: false }] })).resolves.toEqual({
      a: [1, 'two', null, { b: false }],
    });
    await expect(sandbox.call('echo', [1, 2, 3])).resolves.toEqual([1, 2, 3]);
    const bytes = Uint8Array.from({ length: 70_000 }, (_, i) => i * 7);
    await expect(sandbox.call('echo', bytes)).resolves.toEqual(bytes);
    await expect(sandbox.call('echo')).resolves.toBeUndefined();
  });

  it('lets the guest call host functions by name', async () => {
    hostCalls.length = 0;
    await expect(sandbox.call('twice', 21)).resolves.toBe(42);
    expect(hostCalls).toEqual([[21]]);
  });

  it('keeps the guest state between calls', async () => {
    const a = (await sandbox.call('count')) as bigint;
    await expect(sandbox.call('count')).resolves.toBe(a + 1n);
  });

  it('rejects a guest error with GuestError carrying its name and message, and stays usable', async () => {
    const e = await sandbox.call('add', 'x').catch((err: unknown) => err);
    expect(e).toBeInstanceOf(GuestError);
    expect(e).toMatchObject({
      code: 'ERR_SANDBOX_GUEST_ERROR',
      guestName: 'TypeError',
      message: 'add(x, y) takes two numbers',
      poisoned: false,
    });
    await expect(sandbox.call('add', 1, 1)).resolves.toBe(2);
  });

  it('checks calls before the guest runs', async () => {
    await expect(sandbox.call('nope')).rejects.toMatchObject({ code: 'ERR_SANDBOX_NO_SUCH_FUNCTION' });
    await expect(sandbox.call('echo', (() => 1) as unknown as number)).rejects.toMatchObject({
      code: 'ERR_INVALID_ARG_TYPE',
    });
    await expect(sandbox.call('echo', 2n ** 64n)).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    await expect(sandbox.call('echo', new Uint8Array(2 << 20))).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    await expect(sandbox.callWith({ timeLimitMs: -1 }, 'nop')).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    const aborted = AbortSignal.abort();
    await expect(sandbox.callWith({ signal: aborted }, 'nop')).rejects.toMatchObject({
      code: 'ERR_SANDBOX_ABORTED',
      poisoned: false,
    });
    await expect(sandbox.call('add', 2, 2)).resolves.toBe(4);
  });

  it('refuses a second call while one runs', async () => {
    const s = await Sandbox.create(image, {
      memSize: 16 << 20,
      hostFunctions: { double: () => new Promise((r) => setTimeout(() => r(1), 20)) },
    });
    try {
      const first = s.call('twice', 1);
      await expect(s.call('nop')).rejects.toMatchObject({ code: 'ERR_SANDBOX_BUSY' });
      await expect(first).resolves.toBe(1);
    } finally {
      s.close();
    }
  });
});

describeSandbox('Sandbox: guests that misbehave', 'hello', (image) => {
  const fresh = () => Sandbox.create(image, { memSize: 16 << 20 });

  it('reports a page fault with its vector, address and RIP, and poisons the sandbox', async () => {
    await using s = await fresh();
    const e = (await s.call('crash').catch((err: unknown) => err)) as SandboxError;
    expect(e).toBeInstanceOf(SandboxError);
    expect(e).toMatchObject({ code: 'ERR_SANDBOX_FAULT', poisoned: true });
    expect(e.fault).toMatchObject({ vector: 14, name: '#PF page fault', cr2: 8n, cs: 0x23 });
    expect(e.fault!.errorCode & 4n).toBe(4n); // a user-mode access
    expect(s.poisoned).toBe(e);
    await expect(s.call('nop')).rejects.toMatchObject({ code: 'ERR_SANDBOX_POISONED', cause: e });
  });

  it('stops an endless loop at the time limit (the vCPU is kicked)', async () => {
    await using s = await fresh();
    const t0 = performance.now();
    await expect(s.callWith({ timeLimitMs: 100 }, 'spin')).rejects.toMatchObject({
      code: 'ERR_SANDBOX_TIMEOUT',
      poisoned: true,
    });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(99);
    await expect(s.call('nop')).rejects.toMatchObject({ code: 'ERR_SANDBOX_POISONED' });
  });

  it('reports a triple fault (an IDT broken from the host)', async () => {
    await using s = await fresh();
    memoryOf(s).fill(0, SANDBOX_LAYOUT.idt, SANDBOX_LAYOUT.idt + 0x200); // every gate not present
    await expect(s.call('crash')).rejects.toMatchObject({ code: 'ERR_SANDBOX_TRIPLE_FAULT', poisoned: true });
  });

  it('rejects with the message of a guest that gives up', async () => {
    await using s = await fresh();
    await expect(s.call('abort')).rejects.toMatchObject({
      code: 'ERR_SANDBOX_GUEST_ABORT',
      message: 'the guest aborted: giving up on purpose',
      poisoned: true,
    });
  });

  it('rejects a return whose call-area fields are out of range', async () => {
    // scribble writes its argument over the header (at 0x200000) and returns: status 7
    const header = new Uint8Array(0x30);
    const v = new DataView(header.buffer);
    v.setUint32(0, 0x5852564b, true);
    v.setUint32(0x20, 7, true);
    await using s = await fresh();
    await expect(s.call('scribble', header)).rejects.toMatchObject({
      code: 'ERR_SANDBOX_BAD_CALL_AREA',
      poisoned: true,
    });
    v.setUint32(0x20, 0, true);
    v.setUint32(0x24, 0x7fff_ffff, true); // out_len
    await using s2 = await fresh();
    await expect(s2.call('scribble', header)).rejects.toMatchObject({ code: 'ERR_SANDBOX_BAD_CALL_AREA' });
  });

  it('refuses images that are not sandbox guests before anything runs', async () => {
    await expect(Sandbox.create(Uint8Array.of(1, 2, 3))).rejects.toMatchObject({ code: 'ERR_SANDBOX_BAD_IMAGE' });
    const low = rawElf(Uint8Array.of(0xeb, 0xfe));
    new DataView(low.buffer).setBigUint64(0x58, 0x1000n, true); // p_paddr below the image base
    new DataView(low.buffer).setBigUint64(0x18, 0x1078n, true);
    await expect(Sandbox.create(low)).rejects.toMatchObject({ code: 'ERR_SANDBOX_BAD_IMAGE' });
    await expect(
      Sandbox.create(rawElf(Uint8Array.of(0xeb, 0xfe), 20 << 20), { memSize: 16 << 20 }),
    ).rejects.toMatchObject({
      code: 'ERR_SANDBOX_BAD_IMAGE',
    });
    await expect(Sandbox.create(image, { memSize: 3 << 20 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
  });

  it('stops a guest that never gets ready at the boot time limit', async () => {
    await expect(Sandbox.create(rawElf(Uint8Array.of(0xeb, 0xfe)), { bootTimeLimitMs: 50 })).rejects.toMatchObject({
      code: 'ERR_SANDBOX_TIMEOUT',
    });
  });
});
