/**
 * attachConsole with a piped (non-terminal) stdin: when the input ends, the console quits once the
 * guest has gone quiet, not after a fixed delay. Driven with jest's fake timers: no real waiting.
 */
import { PassThrough } from 'node:stream';
import { attachConsole, DEFAULT_QUIET_MS } from '../../src/cli/console';

function pipedInput(): PassThrough {
  return new PassThrough();
}

/** Lets the stream deliver 'data' and 'end' (they come on process.nextTick). */
async function flushStream(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => process.nextTick(r));
}

describe('attachConsole: the end of a piped stdin', () => {
  beforeEach(() => {
    jest.useFakeTimers({ doNotFake: ['nextTick'] });
  });
  afterEach(() => {
    jest.useRealTimers();
  });

  it('forwards the bytes, then quits quietMs after the last guest output once the input has ended', async () => {
    const input = pipedInput();
    const quits: string[] = [];
    const sent: string[] = [];
    const con = attachConsole({ onQuit: (why) => quits.push(why), input });
    input.end('abc');
    await flushStream();
    con.connect((b) => sent.push(Buffer.from(b).toString('latin1')));
    expect(sent).toEqual(['abc']);
    // Ended and connected, but the guest has printed nothing yet (still starting): no quit, however long.
    jest.advanceTimersByTime(60_000);
    expect(quits).toEqual([]);
    con.noteOutput(); // the banner
    jest.advanceTimersByTime(DEFAULT_QUIET_MS - 1);
    con.noteOutput(); // the echo re-arms the quiet period
    jest.advanceTimersByTime(DEFAULT_QUIET_MS - 1);
    expect(quits).toEqual([]);
    jest.advanceTimersByTime(1);
    expect(quits).toEqual(['end']);
    con.close();
  });

  it('does not quit before the input has ended, nor with quitOnEnd: false, nor after close()', async () => {
    const open = pipedInput();
    const q1: string[] = [];
    const c1 = attachConsole({ onQuit: (w) => q1.push(w), input: open, quietMs: 10 });
    c1.connect(() => undefined);
    open.write('x');
    await flushStream();
    c1.noteOutput();
    jest.advanceTimersByTime(1000);
    expect(q1).toEqual([]);
    c1.close();

    const kept = pipedInput();
    const q2: string[] = [];
    const c2 = attachConsole({ onQuit: (w) => q2.push(w), input: kept, quitOnEnd: false, quietMs: 10 });
    c2.connect(() => undefined);
    kept.end('y');
    await flushStream();
    c2.noteOutput();
    jest.advanceTimersByTime(1000);
    expect(q2).toEqual([]);
    c2.close();

    const closed = pipedInput();
    const q3: string[] = [];
    const c3 = attachConsole({ onQuit: (w) => q3.push(w), input: closed, quietMs: 10 });
    c3.connect(() => undefined);
    closed.end('z');
    await flushStream();
    c3.noteOutput();
    c3.close();
    jest.advanceTimersByTime(1000);
    expect(q3).toEqual([]);
  });

  it('the quiet period is the option, and a bad one is a RangeError', async () => {
    const input = pipedInput();
    const quits: string[] = [];
    const con = attachConsole({ onQuit: (w) => quits.push(w), input, quietMs: 50 });
    con.connect(() => undefined);
    con.noteOutput();
    input.end();
    await flushStream();
    jest.advanceTimersByTime(49);
    expect(quits).toEqual([]);
    jest.advanceTimersByTime(1);
    expect(quits).toEqual(['end']);
    con.close();
    expect(() => attachConsole({ onQuit: () => undefined, input: pipedInput(), quietMs: 0 })).toThrow(
      expect.objectContaining({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }),
    );
  });
});

describe('attachConsole: a terminal', () => {
  /** A PassThrough that says it is a terminal and records raw mode. */
  function tty(): PassThrough & { isTTY: boolean; raw: boolean[]; setRawMode(m: boolean): void } {
    const s = new PassThrough() as PassThrough & { isTTY: boolean; raw: boolean[]; setRawMode(m: boolean): void };
    s.isTTY = true;
    s.raw = [];
    s.setRawMode = (m: boolean) => s.raw.push(m);
    return s;
  }

  it('Ctrl-A s calls onSnapshotKey, Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A; raw mode is undone at close', async () => {
    const input = tty();
    const quits: string[] = [];
    let snapshots = 0;
    const sent: number[][] = [];
    const con = attachConsole({ onQuit: (why) => quits.push(why), input, onSnapshotKey: () => snapshots++ });
    con.connect((b) => sent.push([...b]));
    input.write(Buffer.from([0x61, 0x01, 0x73, 0x62, 0x01, 0x01, 0x63]));
    await flushStream();
    expect({ snapshots, sent, quits }).toEqual({ snapshots: 1, sent: [[0x61, 0x62, 0x01, 0x63]], quits: [] });
    input.write(Buffer.from([0x01, 0x78]));
    await flushStream();
    expect(quits).toEqual(['key']);
    con.close();
    expect(input.raw).toEqual([true, false]);
  });

  it('without onSnapshotKey, Ctrl-A s sends s', async () => {
    const input = tty();
    const sent: number[][] = [];
    const con = attachConsole({ onQuit: () => undefined, input });
    con.connect((b) => sent.push([...b]));
    input.write(Buffer.from([0x01, 0x73]));
    await flushStream();
    expect(sent).toEqual([[0x73]]);
    con.close();
  });
});
