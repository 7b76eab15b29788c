/**
 * examples/sandbox-64.ts on the real kernel: a 64-bit guest (long mode from `enterLongMode`) sums
 * 1..n past 2^32, its doorbells are counted through `fromIoEvent` without exits, and only its two
 * other exits reach the pipeline.
 */
import { runSandbox } from '../../examples/sandbox-64';
import { describeKvm } from '../helpers/kvm';

describeKvm('sandbox example (64-bit guest, doorbells through an ioeventfd)', () => {
  it.each([100_000, 1000])('n = %i: the 64-bit sum, floor(n / 256) doorbells and 2 exits', async (n) => {
    const r = await runSandbox(n);
    expect(r).toEqual({
      sum: (BigInt(n) * BigInt(n + 1)) / 2n,
      doorbells: BigInt(Math.floor(n / 256)),
      exits: 2,
    });
  });
});
