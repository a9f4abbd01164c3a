/**
 * The GDB remote serial protocol on the wire, independent of any transport: framing
 * (`$payload#cs`), acknowledgements, escaping, run-length decoding, hex, and the replies both
 * clients share. The blocking client (for the memory source) and the asynchronous one (for vCPU
 * control) drive the same decoder and the same request state machine, so the protocol rules
 * live in one place.
 *
 * The stub is treated as untrusted input: packet sizes are capped, run-length counts are
 * bounded, and any malformed reply becomes a TargetError naming the request.
 */
import { TargetError } from '../../util/errors.ts';

const DOLLAR = 0x24;
const HASH = 0x23;
const STAR = 0x2a;
const BRACE = 0x7d;
const PLUS = 0x2b;
const MINUS = 0x2d;

/** Largest decoded reply accepted. QEMU's replies stay below 4 KiB; this only stops a runaway peer. */
export const MAX_REPLY_BYTES = 1 << 20;
/** Time allowed for connecting and for each request, unless the caller says otherwise. */
export const DEFAULT_TIMEOUT_MS = 5000;
/** PacketSize assumed when a stub does not announce one: small, so requests fit any stub. */
export const FALLBACK_PACKET_SIZE = 400;

/**
 * Bytes put ahead of every request. QEMU's gdbstub treats any byte that arrives while the guest
 * runs as a stop request and discards it, so a packet sent to a running guest would silently
 * vanish. A leading interrupt byte makes the stop happen before the packet starts: the packet
 * is then always processed (preceded by an asynchronous stop reply). The leading '+' first
 * acknowledges any stop reply the stub sent that has not reached us yet; while the stub waits
 * for that acknowledgement it ignores interrupt bytes. A stopped stub ignores both bytes.
 */
export const REQUEST_PREFIX = Buffer.from([PLUS, 0x03]);
export const ACK = Buffer.from([PLUS]);
export const NACK = Buffer.from([MINUS]);
export const INTERRUPT = Buffer.from([0x03]);

/** Sum of bytes modulo 256, as the protocol defines the checksum. */
export function checksum(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let sum = 0;
  for (let i = start; i < end; i++) sum = (sum + bytes[i]!) & 0xff;
  return sum;
}

function hexDigit(n: number): number {
  return n < 10 ? 0x30 + n : 0x57 + n;
}

/**
 * Frame a payload as `$payload#cs`, escaping the four characters the stub would misread
 * (`$`, `#`, `*`, `}`) as `}` followed by the byte XOR 0x20. Text packets contain none of them;
 * binary ones (`X`) do. With `prefix`, the request prefix comes first.
 */
export function framePacket(payload: string | Uint8Array, prefix = true): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload;
  let escapes = 0;
  for (let i = 0; i < body.length; i++) {
    const b = body[i]!;
    if (b === DOLLAR || b === HASH || b === STAR || b === BRACE) escapes++;
  }
  const head = prefix ? REQUEST_PREFIX.length : 0;
  const out = Buffer.allocUnsafe(head + 1 + body.length + escapes + 3);
  let o = 0;
  if (prefix) o += REQUEST_PREFIX.copy(out, 0);
  out[o++] = DOLLAR;
  const dataStart = o;
  for (let i = 0; i < body.length; i++) {
    const b = body[i]!;
    if (b === DOLLAR || b === HASH || b === STAR || b === BRACE) {
      out[o++] = BRACE;
      out[o++] = b ^ 0x20;
    } else out[o++] = b;
  }
  const cs = checksum(out, dataStart, o);
  out[o++] = HASH;
  out[o++] = hexDigit(cs >> 4);
  out[o++] = hexDigit(cs & 0xf);
  return out;
}

/** Undo `}` escaping in a binary reply (qXfer data). Run-length decoding already happened. */
export function unescapeBinary(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(payload.length);
  let o = 0;
  for (let i = 0; i < payload.length; i++) {
    const b = payload[i]!;
    if (b === BRACE && i + 1 < payload.length) out[o++] = payload[++i]! ^ 0x20;
    else out[o++] = b;
  }
  return out.subarray(0, o);
}

export type WireEvent =
  | { readonly kind: 'ack' }
  | { readonly kind: 'nack' }
  /** A packet; `payload` is run-length decoded, `}` escapes are left for the reply's parser. */
  | { readonly kind: 'packet'; readonly payload: Buffer; readonly checksumOk: boolean };

const ACK_EVENT: WireEvent = { kind: 'ack' };
const NACK_EVENT: WireEvent = { kind: 'nack' };

const enum DecodeState {
  Idle,
  Body,
  Escape,
  Repeat,
  Sum1,
  Sum2,
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

/**
 * Push parser for what the stub sends: `+`, `-` and `$…#cs` packets, with run-length
 * decoding (`X*n` repeats X n-29 more times). Bytes between packets that are neither ack nor
 * packet start are dropped. A packet growing past `maxPayload` is a protocol error.
 */
export class FrameDecoder {
  private state = DecodeState.Idle;
  private buf: Buffer;
  private len = 0;
  private sum = 0;
  private expected = 0;
  /** Decoded events not yet taken; `head` is the next one (an index, so taking is O(1)). */
  private events: WireEvent[] = [];
  private head = 0;

  constructor(private readonly maxPayload = MAX_REPLY_BYTES) {
    this.buf = Buffer.allocUnsafe(Math.min(8192, maxPayload));
  }

  /** Feed received bytes; decoded events queue up for next(). */
  push(chunk: Uint8Array, start = 0, end = chunk.length): void {
    for (let i = start; i < end; i++) {
      const c = chunk[i]!;
      switch (this.state) {
        case DecodeState.Idle:
          if (c === DOLLAR) {
            this.state = DecodeState.Body;
            this.len = 0;
            this.sum = 0;
          } else if (c === PLUS) this.events.push(ACK_EVENT);
          else if (c === MINUS) this.events.push(NACK_EVENT);
          break;
        case DecodeState.Body:
          if (c === HASH) this.state = DecodeState.Sum1;
          else {
            this.sum = (this.sum + c) & 0xff;
            if (c === STAR) {
              if (this.len === 0) throw new TargetError('gdbstub sent a malformed packet (run-length code with nothing to repeat)');
              this.state = DecodeState.Repeat;
            } else {
              this.append(c);
              if (c === BRACE) this.state = DecodeState.Escape;
            }
          }
          break;
        case DecodeState.Escape:
          // The escaped byte is kept as sent; only its meaning as a delimiter is suspended.
          this.sum = (this.sum + c) & 0xff;
          this.append(c);
          this.state = DecodeState.Body;
          break;
        case DecodeState.Repeat: {
          this.sum = (this.sum + c) & 0xff;
          const count = c - 29;
          if (count < 3 || c > 126) throw new TargetError(`gdbstub sent a malformed packet (run-length count 0x${c.toString(16)})`);
          const last = this.buf[this.len - 1]!;
          for (let k = 0; k < count; k++) this.append(last);
          this.state = DecodeState.Body;
          break;
        }
        case DecodeState.Sum1: {
          const v = hexValue(c);
          this.expected = v < 0 ? -1 : v << 4;
          this.state = DecodeState.Sum2;
          break;
        }
        case DecodeState.Sum2: {
          const v = hexValue(c);
          const ok = v >= 0 && this.expected >= 0 && (this.expected | v) === this.sum;
          this.events.push({ kind: 'packet', payload: Buffer.from(this.buf.subarray(0, this.len)), checksumOk: ok });
          this.state = DecodeState.Idle;
          break;
        }
      }
    }
  }

  private append(c: number): void {
    if (this.len === this.buf.length) {
      if (this.len >= this.maxPayload) {
        this.state = DecodeState.Idle;
        throw new TargetError(`gdbstub sent a packet larger than ${this.maxPayload} bytes`);
      }
      const bigger = Buffer.allocUnsafe(Math.min(this.maxPayload, this.buf.length * 2));
      this.buf.copy(bigger, 0, 0, this.len);
      this.buf = bigger;
    }
    this.buf[this.len++] = c;
  }

  next(): WireEvent | undefined {
    if (this.head < this.events.length) return this.events[this.head++];
    if (this.head) {
      this.events = [];
      this.head = 0;
    }
    return undefined;
  }

}

// ---------------------------------------------------------------------------------------------
// Hex

const HEX_CHARS = '0123456789abcdef';

export function bytesToHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

/** True when `payload` is an even-length run of hex digits. */
export function isHex(payload: Uint8Array, start = 0): boolean {
  if ((payload.length - start) % 2 !== 0) return false;
  for (let i = start; i < payload.length; i++) if (hexValue(payload[i]!) < 0) return false;
  return true;
}

/**
 * Decode `count` bytes of hex from `src` at `srcOff` into `dst` at `dstOff`. Returns false on a
 * non-hex digit (a reply to distrust), leaving `dst` partly written.
 */
export function hexInto(src: Uint8Array, srcOff: number, dst: Uint8Array, dstOff: number, count: number): boolean {
  let s = srcOff;
  for (let i = 0; i < count; i++) {
    const hi = hexValue(src[s++]!);
    const lo = hexValue(src[s++]!);
    if (hi < 0 || lo < 0) return false;
    dst[dstOff + i] = (hi << 4) | lo;
  }
  return true;
}

/** Little-endian hex of a register value of `bytes` bytes, as `P` and `G` want it. */
export function leHex(value: bigint, bytes: number): string {
  let out = '';
  let v = BigInt.asUintN(bytes * 8, value);
  for (let i = 0; i < bytes; i++) {
    const b = Number(v & 0xffn);
    out += HEX_CHARS[b >> 4]! + HEX_CHARS[b & 0xf]!;
    v >>= 8n;
  }
  return out;
}

/** Little-endian unsigned value of `bytes` bytes of hex at `srcOff`. */
export function leValue(src: Uint8Array, srcOff: number, bytes: number): bigint | undefined {
  let v = 0n;
  for (let i = bytes - 1; i >= 0; i--) {
    const hi = hexValue(src[srcOff + 2 * i]!);
    const lo = hexValue(src[srcOff + 2 * i + 1]!);
    if (hi < 0 || lo < 0) return undefined;
    v = (v << 8n) | BigInt((hi << 4) | lo);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Replies

/** `Enn`: the stub's error reply, with its code. */
export function errorCode(payload: Uint8Array): number | undefined {
  if (payload.length === 3 && payload[0] === 0x45 /* E */) {
    const hi = hexValue(payload[1]!);
    const lo = hexValue(payload[2]!);
    if (hi >= 0 && lo >= 0) return (hi << 4) | lo;
  }
  return undefined;
}

/** Why the target stopped, from a `T`, `S`, `W` or `X` packet. */
export interface StopReply {
  /**
   * 'signal': stopped (QEMU: 5 = SIGTRAP for breakpoints and steps, 2 = SIGINT for an interrupt
   * or a pause, 3 = SIGQUIT at shutdown); 'exited' / 'terminated': the target is gone.
   */
  readonly kind: 'signal' | 'exited' | 'terminated';
  /** Signal number, or the exit status for 'exited'. */
  readonly signal: number;
  /** The stopping thread (vCPU index + 1 on QEMU), when the stub names it. */
  readonly thread?: number;
  /** Set when a watchpoint fired: its kind and the data address. */
  readonly watch?: { readonly kind: 'write' | 'read' | 'access'; readonly address: bigint };
  /** The raw packet, for anything not parsed above. */
  readonly raw: string;
}

/** True for payloads that are stop replies rather than answers to a request. */
export function isStopReply(payload: Uint8Array): boolean {
  if (payload.length < 3) return false;
  const c = payload[0];
  return (c === 0x54 /* T */ || c === 0x53 /* S */ || c === 0x57 /* W */ || c === 0x58) /* X */ && isHexPair(payload, 1);
}

function isHexPair(p: Uint8Array, at: number): boolean {
  return hexValue(p[at]!) >= 0 && hexValue(p[at + 1]!) >= 0;
}

/** Thread id as QEMU writes it: `01`, or `p01.01` in multiprocess form (the thread part counts). */
export function parseThreadId(text: string): number | undefined {
  let t = text;
  if (t.startsWith('p')) {
    const dot = t.indexOf('.');
    if (dot < 0) return undefined;
    t = t.slice(dot + 1);
  }
  if (!/^[0-9a-fA-F]{1,8}$/.test(t)) return undefined;
  return parseInt(t, 16);
}

export function parseStopReply(payload: Uint8Array): StopReply {
  const raw = Buffer.from(payload).toString('latin1');
  if (!isStopReply(payload)) throw new TargetError(`gdbstub sent a malformed stop reply: ${JSON.stringify(raw.slice(0, 80))}`);
  const signal = parseInt(raw.slice(1, 3), 16);
  const type = raw[0];
  if (type === 'W') return { kind: 'exited', signal, raw };
  if (type === 'X') return { kind: 'terminated', signal, raw };
  let thread: number | undefined;
  let watch: StopReply['watch'];
  for (const field of raw.slice(3).split(';')) {
    const colon = field.indexOf(':');
    if (colon < 0) continue;
    const key = field.slice(0, colon);
    const value = field.slice(colon + 1);
    if (key === 'thread') thread = parseThreadId(value);
    else if ((key === 'watch' || key === 'rwatch' || key === 'awatch') && /^[0-9a-fA-F]{1,16}$/.test(value)) {
      watch = { kind: key === 'watch' ? 'write' : key === 'rwatch' ? 'read' : 'access', address: BigInt('0x' + value) };
    }
  }
  return { kind: 'signal', signal, raw, ...(thread !== undefined ? { thread } : {}), ...(watch ? { watch } : {}) };
}

/** `O` + hex: console output the stub forwards (the reply to a monitor command comes as these). */
export function consoleOutput(payload: Uint8Array): string | undefined {
  if (payload.length < 3 || payload[0] !== 0x4f /* O */ || !isHex(payload, 1)) return undefined;
  return Buffer.from(Buffer.from(payload.subarray(1)).toString('latin1'), 'hex').toString('utf8');
}

/** `qSupported` reply: `PacketSize=1000;qXfer:features:read+;…` → name → value ('+', '-' or text). */
export function parseSupported(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const item of text.split(';')) {
    if (!item) continue;
    const eq = item.indexOf('=');
    if (eq >= 0) out.set(item.slice(0, eq), item.slice(eq + 1));
    else if (item.endsWith('+') || item.endsWith('-') || item.endsWith('?')) out.set(item.slice(0, -1), item.slice(-1));
    else out.set(item, '+');
  }
  return out;
}

/** PacketSize from a qSupported reply (hex, per the protocol), within sane bounds. */
export function packetSizeFrom(features: ReadonlyMap<string, string>, fallback: number): number {
  const v = features.get('PacketSize');
  if (v === undefined || !/^[0-9a-fA-F]{1,8}$/.test(v)) return fallback;
  const n = parseInt(v, 16);
  return Math.max(64, Math.min(n, MAX_REPLY_BYTES));
}

/** Why a stub that accepted the connection may stay silent at the first request. */
export function handshakeSilence(where: string, timeoutMs: number): string {
  return `${where} accepted the connection but did not answer within ${timeoutMs} ms (QEMU serves one debugger at a time: is another one attached?)`;
}

// ---------------------------------------------------------------------------------------------
// One request on the wire

/** How a request completes: with a reply packet, or as soon as the stub acknowledges it (c, s). */
export type Completion = 'reply' | 'ack';

/** What a driver must do after feeding an event to an exchange. */
export type Step =
  | { readonly kind: 'wait' }
  | { readonly kind: 'send'; readonly bytes: Buffer }
  | { readonly kind: 'done'; readonly payload: Buffer }
  | { readonly kind: 'fail'; readonly error: TargetError };

const WAIT: Step = { kind: 'wait' };
const DONE_EMPTY: Step = { kind: 'done', payload: Buffer.alloc(0) };

/** Retransmissions of one packet after `-` before giving up. */
export const MAX_RETRANSMITS = 5;
/** Corrupt packets from the stub tolerated (each answered with `-`) within one request. */
export const MAX_BAD_CHECKSUMS = 5;

/**
 * The state of one request between send and completion. Drivers answer each packet themselves
 * (`+`, or `-` for a bad checksum) and hand it here; this object decides what the packet means:
 *  - before the stub's `+`: a stop reply is asynchronous (the stub stopped the guest because our
 *    bytes arrived while it ran) and goes to `onStop`; any other packet is a stale reply and is
 *    dropped, as GDB itself does;
 *  - after the `+`: `O…` console output goes to `onConsole`, the first other packet is the reply.
 */
export class Exchange {
  acked = false;
  private retransmits = 0;
  private badChecksums = 0;

  constructor(
    readonly framed: Buffer,
    readonly completion: Completion,
    /** Short text naming the request in errors, e.g. "m 0x1000,8". */
    readonly what: string,
    private readonly onStop: (stop: StopReply) => void,
    private readonly onConsole: (text: string) => void = () => {},
  ) {}

  onEvent(ev: WireEvent): Step {
    switch (ev.kind) {
      case 'ack':
        if (this.acked) return WAIT;
        this.acked = true;
        return this.completion === 'ack' ? DONE_EMPTY : WAIT;
      case 'nack':
        if (this.acked) return WAIT;
        if (++this.retransmits > MAX_RETRANSMITS) {
          return { kind: 'fail', error: new TargetError(`gdbstub rejected request ${this.what} ${MAX_RETRANSMITS} times`) };
        }
        // Resend without the prefix: the stub is stopped and listening for a packet.
        return { kind: 'send', bytes: this.framed.subarray(this.framed.indexOf(DOLLAR)) };
      case 'packet': {
        if (!ev.checksumOk) {
          if (++this.badChecksums > MAX_BAD_CHECKSUMS) {
            return { kind: 'fail', error: new TargetError(`gdbstub kept sending corrupt packets during ${this.what}`) };
          }
          return WAIT; // the driver sent '-'; the stub retransmits
        }
        const p = ev.payload;
        if (!this.acked || this.completion === 'ack') {
          if (isStopReply(p)) this.onStop(parseStopReply(p));
          return WAIT;
        }
        const text = consoleOutput(p);
        if (text !== undefined) {
          this.onConsole(text);
          return WAIT;
        }
        return { kind: 'done', payload: p };
      }
    }
  }
}
