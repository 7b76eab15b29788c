/**
 * The GDB stub's protocol against a mock target: the packet codec, every packet kind the session
 * answers, and a fuzz of malformed input (bad checksums, garbage, huge lengths, disconnects
 * mid-packet): every packet gets exactly one reply or error, nothing hangs or throws, and the
 * target is always detached at the end.
 */
import {
  MAX_PACKET,
  PacketDecoder,
  checksum,
  compressRunLength,
  escapeBinary,
  expandRunLength,
  framePacket,
  fromHex,
  toHex,
  unescapeBinary,
} from '../../src/vmm/gdb/packet';
import { GdbSession, MAX_READ, type SessionEnd } from '../../src/vmm/gdb/session';
import {
  EFAULT,
  GdbTargetError,
  type AddressSpace,
  type BreakpointType,
  type GdbTarget,
  type StopReason,
  type TargetExited,
} from '../../src/vmm/gdb/target';

const REGS = 17; // rax..r15, rip: 8 bytes each
const MEM_BASE = 0x1000n;
const MEM_SIZE = 0x2000;

class MockTarget implements GdbTarget {
  readonly threads = [1, 2];
  readonly targetXml = '<target><!-- # $ } * --><architecture>i386:x86-64</architecture></target>'.repeat(3);
  regs = new Map<number, Uint8Array>([
    [1, new Uint8Array(REGS * 8)],
    [2, new Uint8Array(REGS * 8)],
  ]);
  mem = new Uint8Array(MEM_SIZE);
  spaces: AddressSpace[] = [];
  breakpoints = new Set<string>();
  calls: string[] = [];
  /** How resume ends: undefined waits for stop() or interrupt(). */
  autoStop: StopReason | TargetExited | undefined;
  #pending: ((r: StopReason | TargetExited) => void) | undefined;

  halt(): Promise<StopReason> {
    this.calls.push('halt');
    return Promise.resolve({ thread: 1, signal: 5 });
  }
  readRegisters(thread: number): Uint8Array {
    return this.regs.get(thread)!.slice();
  }
  writeRegisters(thread: number, bytes: Uint8Array): void {
    if (bytes.length !== REGS * 8) throw new GdbTargetError(22, 'size');
    this.regs.get(thread)!.set(bytes);
  }
  readRegister(thread: number, n: number): Uint8Array | undefined {
    return n < REGS ? this.regs.get(thread)!.slice(n * 8, n * 8 + 8) : undefined;
  }
  writeRegister(thread: number, n: number, bytes: Uint8Array): void {
    if (n >= REGS || bytes.length !== 8) throw new GdbTargetError(22, 'register');
    this.regs.get(thread)!.set(bytes, n * 8);
  }
  readMemory(_thread: number, addr: bigint, length: number, space: AddressSpace): Uint8Array {
    this.spaces.push(space);
    if (addr < MEM_BASE || addr >= MEM_BASE + BigInt(MEM_SIZE)) throw new GdbTargetError(EFAULT, 'outside');
    const off = Number(addr - MEM_BASE);
    return this.mem.slice(off, Math.min(off + length, MEM_SIZE)); // a short read at the end
  }
  writeMemory(_thread: number, addr: bigint, data: Uint8Array): void {
    if (addr < MEM_BASE || addr + BigInt(data.length) > MEM_BASE + BigInt(MEM_SIZE))
      throw new GdbTargetError(EFAULT, 'outside');
    this.mem.set(data, Number(addr - MEM_BASE));
  }
  insertBreakpoint(type: BreakpointType, addr: bigint, kind: number): boolean {
    if (type === 3) return false;
    this.breakpoints.add(`${type}:${addr}:${kind}`);
    return true;
  }
  removeBreakpoint(type: BreakpointType, addr: bigint, kind: number): boolean {
    if (type === 3) return false;
    this.breakpoints.delete(`${type}:${addr}:${kind}`);
    return true;
  }
  resume(step: number | undefined): Promise<StopReason | TargetExited> {
    this.calls.push(step === undefined ? 'continue' : `step ${step}`);
    if (this.autoStop) return Promise.resolve(this.autoStop);
    return new Promise((resolve) => (this.#pending = resolve));
  }
  stop(r: StopReason | TargetExited): void {
    const p = this.#pending;
    this.#pending = undefined;
    p?.(r);
  }
  get running(): boolean {
    return this.#pending !== undefined;
  }
  interrupt(): void {
    this.calls.push('interrupt');
    this.stop({ thread: 1, signal: 2 });
  }
  detach(): Promise<void> {
    this.calls.push('detach');
    this.stop({ thread: 1, signal: 2 });
    return Promise.resolve();
  }
  kill(): Promise<void> {
    this.calls.push('kill');
    return Promise.resolve();
  }
  monitor(command: string): string | undefined {
    return command === 'hello' ? 'hi\n' : undefined;
  }
}

/** A client: frames packets, takes the stub's bytes apart into acks and verified replies. */
class Client {
  readonly target = new MockTarget();
  readonly session: GdbSession;
  out: number[] = [];
  ended = false;
  readonly logs: string[] = [];
  constructor() {
    this.session = new GdbSession(
      this.target,
      {
        write: (b) => {
          if (this.ended) throw new Error('write after end');
          this.out.push(...b);
        },
        end: () => (this.ended = true),
      },
      { log: (m) => this.logs.push(m) },
    );
  }
  async start(): Promise<void> {
    await this.session.start();
  }
  raw(bytes: string | Uint8Array): void {
    this.session.receive(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
  }
  send(payload: string | Uint8Array): void {
    this.raw(framePacket(payload));
  }
  /** Everything sent so far, split into '+', '-' and reply payloads (checksums checked, RLE expanded). */
  take(): Array<string> {
    const items: string[] = [];
    const bytes = Uint8Array.from(this.out);
    this.out = [];
    for (let i = 0; i < bytes.length;) {
      const b = bytes[i];
      if (b === 0x2b || b === 0x2d) {
        items.push(String.fromCharCode(b));
        i++;
        continue;
      }
      if (b !== 0x24) throw new Error(`stray byte ${b} from the stub`);
      const end = bytes.indexOf(0x23, i);
      const body = bytes.subarray(i + 1, end);
      const sum = parseInt(Buffer.from(bytes.subarray(end + 1, end + 3)).toString('latin1'), 16);
      if (sum !== checksum(body)) throw new Error('bad checksum from the stub');
      items.push(Buffer.from(expandRunLength(body)!).toString('latin1'));
      i = end + 3;
    }
    return items;
  }
  /** Sends one packet and returns its reply (after the '+'). */
  async ask(payload: string | Uint8Array): Promise<string> {
    this.send(payload);
    await settle();
    const items = this.take().filter((x) => x !== '+');
    if (items.length !== 1) throw new Error(`expected one reply to ${String(payload)}, got ${JSON.stringify(items)}`);
    return items[0];
  }
}

const settle = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

async function connected(): Promise<Client> {
  const c = new Client();
  await c.start();
  return c;
}

describe('GDB packet codec', () => {
  it('frames with a modulo-256 checksum and decodes across chunk boundaries', () => {
    expect(Buffer.from(framePacket('OK')).toString()).toBe('$OK#9a');
    const d = new PacketDecoder();
    const bytes = Buffer.from('+$g#67-\x03$m1000,4#');
    const events = [...d.push(bytes.subarray(0, 5)), ...d.push(bytes.subarray(5))];
    expect(events.map((e) => e.type)).toEqual(['ack', 'packet', 'nak', 'interrupt']);
    expect(d.inPacket).toBe(true);
    expect(d.push(Buffer.from('8e'))).toEqual([{ type: 'packet', payload: Uint8Array.from(Buffer.from('m1000,4')) }]);
    expect(d.push(Buffer.from('$g#00'))[0].type).toBe('bad-checksum');
    expect(d.push(Buffer.from('$g#zz'))[0].type).toBe('bad-checksum');
  });

  it('drops an overlong packet without buffering it, then decodes the next one', () => {
    const d = new PacketDecoder();
    const huge = Buffer.alloc(MAX_PACKET * 4, 0x41);
    expect(d.push(Buffer.concat([Buffer.from('$'), huge]))).toEqual([]);
    expect(d.push(Buffer.from('#00$?#3f'))).toEqual([
      { type: 'overflow' },
      { type: 'packet', payload: Uint8Array.of(0x3f) },
    ]);
  });

  it('escapes #, $, } and * in binary data and back', () => {
    const data = Uint8Array.of(0x23, 0x24, 0x7d, 0x2a, 0x00, 0xff);
    const esc = escapeBinary(data);
    expect(Array.from(esc)).toEqual([0x7d, 0x03, 0x7d, 0x04, 0x7d, 0x5d, 0x7d, 0x0a, 0x00, 0xff]);
    expect(unescapeBinary(esc)).toEqual(data);
    expect(unescapeBinary(Uint8Array.of(0x41, 0x7d))).toBeUndefined();
  });

  it('run-length encodes long runs (never as # or $) and expands them back', () => {
    for (const n of [1, 3, 4, 5, 7, 8, 9, 50, 98, 99, 200, 1000]) {
      const text = Buffer.from(`x${'0'.repeat(n)}y`);
      const packed = compressRunLength(text);
      expect(packed.includes(0x23) || packed.includes(0x24)).toBe(false);
      expect(Buffer.from(expandRunLength(packed)!).toString()).toBe(text.toString());
      if (n >= 8) expect(packed.length).toBeLessThan(text.length);
    }
    expect(expandRunLength(Buffer.from('*"'))).toBeUndefined(); // nothing to repeat
    expect(expandRunLength(Buffer.from('0*\x01'))).toBeUndefined(); // count out of range
  });

  it('hex', () => {
    expect(toHex(Uint8Array.of(0, 0xab, 0x10))).toBe('00ab10');
    expect(fromHex('00AB10')).toEqual(Uint8Array.of(0, 0xab, 0x10));
    expect(fromHex('abc')).toBeUndefined();
    expect(fromHex('zz')).toBeUndefined();
  });
});

describe('GdbSession with a mock target', () => {
  it('halts the target at the start and answers the connection questions', async () => {
    const c = await connected();
    expect(c.target.calls).toEqual(['halt']);
    expect(await c.ask('qSupported:multiprocess+;swbreak+;hwbreak+')).toBe(
      'PacketSize=4000;qXfer:features:read+;QStartNoAckMode+;vContSupported+;swbreak+;hwbreak+',
    );
    expect(await c.ask('?')).toBe('T05thread:1;');
    expect(await c.ask('qAttached')).toBe('1');
    expect(await c.ask('qC')).toBe('QC1');
    expect(await c.ask('qfThreadInfo')).toBe('m1,2');
    expect(await c.ask('qsThreadInfo')).toBe('l');
    expect(Buffer.from(fromHex(await c.ask('qThreadExtraInfo,2'))!).toString()).toBe('vCPU 1');
    expect(await c.ask('qThreadExtraInfo,9')).toBe('E16');
    expect(await c.ask('qSymbol::')).toBe('OK');
    expect(await c.ask('vMustReplyEmpty')).toBe('');
    expect(await c.ask('vCont?')).toBe('vCont;c;C;s;S');
    expect(await c.ask('qTStatus')).toBe(''); // unknown: empty
    expect(await c.ask('!')).toBe('');
    expect(await c.ask('')).toBe('');
  });

  it('serves the target description in escaped chunks', async () => {
    const c = await connected();
    let xml = '';
    for (let off = 0, guard = 0; guard < 100; guard++) {
      const r = await c.ask(`qXfer:features:read:target.xml:${off.toString(16)},20`);
      expect(['m', 'l']).toContain(r[0]);
      const part = unescapeBinary(Buffer.from(r.slice(1), 'latin1'))!;
      xml += Buffer.from(part).toString('utf8');
      off += part.length;
      if (r[0] === 'l') break;
    }
    expect(xml).toBe(c.target.targetXml);
    expect(await c.ask('qXfer:features:read:other.xml:0,20')).toBe('E00');
    expect(await c.ask('qXfer:features:read:target.xml:ffffff,20')).toBe('E16');
    expect(await c.ask('qXfer:features:read:target.xml:zz')).toBe('E16');
  });

  it('acknowledges until QStartNoAckMode, NAKs bad checksums, resends on a NAK', async () => {
    const c = await connected();
    c.send('qC');
    await settle();
    expect(c.take()).toEqual(['+', 'QC1']);
    c.raw('-'); // the reply got lost: send it again
    expect(c.take()).toEqual(['QC1']);
    c.raw('$qC#00');
    await settle();
    expect(c.take()).toEqual(['-']);
    c.send('QStartNoAckMode');
    await settle();
    expect(c.take()).toEqual(['+', 'OK']);
    c.send('qC');
    await settle();
    expect(c.take()).toEqual(['QC1']); // no '+' any more
    c.raw('$qC#00');
    await settle();
    expect(c.take()).toEqual([]); // nothing to NAK in no-ack mode
  });

  it('selects threads with H and checks them with T', async () => {
    const c = await connected();
    expect(await c.ask('Hg2')).toBe('OK');
    expect(await c.ask('qC')).toBe('QC2');
    expect(await c.ask('Hc-1')).toBe('OK');
    expect(await c.ask('Hg0')).toBe('OK');
    expect(await c.ask('Hg9')).toBe('E16');
    expect(await c.ask('Hx1')).toBe('E16');
    expect(await c.ask('Hgzz')).toBe('E16');
    expect(await c.ask('T1')).toBe('OK');
    expect(await c.ask('T3')).toBe('E16');
    expect(await c.ask('T')).toBe('E16');
  });

  it('reads and writes registers: g, G, p, P', async () => {
    const c = await connected();
    const regs = new Uint8Array(REGS * 8).map((_, i) => (i < 8 ? i + 1 : 0));
    expect(await c.ask(`G${toHex(regs)}`)).toBe('OK');
    expect(await c.ask('g')).toBe(toHex(regs)); // run-length encoded on the wire, expanded here
    expect(await c.ask('p0')).toBe('0102030405060708');
    expect(await c.ask('P10=efbeadde00000000')).toBe('OK');
    expect(await c.ask('p10')).toBe('efbeadde00000000');
    expect(await c.ask('p99')).toBe('E16');
    expect(await c.ask('pzz')).toBe('E16');
    expect(await c.ask('P99=00')).toBe('E16'); // the target refuses it
    expect(await c.ask('P1=0')).toBe('E16');
    expect(await c.ask('Gabc')).toBe('E16');
    expect(await c.ask('G00')).toBe('E16');
    expect(await c.ask('gx')).toBe('');
    expect(await c.ask('Hg2')).toBe('OK');
    expect(await c.ask('p0')).toBe('0000000000000000'); // thread 2's own
  });

  it('reads and writes memory: m, M, X; refuses what is outside, malformed or too long', async () => {
    const c = await connected();
    expect(await c.ask('M1000,4:cc90f4eb')).toBe('OK');
    expect(await c.ask('m1000,4')).toBe('cc90f4eb');
    const bin = Uint8Array.of(0x23, 0x24, 0x7d, 0x2a);
    expect(await c.ask(Buffer.concat([Buffer.from('X1004,4:'), escapeBinary(bin)]))).toBe('OK');
    expect(await c.ask('m1004,4')).toBe('23247d2a');
    expect(await c.ask('X1000,0:')).toBe('OK'); // gdb's probe for X support
    expect(await c.ask('m2ffe,8')).toBe('0000'); // a short read at the end of memory
    expect(await c.ask('m0,4')).toBe('E0e');
    expect(await c.ask('M0,1:00')).toBe('E0e');
    expect(await c.ask('mffffffffffffffff,8')).toBe('E0e'); // wraps past 2^64
    expect(await c.ask(`m1000,${(MAX_READ + 1).toString(16)}`)).toBe('E16');
    expect(await c.ask('m1000,ffffffff')).toBe('E16');
    expect(await c.ask('m1000')).toBe('E16');
    expect(await c.ask('m10000000000000000,1')).toBe('E16'); // 17 hex digits
    expect(await c.ask('M1000,4:cc90')).toBe('E16'); // length and data differ
    expect(await c.ask('M1000,1:zz')).toBe('E16');
    expect(await c.ask('X1000,2:\x7d')).toBe('E16');
    expect(await c.ask('X1000')).toBe('E16');
    expect(c.target.spaces.every((s) => s === 'virtual')).toBe(true);
  });

  it('switches memory accesses to physical addresses (monitor phys, Qqemu.PhyMemMode)', async () => {
    const c = await connected();
    const hex = (s: string) => toHex(Buffer.from(s));
    expect(Buffer.from(fromHex(await c.ask(`qRcmd,${hex('phys on')}`))!).toString()).toContain('physical');
    await c.ask('m1000,1');
    expect(c.target.spaces.pop()).toBe('physical');
    expect(await c.ask('Qqemu.PhyMemMode:0')).toBe('OK');
    expect(await c.ask('qqemu.PhyMemMode')).toBe('0');
    await c.ask('m1000,1');
    expect(c.target.spaces.pop()).toBe('virtual');
    expect(await c.ask('Qqemu.PhyMemMode:2')).toBe('E16');
    expect(Buffer.from(fromHex(await c.ask(`qRcmd,${hex('hello')}`))!).toString()).toBe('hi\n');
    expect(Buffer.from(fromHex(await c.ask(`qRcmd,${hex('nope')}`))!).toString()).toContain('unknown monitor');
    expect(Buffer.from(fromHex(await c.ask(`qRcmd,${hex('help')}`))!).toString()).toContain('phys');
    expect(await c.ask('qRcmd,zz')).toBe('E16');
  });

  it('inserts and removes breakpoints and watchpoints; an unsupported type gets an empty reply', async () => {
    const c = await connected();
    expect(await c.ask('Z0,1010,1')).toBe('OK');
    expect(await c.ask('Z1,1020,1')).toBe('OK');
    expect(await c.ask('Z2,2000,8')).toBe('OK');
    expect(await c.ask('Z4,2008,4')).toBe('OK');
    expect(await c.ask('Z3,2000,4')).toBe('');
    expect([...c.target.breakpoints].sort()).toEqual(['0:4112:1', '1:4128:1', '2:8192:8', '4:8200:4']);
    expect(await c.ask('z0,1010,1')).toBe('OK');
    expect(await c.ask('z2,2000,8')).toBe('OK');
    expect([...c.target.breakpoints].sort()).toEqual(['1:4128:1', '4:8200:4']);
    expect(await c.ask('Z5,1000,1')).toBe('E16');
    expect(await c.ask('Z0,1000')).toBe('E16');
    expect(await c.ask('Z0,zz,1')).toBe('E16');
  });

  it('continues and steps: the stop reply comes when the target stops; packets sent meanwhile wait', async () => {
    const c = await connected();
    c.send('c');
    await settle();
    expect(c.take()).toEqual(['+']);
    expect(c.target.running).toBe(true);
    c.send('qC'); // not answered while running
    await settle();
    expect(c.take()).toEqual(['+']);
    c.target.stop({ thread: 2, signal: 5, breakpoint: 'hw' });
    await settle();
    expect(c.take()).toEqual(['T05thread:2;hwbreak:;', 'QC2']);
    c.target.autoStop = { thread: 1, signal: 5 };
    expect(await c.ask('s')).toBe('T05thread:1;');
    expect(c.target.calls.slice(-2)).toEqual(['continue', 'step 2']); // the thread that stopped
    expect(await c.ask('s')).toBe('T05thread:1;');
    expect(c.target.calls.at(-1)).toBe('step 1');
    expect(await c.ask('vCont;s:2;c')).toBe('T05thread:1;');
    expect(c.target.calls.at(-1)).toBe('step 2');
    expect(await c.ask('vCont;c')).toBe('T05thread:1;');
    expect(c.target.calls.at(-1)).toBe('continue');
    expect(await c.ask('S05')).toBe('T05thread:1;');
    expect(await c.ask('C02')).toBe('T05thread:1;');
    expect(await c.ask('c1000')).toBe('T05thread:1;'); // resume at an address
    expect(c.target.readRegister(1, 16)).toEqual(Uint8Array.of(0, 0x10, 0, 0, 0, 0, 0, 0));
    c.target.autoStop = { thread: 1, signal: 5, watch: { kind: 'watch', addr: 0x2000n } };
    expect(await c.ask('c')).toBe('T05thread:1;watch:2000;');
    expect(await c.ask('vCont;s:9')).toBe('E16');
    expect(await c.ask('vCont;x')).toBe('E16');
    expect(await c.ask('vCont;')).toBe('E16');
    expect(await c.ask('C')).toBe('E16');
    expect(await c.ask('cz')).toBe('E16');
  });

  it('Ctrl-C (0x03) interrupts a running target: SIGINT', async () => {
    const c = await connected();
    c.send('vCont;c');
    await settle();
    c.raw('\x03');
    await settle();
    expect(c.take()).toEqual(['+', 'T02thread:1;']);
    c.raw('\x03'); // while stopped: ignored
    await settle();
    expect(c.take()).toEqual([]);
    expect(c.target.calls.filter((x) => x === 'interrupt')).toHaveLength(1);
  });

  it('reports a target that ended while running as exited (W00) and ends', async () => {
    const c = await connected();
    c.send('c');
    await settle();
    c.target.stop({ exited: true, code: 0 });
    await settle();
    expect(c.take()).toEqual(['+', 'W00']);
    expect(await c.session.ended).toBe('exited');
    expect(c.ended).toBe(true);
  });

  it('D detaches (OK, the target runs on) and ends the connection', async () => {
    const c = await connected();
    expect(await c.ask('D')).toBe('OK');
    expect(await c.session.ended).toBe('detach');
    expect(c.target.calls.at(-1)).toBe('detach');
    expect(c.ended).toBe(true);
    c.send('qC'); // after the end: ignored
    await settle();
    expect(c.take()).toEqual([]);
  });

  it('D;pid detaches too; D with junk is refused', async () => {
    const c = await connected();
    expect(await c.ask('Dx')).toBe('E16');
    expect(await c.ask('D;1')).toBe('OK');
    expect(await c.session.ended).toBe('detach');
  });

  it('k and vKill kill the target', async () => {
    const c = await connected();
    c.send('k');
    await settle();
    expect(await c.session.ended).toBe('kill');
    expect(c.target.calls).toContain('kill');
    const v = await connected();
    expect(await v.ask('vKill;1')).toBe('OK');
    expect(await v.session.ended).toBe('kill');
  });

  it('a disconnect mid-packet, or while the target runs, detaches it', async () => {
    const c = await connected();
    c.raw('$m1000,');
    c.session.disconnected();
    expect(await c.session.ended).toBe('disconnect');
    expect(c.target.calls).toEqual(['halt', 'detach']);
    expect(c.logs.join('\n')).toContain('middle of a packet');
    const r = await connected();
    r.send('c');
    await settle();
    r.session.disconnected();
    expect(await r.session.ended).toBe('disconnect');
    expect(r.target.calls).toEqual(['halt', 'continue', 'detach']);
  });

  it('an overlong packet gets an error reply and the session goes on', async () => {
    const c = await connected();
    c.raw(Buffer.concat([Buffer.from('$M1000,4:'), Buffer.alloc(MAX_PACKET * 2, 0x30), Buffer.from('#00')]));
    await settle();
    expect(c.take()).toEqual(['+', 'E16']);
    expect(await c.ask('qC')).toBe('QC1');
  });

  it('a client that floods while the target runs is dropped, and the target detached', async () => {
    const c = await connected();
    c.send('c');
    for (let i = 0; i < 100; i++) c.send('qC');
    await settle();
    expect(await c.session.ended).toBe('protocol-error');
    expect(c.target.calls.at(-1)).toBe('detach');
  });

  it('fuzz: garbage, bad checksums, random packets and cuts never hang, throw or go unanswered', async () => {
    let seed = 0x1234_5678;
    const rand = (n: number) => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    const heads = ['m', 'M', 'X', 'g', 'G', 'p', 'P', 'Z', 'z', 'H', 'T', 'q', 'Q', 'v', 'c', 's', 'C', 'S', '?', 'x'];
    const alphabet = '0123456789abcdefABCDEF,:;=-*}#$xyzXqQ\x00\xff';
    for (let round = 0; round < 40; round++) {
      const c = await connected();
      c.target.autoStop = { thread: 1 + rand(2), signal: 5 };
      let packets = 0;
      for (let i = 0; i < 60; i++) {
        const kind = rand(6);
        if (kind === 0) {
          // Noise (no '-': a NAK rightly makes the stub send its last reply again); it may start a packet.
          c.raw(Uint8Array.from({ length: rand(40) }, () => rand(256)).map((b) => (b === 0x2d ? 0x2e : b)));
          c.raw('#00'); // and end it, badly
        } else if (kind === 1) {
          c.raw(`$${'q'.repeat(rand(20))}#${rand(256).toString(16).padStart(2, '0')}`);
        } else {
          let p = heads[rand(heads.length)];
          const n = rand(kind === 5 ? 400 : 24);
          for (let k = 0; k < n; k++) p += alphabet[rand(alphabet.length)];
          if (p.startsWith('D') || p.startsWith('k') || p.startsWith('vKill')) continue;
          c.send(escapeBinary(Buffer.from(p, 'latin1')));
          packets++;
        }
        await settle();
      }
      await settle();
      const items = c.take();
      const replies = items.filter((x) => x !== '+' && x !== '-');
      const acks = items.filter((x) => x === '+').length;
      // Every well-formed packet was acknowledged and answered exactly once (overflows too).
      expect(acks).toBeGreaterThanOrEqual(packets);
      expect(replies.length).toBe(acks);
      // And the session still works.
      expect(await c.ask('qC')).toMatch(/^QC[12]$/);
      c.raw('$m10');
      c.session.disconnected();
      const end: SessionEnd = await c.session.ended;
      expect(end).toBe('disconnect');
      expect(c.target.calls.at(-1)).toBe('detach');
    }
  });
});
