/**
 * kvm-ioctls' README example, on the real kernel: exits in order, answers reaching the guest's
 * registers, and the dirty page the guest wrote.
 */
import { runSeed, runSeedOnRuntime } from '../../examples/seed-example';
import { describeKvm } from '../helpers/kvm';

describeKvm('seed example (kvm-ioctls README program)', () => {
  it('exits IoOut("5"), IoIn, MmioWrite(0x8000), MmioRead(0x8000), Hlt in that order', () => {
    const r = runSeed();
    expect(r.exits).toEqual(['IoOut', 'IoIn', 'MmioWrite', 'MmioRead', 'Hlt']);
    expect(r.output).toBe('5'); // 2 + 3 + '0'
  });

  it('delivers the IoIn and MmioRead answers to the guest registers', () => {
    const a = runSeed(0x42, 0x77);
    expect(a.regs.rax & 0xffn).toBe(0x42n); // in %dx, %al
    expect(a.regs.rdx & 0xffn).toBe(0x77n); // mov (0x8000), %dl
    const b = runSeed(0x13, 0x9a);
    expect(b.regs.rax & 0xffn).toBe(0x13n);
    expect(b.regs.rdx & 0xffn).toBe(0x9an);
  });

  it('shows the page the guest wrote in the dirty bitmap', () => {
    const r = runSeed();
    // The guest stored to 0x2000: page 1 of the slot at 0x1000. Other pages may or may not be
    // reported, depending on the kernel, so only that bit is asserted.
    expect(r.dirtyBitmapAtHlt.length).toBe(1);
    expect(r.dirtyBitmapAtHlt[0] & 0b10n).toBe(0b10n);
  });

  it('runs the same guest through the worker runtime with its devices as a pipeline', async () => {
    const logs: string[] = [];
    const r = await runSeedOnRuntime((s) => logs.push(s));
    expect(r).toEqual({ rax: 0x42n, rdx: 0x377n, exits: 5 });
    expect(logs[0]).toContain('IoOut  port 0x3f8 data "5" (worker thread)');
  });
});
