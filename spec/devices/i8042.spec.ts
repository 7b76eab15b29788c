import type { TestScheduler } from 'rxjs/testing';
import { I8042, i8042 } from '../../src/devices/i8042';
import { runInThread } from '../../src/runtime/in-thread';
import { MockBackend, hlt as mockHlt, ioOut as mockIoOut } from '../../src/backend/mock/index';
import { Kvm } from '../../src/wrappers/kvm';
import { bytesOf, hlt, ioIn, ioOut, newTestScheduler } from '../helpers/exits';
import { expectCode } from '../helpers/kvm';

/** i8042 */
describe('i8042', () => {
  let testScheduler: TestScheduler;

  beforeEach(() => {
    testScheduler = newTestScheduler();
  });

  it('should report no data and read 0 from the data port, passing other exits through', () => {
    const a = ioIn(0x64);
    const b = ioIn(0x60);
    const c = ioIn(0x61);
    const d = ioOut(0x64, [0x20]); // read CTR: ignored, no data follows
    const e = ioIn(0x64);
    const f = ioOut(0x60, [0x47]);
    const g = ioIn(0x64);
    const h = hlt();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-d-e-f-g-h-|', { a, b, c, d, e, f, g, h });
      const e1subs = '  ^----------------!';
      const expected = '-----c---------h-|';

      expectObservable(e1.pipe(i8042())).toBe(expected, { c, h });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(bytesOf(a.data)).toEqual([0x14]); // SYS | unlocked, OBF = IBF = 0
    expect(bytesOf(b.data)).toEqual([0x00]);
    expect(bytesOf(e.data)).toEqual([0x1c]); // + last write was a command
    expect(bytesOf(g.data)).toEqual([0x14]);
  });

  it('should complete at command 0xFE (CPU reset), consuming it, and call onReset once', () => {
    const resets: number[] = [];
    const a = ioIn(0x64);
    const r = ioOut(0x64, [0xfe]);
    const x = ioOut(0x3f8, [0x41]);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const kbc = i8042({ onReset: () => resets.push(testScheduler.now()) });
      const e1 = hot('  -a-x-r-x-|', { a, r, x });
      const e1subs = '  ^----!    ';
      const expected = '---x-|    ';

      expectObservable(e1.pipe(kbc)).toBe(expected, { x });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(resets).toEqual([5]);
  });

  it('should reset on a write of the output port with bit 0 clear, not on the A20 gate write', () => {
    const a = ioOut(0x64, [0xd1]);
    const b = ioOut(0x60, [0xdf]); // A20 on, reset line high: no reset
    const c = ioOut(0x64, [0xd1]);
    const d = ioOut(0x60, [0xde]);
    const x = ioIn(0x71);
    const kbc = i8042();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-x-c-d-x-|', { a, b, c, d, x });
      const e1subs = '  ^--------!    ';
      const expected = '-----x---|    ';

      expectObservable(e1.pipe(kbc)).toBe(expected, { x });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      testScheduler.schedule(() => expect(kbc.device.resetRequested).toBe(false), 8);
    });
    expect(kbc.device.resetRequested).toBe(true);
  });

  it('should record a reset but keep going with stopOnReset: false', () => {
    const r = ioOut(0x64, [0xfe]);
    const h = hlt();
    const kbc = i8042({ stopOnReset: false });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -r-h-|', { r, h });
      const e1subs = '  ^----!';
      const expected = '---h-|';

      expectObservable(e1.pipe(kbc)).toBe(expected, { h });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(kbc.device.resetRequested).toBe(true);
  });

  it('should ignore every other command and any access size', () => {
    const dev = new I8042();
    for (let cmd = 0; cmd < 0x100; cmd++) {
      if (cmd >= 0xf0 && (cmd & 1) === 0) continue;
      if (cmd === 0xd1) continue;
      dev.ioWrite(0x64, 1, cmd);
      dev.ioWrite(0x60, 1, 0);
    }
    expect(dev.resetRequested).toBe(false);
    expect(dev.ioRead(0x60, 4)).toBe(0xff_ff_ff_00); // 0x60 reads 0; 0x61-0x63 are not the controller's
    expect(dev.ioRead(0x63, 2)).toBe(0x14_ff); // the status byte comes from 0x64 only
    expect(dev.ioRead(0x64, 2)).toBe(0xff_14);
    dev.ioWrite(0x63, 2, 0xfe00); // the high byte lands on 0x64: a reset
    expect(dev.resetRequested).toBe(true);
  });

  it('should end runInThread with reason completed when the guest resets (mock backend)', async () => {
    const backend = new MockBackend();
    const kvm = new Kvm({ backend });
    const vcpu = kvm.createVm().createVcpu(0);
    backend.vcpu(0).script([mockIoOut(0x64, Uint8Array.of(0xfe)), mockHlt()]);
    const kbc = i8042();
    await expect(runInThread(vcpu, (exits$) => exits$.pipe(kbc))).resolves.toEqual({
      reason: 'completed',
      exits: 1,
      lastExit: 'IoOut',
    });
    expect(kbc.device.resetRequested).toBe(true);
    kvm.close();
  });

  it('should check its options', () => {
    expectCode(() => i8042({ onReset: 1 as never }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
    expectCode(() => i8042({ stopOnReset: 'yes' as never }), 'TypeError', 'ERR_INVALID_ARG_TYPE');
  });
});
