/**
 * The framing of the GDB remote serial protocol: `$payload#cc` packets with a modulo-256 checksum,
 * `+`/`-` acknowledgements, the interrupt byte 0x03, `}` escapes of binary data and `*`
 * run-length encoding. {@link PacketDecoder} turns a byte stream into events; {@link framePacket}
 * builds a packet. No I/O here.
 *
 * @module
 */

/** The largest packet payload the stub accepts and announces (`PacketSize` in `qSupported`). */
export const MAX_PACKET = 0x4000;

/** What the decoder found in the stream. */
export type DecodedEvent =
  /** A packet with a good checksum; `payload` is the raw bytes between `$` and `#` (escapes and run-length kept). */
  | { type: 'packet'; payload: Uint8Array }
  /** A packet whose checksum did not match (the stub answers `-` in ack mode). */
  | { type: 'bad-checksum'; payload: Uint8Array }
  /** A packet longer than {@link MAX_PACKET}: its bytes were dropped up to its `#cc`. */
  | { type: 'overflow' }
  | { type: 'ack' }
  | { type: 'nak' }
  /** The interrupt byte 0x03 outside a packet (gdb's Ctrl-C). */
  | { type: 'interrupt' };

/** The modulo-256 sum of `bytes`. */
export function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return sum;
}

const HEX = '0123456789abcdef';

/** Lower-case hex of `bytes`. */
export function toHex(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += HEX[b >> 4] + HEX[b & 15];
  return s;
}

/**
 * The bytes of an even-length hex string, or `undefined` when it is not one.
 *
 * @example `fromHex('cc90') // Uint8Array [0xcc, 0x90]`
 */
export function fromHex(text: string): Uint8Array | undefined {
  if (text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) return undefined;
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * A hex number of gdb's (an address, a length, a register number) as a bigint, or `undefined`
 * for anything but 1 to 16 hex digits.
 */
export function parseHexNumber(text: string): bigint | undefined {
  if (!/^[0-9a-fA-F]{1,16}$/.test(text)) return undefined;
  return BigInt(`0x${text}`);
}

/** Escapes binary data for a packet: `#`, `$`, `}` and `*` become `}` and the byte XOR 0x20. */
export function escapeBinary(bytes: Uint8Array): Uint8Array {
  const out: number[] = [];
  for (const b of bytes) {
    if (b === 0x23 || b === 0x24 || b === 0x7d || b === 0x2a) out.push(0x7d, b ^ 0x20);
    else out.push(b);
  }
  return Uint8Array.from(out);
}

/** Undoes {@link escapeBinary}; `undefined` when the data ends in a lone `}`. */
export function unescapeBinary(bytes: Uint8Array): Uint8Array | undefined {
  const out = new Uint8Array(bytes.length);
  let n = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === 0x7d) {
      if (i + 1 >= bytes.length) return undefined;
      out[n++] = bytes[++i] ^ 0x20;
    } else out[n++] = bytes[i];
  }
  return out.slice(0, n);
}

/**
 * Expands `*` run-length encoding (`X*n` is X repeated `n - 29 + 1` times); `undefined` for a `*`
 * with nothing before it or a count outside 3..97 (`n` from `#`+3 to `~`).
 */
export function expandRunLength(bytes: Uint8Array, limit = MAX_PACKET * 2): Uint8Array | undefined {
  if (!bytes.includes(0x2a)) return bytes;
  const out: number[] = [];
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (b !== 0x2a) {
      out.push(b);
    } else {
      if (out.length === 0 || i + 1 >= bytes.length) return undefined;
      const repeat = bytes[++i] - 29;
      if (repeat < 3 || repeat > 97) return undefined;
      const prev = out[out.length - 1];
      for (let k = 0; k < repeat; k++) out.push(prev);
    }
    if (out.length > limit) return undefined;
  }
  return Uint8Array.from(out);
}

/**
 * Run-length encodes an ASCII payload: runs of 4 or more of a byte become `X*n`, avoiding the
 * counts that would give `#` or `$` (6 and 7 repeats) and never encoding `#`, `$`, `}` or `*`.
 */
export function compressRunLength(bytes: Uint8Array): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i];
    let run = 1;
    while (i + run < bytes.length && bytes[i + run] === b && run < 98) run++;
    if (run >= 4 && b !== 0x23 && b !== 0x24 && b !== 0x7d && b !== 0x2a) {
      let repeat = run - 1; // the bytes after the first one
      if (repeat === 6 || repeat === 7) repeat = 5; // '#' and '$' are not counts
      out.push(b, 0x2a, repeat + 29);
      i += repeat + 1;
    } else {
      out.push(b);
      i++;
    }
  }
  return Uint8Array.from(out);
}

/** `$payload#cc` for a payload already escaped (and compressed) as needed. */
export function framePacket(payload: Uint8Array | string): Uint8Array {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload;
  const sum = checksum(body);
  const out = new Uint8Array(body.length + 4);
  out[0] = 0x24;
  out.set(body, 1);
  out[body.length + 1] = 0x23;
  out[body.length + 2] = HEX.charCodeAt(sum >> 4);
  out[body.length + 3] = HEX.charCodeAt(sum & 15);
  return out;
}

const enum State {
  Idle,
  Body,
  Sum1,
  Sum2,
}

/**
 * A streaming decoder of what gdb sends: feed it bytes as they arrive, in chunks of any size; it
 * returns the events completed by each chunk. Garbage between packets is skipped; a packet that
 * grows beyond {@link MAX_PACKET} is dropped (one `overflow` event) without buffering it.
 *
 * @example
 * ```ts
 * const d = new PacketDecoder();
 * d.push(Buffer.from('+$g#67')); // [{ type: 'ack' }, { type: 'packet', payload: … 'g' }]
 * ```
 */
export class PacketDecoder {
  #state = State.Idle;
  #body: number[] = [];
  #overflow = false;
  #sum = 0;
  #sumText = '';

  /** Whether a packet has started and not ended (a disconnect now is mid-packet). */
  get inPacket(): boolean {
    return this.#state !== State.Idle;
  }

  push(chunk: Uint8Array): DecodedEvent[] {
    const events: DecodedEvent[] = [];
    for (const b of chunk) {
      switch (this.#state) {
        case State.Idle:
          if (b === 0x24) {
            this.#state = State.Body;
            this.#body = [];
            this.#overflow = false;
            this.#sum = 0;
          } else if (b === 0x2b) events.push({ type: 'ack' });
          else if (b === 0x2d) events.push({ type: 'nak' });
          else if (b === 0x03) events.push({ type: 'interrupt' });
          break; // anything else between packets is noise
        case State.Body:
          if (b === 0x23) {
            this.#state = State.Sum1;
            this.#sumText = '';
          } else if (b === 0x24 && !this.#overflow) {
            // A new packet start inside a packet: gdb restarted; drop the partial one.
            this.#body = [];
            this.#sum = 0;
          } else {
            this.#sum = (this.#sum + b) & 0xff;
            if (this.#body.length < MAX_PACKET) this.#body.push(b);
            else this.#overflow = true;
          }
          break;
        case State.Sum1:
          this.#sumText = String.fromCharCode(b);
          this.#state = State.Sum2;
          break;
        case State.Sum2: {
          this.#sumText += String.fromCharCode(b);
          this.#state = State.Idle;
          const payload = Uint8Array.from(this.#body);
          this.#body = [];
          if (this.#overflow) events.push({ type: 'overflow' });
          else if (/^[0-9a-fA-F]{2}$/.test(this.#sumText) && parseInt(this.#sumText, 16) === this.#sum)
            events.push({ type: 'packet', payload });
          else events.push({ type: 'bad-checksum', payload });
          break;
        }
      }
    }
    return events;
  }
}
