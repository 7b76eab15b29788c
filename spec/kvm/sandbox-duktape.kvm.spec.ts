/**
 * JavaScript inside a micro-VM: Debian's Duktape (duktape.c from duktape-dev, unchanged) built as
 * a sandbox guest (guest/duktape/duktape-guest.c, scripts/sandbox-guest.sh duktape). `eval`
 * evaluates in the guest at CPL 3 and returns the value as JSON; script errors come back as
 * GuestError with the script's message.
 */
import { GuestError, Sandbox } from '../../src/vmm/sandbox/index';
import { describeSandbox } from '../helpers/sandbox-guest';

describeSandbox('Sandbox: Duktape inside the VM', 'duktape', (image) => {
  let sandbox: Sandbox;
  const output: string[] = [];

  beforeAll(async () => {
    sandbox = await Sandbox.create(image, {
      hostFunctions: {
        add: (args) => (args as number[]).reduce((a, b) => a + b, 0),
        fail: () => {
          throw new RangeError('refused by the host');
        },
        later: () => new Promise((r) => setTimeout(() => r({ late: true }), 5)),
      },
      output: (b) => output.push(Buffer.from(b).toString()),
    });
  });
  afterAll(() => sandbox?.close());

  it("evaluates '6*7' inside the VM: 42", async () => {
    await expect(sandbox.call('eval', '6*7')).resolves.toBe(42);
    expect(sandbox.exports).toEqual(expect.arrayContaining(['eval', 'call']));
  });

  it('returns JSON values and takes JSON arguments', async () => {
    await expect(sandbox.call('eval', '({ a: [1, "two", null], b: { c: true } })')).resolves.toEqual({
      a: [1, 'two', null],
      b: { c: true },
    });
    await expect(sandbox.call('eval', '"a" + "b"')).resolves.toBe('ab');
    await expect(sandbox.call('eval', 'undefined')).resolves.toBeUndefined();
    await sandbox.call(
      'eval',
      'function total(o) { return { sum: o.xs.reduce(function (a, b) { return a + b; }, 0), n: o.xs.length }; }',
    );
    await expect(sandbox.call('call', 'total', { xs: [1, 2, 3.5] })).resolves.toEqual({ sum: 6.5, n: 3 });
    await expect(sandbox.call('call', 'Math.max', 1)).rejects.toMatchObject({ guestName: 'TypeError' });
  });

  it('computes in the guest: the standard library works (math, dates, regexps, JSON)', async () => {
    await expect(
      sandbox.call(
        'eval',
        '[Math.sqrt(2), (1.005).toFixed(2), new Date(0).toISOString(), "a-b-c".replace(/-/g, "+"), JSON.stringify({ x: [1] }), (255).toString(16)]',
      ),
    ).resolves.toEqual([Math.SQRT2, (1.005).toFixed(2), '1970-01-01T00:00:00.000Z', 'a+b+c', '{"x":[1]}', 'ff']);
    await expect(
      sandbox.call('eval', 'function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); } fib(20)'),
    ).resolves.toBe(6765);
  });

  it('turns script errors into GuestError with the script message', async () => {
    const e = await sandbox.call('eval', 'throw new TypeError("bad input: " + 6 * 7)').catch((err: unknown) => err);
    expect(e).toBeInstanceOf(GuestError);
    expect(e).toMatchObject({
      code: 'ERR_SANDBOX_GUEST_ERROR',
      guestName: 'TypeError',
      message: 'bad input: 42',
      poisoned: false,
    });
    await expect(sandbox.call('eval', 'nosuch.x')).rejects.toMatchObject({ guestName: 'ReferenceError' });
    await expect(sandbox.call('eval', '}{')).rejects.toMatchObject({ guestName: 'SyntaxError' });
    await expect(sandbox.call('eval', 'throw "plain"')).rejects.toMatchObject({ guestName: 'Error', message: 'plain' });
    await expect(sandbox.call('eval', 'var o = {}; o.o = o; o')).rejects.toMatchObject({ guestName: 'TypeError' });
    await expect(sandbox.call('eval', '1 + 1')).resolves.toBe(2); // still usable
  });

  it('prints to the output callback and calls host functions from JavaScript', async () => {
    output.length = 0;
    await expect(sandbox.call('eval', 'print("sum", 1 + 2); console.log([1]); host("add", 20, 22)')).resolves.toBe(42);
    expect(output).toEqual(['sum 3\n', '1\n']);
    await expect(sandbox.call('eval', 'try { host("fail") } catch (e) { e.name + ": " + e.message }')).resolves.toBe(
      'RangeError: refused by the host',
    );
    await expect(sandbox.call('eval', 'host("later").late')).resolves.toBe(true);
    await expect(sandbox.call('eval', 'host("nope")')).rejects.toMatchObject({ guestName: 'ReferenceError' });
  });

  it('stops an infinite loop at the time limit', async () => {
    await using s = await Sandbox.create(image);
    await expect(s.callWith({ timeLimitMs: 200 }, 'eval', 'for (;;) {}')).rejects.toMatchObject({
      code: 'ERR_SANDBOX_TIMEOUT',
      poisoned: true,
    });
  });

  it('bounds memory: a script that allocates without end gets an error from inside the guest', async () => {
    await using s = await Sandbox.create(image, { memSize: 8 << 20 });
    await expect(
      s.call('eval', 'var a = []; for (;;) a.push(new Array(1000).join("x") + a.length)'),
    ).rejects.toMatchObject({ code: 'ERR_SANDBOX_GUEST_ERROR', message: 'alloc failed' }); // Duktape's out-of-memory error
    await expect(s.call('eval', 'a = null; 6*7')).resolves.toBe(42);
  });
});
