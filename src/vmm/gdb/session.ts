/**
 * One gdb connection: the GDB remote serial protocol's state machine over a byte transport and a
 * {@link GdbTarget}. It acknowledges packets (until `QStartNoAckMode`), answers each packet in
 * order, keeps the target stopped between packets and running between a resume and the stop
 * reply, and turns a disconnect (even mid-packet), `D` or `k` into a detach or a kill: the guest
 * is never left stopped without a client.
 *
 * @module
 */
import { checkObject, invalidType } from '../../abi/validate';
import {
  MAX_PACKET,
  PacketDecoder,
  compressRunLength,
  escapeBinary,
  framePacket,
  fromHex,
  parseHexNumber,
  toHex,
  unescapeBinary,
} from './packet';
import {
  EINVAL,
  GdbTargetError,
  type AddressSpace,
  type BreakpointType,
  type GdbTarget,
  type StopReason,
  type TargetExited,
} from './target';

/** The most bytes one `m` packet may ask for (its hex reply must fit in a packet). */
export const MAX_READ = (MAX_PACKET - 8) / 2;
/** Packets a client may queue while the target runs before the stub drops it. */
const MAX_QUEUED = 64;

/** What a session sends on and how it hangs up. */
export interface GdbTransport {
  write(bytes: Uint8Array): void;
  /** Ends the connection (the session calls it once, after its last write). */
  end(): void;
}

/** How a session ended. */
export type SessionEnd = 'detach' | 'kill' | 'disconnect' | 'exited' | 'protocol-error';

/** Options of {@link GdbSession}. */
export interface GdbSessionOptions {
  /** Called with each protocol event worth logging (bad checksums, dropped packets, the end). */
  log?: (message: string) => void;
}

function isExited(r: StopReason | TargetExited): r is TargetExited {
  return 'exited' in r;
}

/** The stop reply packet for a reason. */
export function stopReply(r: StopReason | TargetExited): string {
  if (isExited(r)) return `W${(r.code & 0xff).toString(16).padStart(2, '0')}`;
  let s = `T${r.signal.toString(16).padStart(2, '0')}thread:${r.thread.toString(16)};`;
  if (r.watch) s += `${r.watch.kind}:${r.watch.addr.toString(16)};`;
  else if (r.breakpoint === 'hw') s += 'hwbreak:;';
  else if (r.breakpoint === 'sw') s += 'swbreak:;';
  return s;
}

function errorReply(e: unknown): string {
  const errno = e instanceof GdbTargetError ? e.errno : 1;
  return `E${(errno & 0xff).toString(16).padStart(2, '0')}`;
}

const latin1 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');

/**
 * A gdb session: feed it what the client sends ({@link receive}) and tell it when the connection
 * closes ({@link disconnected}); it writes its answers to the transport.
 *
 * @example
 * ```ts
 * // @ts-setup: import type { Socket } from 'node:net'; declare const socket: Socket; declare const target: GdbTarget;
 * const session = new GdbSession(target, { write: (b) => socket.write(b), end: () => socket.end() });
 * socket.on('data', (b) => session.receive(b));
 * socket.on('close', () => session.disconnected());
 * await session.start(); // stops the target and waits for gdb's questions
 * ```
 */
export class GdbSession {
  readonly #target: GdbTarget;
  readonly #io: GdbTransport;
  readonly #log: (message: string) => void;
  readonly #decoder = new PacketDecoder();
  #ack = true;
  #lastSent: Uint8Array | undefined;
  #resends = 0;
  #queue: Uint8Array[] = [];
  #busy = false;
  #running = false;
  #closed = false;
  #started = false;
  #lastStop: StopReason | TargetExited = { thread: 1, signal: 5 };
  #gThread: number;
  #cThread: number;
  #space: AddressSpace = 'virtual';
  #onEnd: (why: SessionEnd) => void = () => undefined;
  /** Resolves with how the session ended, once the target has been detached, killed or left. */
  readonly ended: Promise<SessionEnd>;

  constructor(target: GdbTarget, transport: GdbTransport, options: GdbSessionOptions = {}) {
    checkObject('target', target);
    const threads: unknown = target.threads;
    if (!Array.isArray(threads) || threads.length === 0 || !threads.every((t) => Number.isInteger(t)))
      invalidType('target.threads', 'a non-empty array of thread ids', threads);
    checkObject('transport', transport);
    if (typeof transport.write !== 'function' || typeof transport.end !== 'function')
      invalidType('transport', 'an object with write() and end()', transport);
    checkObject('options', options);
    if (options.log !== undefined && typeof options.log !== 'function')
      invalidType('options.log', 'a function', options.log);
    this.#target = target;
    this.#io = transport;
    this.#log = options.log ?? (() => undefined);
    this.#gThread = this.#cThread = target.threads[0] ?? 1;
    this.ended = new Promise((resolve) => (this.#onEnd = resolve));
  }

  /** Stops the target for gdb (all-stop: gdb expects it stopped when it connects), then serves packets. */
  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    this.#busy = true;
    try {
      const r = await this.#target.halt();
      this.#lastStop = r;
      if (!isExited(r)) this.#gThread = this.#cThread = r.thread;
    } catch (e) {
      this.#log(`halting the target failed: ${(e as Error).message}`);
      await this.#finish('protocol-error');
      return;
    } finally {
      this.#busy = false;
    }
    void this.#drain();
  }

  /** Bytes from the client. */
  receive(chunk: Uint8Array): void {
    if (this.#closed) return;
    for (const ev of this.#decoder.push(chunk)) {
      switch (ev.type) {
        case 'ack':
          this.#resends = 0;
          break;
        case 'nak':
          if (this.#ack && this.#lastSent !== undefined && this.#resends++ < 3) this.#io.write(this.#lastSent);
          break;
        case 'interrupt':
          if (this.#running) this.#target.interrupt();
          break;
        case 'bad-checksum':
          this.#log('a packet with a bad checksum (answered -)');
          if (this.#ack) this.#io.write(Uint8Array.of(0x2d));
          break;
        case 'overflow':
          this.#log(`a packet longer than ${MAX_PACKET} bytes (dropped)`);
          if (this.#ack) this.#io.write(Uint8Array.of(0x2b));
          this.#enqueue(new Uint8Array(0), true);
          break;
        case 'packet':
          if (this.#ack) this.#io.write(Uint8Array.of(0x2b));
          this.#enqueue(ev.payload, false);
          break;
      }
    }
  }

  #overflowed = new WeakSet<Uint8Array>();

  #enqueue(payload: Uint8Array, overflow: boolean): void {
    if (overflow) this.#overflowed.add(payload);
    if (this.#queue.length >= MAX_QUEUED) {
      this.#log(`more than ${MAX_QUEUED} packets queued: dropping the client`);
      void this.#finish('protocol-error');
      return;
    }
    this.#queue.push(payload);
    void this.#drain();
  }

  /** The client went away (or the connection broke): detach, so the guest runs on. */
  disconnected(): void {
    if (this.#closed) return;
    if (this.#decoder.inPacket) this.#log('the client disconnected in the middle of a packet');
    void this.#finish('disconnect');
  }

  /** Ends the session from the stub's side (the server closes): detaches. */
  async close(): Promise<SessionEnd> {
    await this.#finish('detach');
    return this.ended;
  }

  #send(payload: string | Uint8Array): void {
    if (this.#closed) return;
    const packet = framePacket(payload);
    this.#lastSent = packet;
    this.#resends = 0;
    this.#io.write(packet);
  }

  async #finish(why: SessionEnd): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue = [];
    this.#log(`session ends: ${why}`);
    try {
      if (why === 'kill') await this.#target.kill();
      else if (why !== 'exited') await this.#target.detach();
    } finally {
      try {
        this.#io.end();
      } catch {
        /* already closed */
      }
      this.#onEnd(why);
    }
  }

  async #drain(): Promise<void> {
    if (this.#busy || !this.#started) return;
    this.#busy = true;
    try {
      while (!this.#closed && !this.#running && this.#queue.length > 0) {
        const payload = this.#queue.shift()!;
        if (this.#overflowed.has(payload)) {
          this.#send(`E${EINVAL.toString(16)}`);
          continue;
        }
        await this.#handle(payload);
      }
    } finally {
      this.#busy = false;
    }
  }

  async #handle(payload: Uint8Array): Promise<void> {
    const text = latin1(payload);
    let reply: string | Uint8Array | undefined;
    try {
      reply = await this.#dispatch(text, payload);
    } catch (e) {
      // A target's refusal (memory not mapped, no free slot) is gdb's to report; anything else is logged.
      if (!(e instanceof GdbTargetError)) this.#log(`'${text.slice(0, 40)}' failed: ${(e as Error).message}`);
      reply = errorReply(e);
    }
    if (reply !== undefined) this.#send(reply);
  }

  #thread(text: string): number | undefined {
    if (text === '-1' || text === '0') return this.#target.threads[0];
    const n = parseHexNumber(text);
    if (n === undefined) return undefined;
    const t = Number(n);
    return this.#target.threads.includes(t) ? t : undefined;
  }

  /** The reply to one packet (`undefined`: none, e.g. after a resume whose stop reply is sent later). */
  async #dispatch(text: string, raw: Uint8Array): Promise<string | Uint8Array | undefined> {
    const t = this.#target;
    const head = text[0];
    switch (head) {
      case undefined:
        return '';
      case '?':
        return stopReply(this.#lastStop);
      case 'g':
        if (text !== 'g') return '';
        return compressRunLength(Buffer.from(toHex(await t.readRegisters(this.#gThread)), 'latin1'));
      case 'G': {
        const bytes = fromHex(text.slice(1));
        if (bytes === undefined) return 'E16';
        await t.writeRegisters(this.#gThread, bytes);
        return 'OK';
      }
      case 'p': {
        const n = parseHexNumber(text.slice(1));
        if (n === undefined || n > 0xffffn) return 'E16';
        const bytes = await t.readRegister(this.#gThread, Number(n));
        return bytes === undefined ? 'E16' : toHex(bytes);
      }
      case 'P': {
        const m = /^P([0-9a-fA-F]{1,4})=([0-9a-fA-F]*)$/.exec(text);
        const bytes = m ? fromHex(m[2]) : undefined;
        if (!m || bytes === undefined) return 'E16';
        await t.writeRegister(this.#gThread, parseInt(m[1], 16), bytes);
        return 'OK';
      }
      case 'm': {
        const m = /^m([0-9a-fA-F]{1,16}),([0-9a-fA-F]{1,8})$/.exec(text);
        if (!m) return 'E16';
        const addr = BigInt(`0x${m[1]}`);
        const len = parseInt(m[2], 16);
        if (len > MAX_READ) return 'E16';
        if (addr + BigInt(len) > 1n << 64n) return 'E0e';
        return toHex(await t.readMemory(this.#gThread, addr, len, this.#space));
      }
      case 'M': {
        const m = /^M([0-9a-fA-F]{1,16}),([0-9a-fA-F]{1,8}):([0-9a-fA-F]*)$/.exec(text);
        const bytes = m ? fromHex(m[3]) : undefined;
        if (!m || bytes === undefined || bytes.length !== parseInt(m[2], 16)) return 'E16';
        const addr = BigInt(`0x${m[1]}`);
        if (addr + BigInt(bytes.length) > 1n << 64n) return 'E0e';
        await t.writeMemory(this.#gThread, addr, bytes, this.#space);
        return 'OK';
      }
      case 'X': {
        const colon = raw.indexOf(0x3a);
        const m = colon < 0 ? null : /^X([0-9a-fA-F]{1,16}),([0-9a-fA-F]{1,8})$/.exec(text.slice(0, colon));
        const bytes = m ? unescapeBinary(raw.subarray(colon + 1)) : undefined;
        if (!m || bytes === undefined || bytes.length !== parseInt(m[2], 16)) return 'E16';
        const addr = BigInt(`0x${m[1]}`);
        if (addr + BigInt(bytes.length) > 1n << 64n) return 'E0e';
        if (bytes.length > 0) await t.writeMemory(this.#gThread, addr, bytes, this.#space);
        return 'OK';
      }
      case 'H': {
        const thread = this.#thread(text.slice(2));
        if (thread === undefined || (text[1] !== 'g' && text[1] !== 'c')) return 'E16';
        if (text[1] === 'g') this.#gThread = thread;
        else this.#cThread = thread;
        return 'OK';
      }
      case 'T':
        return this.#thread(text.slice(1)) === undefined || text.length < 2 ? 'E16' : 'OK';
      case 'c':
      case 's':
      case 'C':
      case 'S': {
        const m = /^([csCS])(?:([0-9a-fA-F]{1,2})(?:;([0-9a-fA-F]{1,16}))?|([0-9a-fA-F]{1,16}))?$/.exec(text);
        if (!m) return 'E16';
        const signalled = head === 'C' || head === 'S';
        if (signalled && m[2] === undefined) return 'E16';
        const at = signalled ? m[3] : (m[2] ?? '') + (m[4] ?? '') || undefined;
        if (at !== undefined) await this.#setPc(this.#cThread, BigInt(`0x${at}`));
        return this.#resume(head === 's' || head === 'S' ? this.#cThread : undefined);
      }
      case 'v':
        return this.#v(text);
      case 'Z':
      case 'z': {
        const m = /^[Zz]([0-4]),([0-9a-fA-F]{1,16}),([0-9a-fA-F]{1,8})(;.*)?$/.exec(text);
        if (!m) return 'E16';
        const type = Number(m[1]) as BreakpointType;
        const addr = BigInt(`0x${m[2]}`);
        const kind = parseInt(m[3], 16);
        const ok =
          head === 'Z' ? await t.insertBreakpoint(type, addr, kind) : await t.removeBreakpoint(type, addr, kind);
        return ok ? 'OK' : '';
      }
      case 'D':
        if (text !== 'D' && !/^D;[0-9a-fA-F]+$/.test(text)) return 'E16';
        this.#send('OK');
        await this.#finish('detach');
        return undefined;
      case 'k':
        await this.#finish('kill');
        return undefined;
      case 'q':
      case 'Q':
        return this.#query(text);
      default:
        return '';
    }
  }

  async #setPc(thread: number, pc: bigint): Promise<void> {
    // rip is register 16 in the x86-64 description; other targets would have their own number.
    await this.#target.writeRegister(thread, 16, Buffer.from(BigUint64Array.of(pc).buffer));
  }

  /** Runs the target until it stops, then sends the stop reply; answers the packets queued meanwhile. */
  async #resume(step: number | undefined): Promise<undefined> {
    this.#running = true;
    let r: StopReason | TargetExited;
    try {
      r = await this.#target.resume(step);
    } finally {
      this.#running = false;
    }
    if (this.#closed) return undefined;
    this.#lastStop = r;
    this.#send(stopReply(r));
    if (isExited(r)) await this.#finish('exited');
    else this.#gThread = this.#cThread = r.thread;
    return undefined;
  }

  async #v(text: string): Promise<string | undefined> {
    if (text === 'vCont?') return 'vCont;c;C;s;S';
    if (text === 'vMustReplyEmpty') return '';
    if (text.startsWith('vKill')) {
      this.#send('OK');
      await this.#finish('kill');
      return undefined;
    }
    if (text.startsWith('vCont;')) {
      let step: number | undefined;
      let any = false;
      for (const action of text.slice(6).split(';')) {
        const m = /^([cCsS])([0-9a-fA-F]{2})?(?::(-1|[0-9a-fA-F]{1,8}))?$/.exec(action);
        if (!m) return 'E16';
        any = true;
        if (m[1] === 's' || m[1] === 'S') {
          const thread = m[3] === undefined ? this.#cThread : this.#thread(m[3]);
          if (thread === undefined) return 'E16';
          step ??= thread;
        }
      }
      if (!any) return 'E16';
      return this.#resume(step);
    }
    return '';
  }

  async #query(text: string): Promise<string | Uint8Array | undefined> {
    const t = this.#target;
    if (text.startsWith('qSupported')) {
      return `PacketSize=${MAX_PACKET.toString(16)};qXfer:features:read+;QStartNoAckMode+;vContSupported+;swbreak+;hwbreak+`;
    }
    if (text === 'QStartNoAckMode') {
      this.#send('OK'); // still acknowledged by gdb
      this.#ack = false;
      return undefined;
    }
    if (text.startsWith('qXfer:features:read:')) {
      const m = /^qXfer:features:read:([^:]+):([0-9a-fA-F]{1,8}),([0-9a-fA-F]{1,8})$/.exec(text);
      if (!m) return 'E16';
      if (m[1] !== 'target.xml') return 'E00';
      const xml = Buffer.from(t.targetXml, 'utf8');
      const off = parseInt(m[2], 16);
      const len = Math.min(parseInt(m[3], 16), MAX_PACKET - 16);
      if (off > xml.length) return 'E16';
      const part = xml.subarray(off, off + len);
      const more = off + part.length < xml.length;
      const body = escapeBinary(part);
      const out = new Uint8Array(body.length + 1);
      out[0] = more ? 0x6d : 0x6c; // 'm' more to come, 'l' last
      out.set(body, 1);
      return out;
    }
    if (text === 'qAttached' || text.startsWith('qAttached:')) return '1';
    if (text === 'qC') return `QC${this.#gThread.toString(16)}`;
    if (text === 'qfThreadInfo') return `m${t.threads.map((n) => n.toString(16)).join(',')}`;
    if (text === 'qsThreadInfo') return 'l';
    if (text.startsWith('qThreadExtraInfo,')) {
      const thread = this.#thread(text.slice(17));
      if (thread === undefined) return 'E16';
      return toHex(Buffer.from(t.threadInfo?.(thread) ?? `vCPU ${thread - 1}`, 'utf8'));
    }
    if (text === 'qSymbol::') return 'OK';
    if (text === 'qOffsets') return '';
    if (text.startsWith('Qqemu.PhyMemMode:') || text === 'qqemu.PhyMemMode') {
      if (text[0] === 'q') return this.#space === 'physical' ? '1' : '0';
      const v = text.slice(17);
      if (v !== '0' && v !== '1') return 'E16';
      this.#space = v === '1' ? 'physical' : 'virtual';
      return 'OK';
    }
    if (text.startsWith('qRcmd,')) {
      const bytes = fromHex(text.slice(6));
      if (bytes === undefined) return 'E16';
      const out = await this.#monitor(Buffer.from(bytes).toString('utf8').trim());
      return out === undefined ? '' : out === '' ? 'OK' : toHex(Buffer.from(out, 'utf8'));
    }
    return '';
  }

  async #monitor(command: string): Promise<string | undefined> {
    const [word, arg] = command.split(/\s+/, 2);
    if (word === 'help') {
      const own = (await this.#target.monitor?.('help')) ?? '';
      return `phys [on|off]  memory accesses by guest-physical (on) or guest-virtual (off) address\n${own}`;
    }
    if (word === 'phys') {
      if (arg === 'on') this.#space = 'physical';
      else if (arg === 'off') this.#space = 'virtual';
      else if (arg !== undefined) return 'usage: monitor phys [on|off]\n';
      return `memory accesses use ${this.#space} addresses\n`;
    }
    const out = await this.#target.monitor?.(command);
    return out ?? `unknown monitor command '${command}' (monitor help lists them)\n`;
  }
}
