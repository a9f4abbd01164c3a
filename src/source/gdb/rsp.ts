/**
 * An asynchronous GDB remote-protocol client for QEMU's gdbstub, for vCPU control: stop and
 * resume, registers, breakpoints, single steps, memory. Requests go one at a time; stop replies
 * that arrive on their own (a breakpoint hit after `cont`, QEMU pausing the guest) are queued
 * for waitForStop().
 *
 * QEMU behaviours this client is built around (QEMU 7.2, gdbstub/gdbstub.c):
 *  - a new connection stops the guest, and the stub announces it with a `T02` stop reply when
 *    the guest was running (stoppedOnConnect);
 *  - any byte received while the guest runs stops it and is discarded; requests therefore carry
 *    a stop byte ahead of them (protocol.ts, REQUEST_PREFIX) and are refused while a `cont` or
 *    `step` this client started is running;
 *  - no no-ack mode: every packet is acknowledged;
 *  - `p`/`P` answer only after the target description was read, which readRegister() does first;
 *  - `D` (detach) removes breakpoints and resumes the guest; `?` also removes all breakpoints;
 *  - `Qqemu.PhyMemMode:1` makes `m`/`M` use guest-physical addresses; the mode belongs to the
 *    QEMU process, not to the connection, and outlives it.
 */
import net from 'node:net';
import { PhysicalAccessError, TargetError, UsageError } from '../../util/errors.ts';
import {
  ACK,
  type Completion,
  DEFAULT_TIMEOUT_MS,
  errorCode,
  Exchange,
  FALLBACK_PACKET_SIZE,
  FrameDecoder,
  framePacket,
  handshakeSilence,
  hexInto,
  INTERRUPT,
  isStopReply,
  leHex,
  leValue,
  NACK,
  packetSizeFrom,
  parseStopReply,
  parseSupported,
  parseThreadId,
  type StopReply,
  unescapeBinary,
  type WireEvent,
} from './protocol.ts';
import {
  decodeX86Registers,
  layoutFrom,
  parseTargetXml,
  type RegisterDesc,
  type RegisterLayout,
  X86_64_BUILTIN,
  X86_FIELD_TO_GDB,
  type X86RegisterName,
  type X86Registers,
} from './registers.ts';

export { DEFAULT_TIMEOUT_MS, type StopReply } from './protocol.ts';
export type { RegisterDesc, RegisterLayout, X86Registers } from './registers.ts';

export interface GdbConnectOptions {
  /** Time allowed for each request, and for connecting. Default 5000 ms. */
  readonly timeoutMs?: number;
}

export type BreakpointKind = 'sw' | 'hw';
export type WatchpointKind = 'write' | 'read' | 'access';

/** Stop replies kept for waitForStop() when nobody is waiting; older ones are dropped. */
const MAX_QUEUED_STOPS = 64;
/** qfThreadInfo/qsThreadInfo rounds, and thread ids, accepted from the stub. */
const MAX_THREAD_ROUNDS = 1024;
const MAX_THREADS = 4096;
/** Bounds on the target description: documents fetched, and bytes in all. */
const MAX_XML_DOCUMENTS = 32;
const MAX_XML_BYTES = 1 << 20;

interface Pending {
  readonly exchange: Exchange;
  /** Runs as the reply is taken, before any later byte is looked at (state changes of c/s). */
  readonly onDone: (() => void) | undefined;
  readonly resolve: (payload: Buffer) => void;
  readonly reject: (e: Error) => void;
  readonly timer: NodeJS.Timeout;
}

interface StopWaiter {
  readonly resolve: (s: StopReply) => void;
  readonly reject: (e: Error) => void;
  readonly timer: NodeJS.Timeout;
}

function hex(n: bigint | number): string {
  return n.toString(16);
}

function addrText(addr: bigint): string {
  return `0x${addr.toString(16)}`;
}

function describeConnectError(e: NodeJS.ErrnoException): string {
  switch (e.code) {
    case 'ECONNREFUSED':
      return 'connection refused (is a gdbstub listening there?)';
    case 'ETIMEDOUT':
      return 'timed out';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'host unreachable';
    case 'ENOTFOUND':
      return 'unknown host';
    default:
      return e.code ?? e.message;
  }
}

export class GdbRemote {
  private readonly decoder = new FrameDecoder();
  private queue: Promise<unknown> = Promise.resolve();
  private current: Pending | undefined;
  private broken: TargetError | undefined;
  private readonly stops: StopReply[] = [];
  private stopWaiter: StopWaiter | undefined;
  private runningNow = false;
  private last: StopReply | undefined;
  private sawStopOnConnect = false;
  private featureMap: ReadonlyMap<string, string> = new Map();
  private maxPacket = FALLBACK_PACKET_SIZE;
  private regLayout: RegisterLayout | undefined;
  private physical: boolean | undefined;
  private binaryWrites: boolean | undefined;
  /** Output of the monitor command in progress (qRcmd sends it as `O` packets). */
  private consoleText = '';

  private constructor(
    private readonly socket: net.Socket,
    readonly host: string,
    readonly port: number,
    readonly timeoutMs: number,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e: NodeJS.ErrnoException) => this.fail(new TargetError(`gdbstub connection to ${this.where} lost (${e.code ?? e.message})`)));
    socket.on('close', () => this.fail(new TargetError(`gdbstub at ${this.where} closed the connection (QEMU exited or another client took over?)`)));
  }

  /** Connect and negotiate (qSupported). QEMU stops the guest when a client connects. */
  static async connect(host: string, port: number, opts: GdbConnectOptions = {}): Promise<GdbRemote> {
    if (!Number.isInteger(port) || port <= 0 || port > 65535) throw new UsageError(`bad gdbstub port: ${port}`);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host, port });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new TargetError(`cannot connect to gdbstub at ${host}:${port}: timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        resolve(s);
      });
      s.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        s.destroy();
        reject(new TargetError(`cannot connect to gdbstub at ${host}:${port}: ${describeConnectError(e)}`));
      });
    });
    const remote = new GdbRemote(socket, host, port, timeoutMs);
    try {
      await remote.handshake();
    } catch (e) {
      remote.close();
      if (e instanceof TargetError && /did not answer/.test(e.message)) throw new TargetError(handshakeSilence(`gdbstub at ${host}:${port}`, timeoutMs));
      throw e;
    }
    return remote;
  }

  private get where(): string {
    return `${this.host}:${this.port}`;
  }

  private async handshake(): Promise<void> {
    const reply = await this.request('qSupported:xmlRegisters=i386', 'qSupported');
    this.featureMap = parseSupported(reply.toString('latin1'));
    this.maxPacket = packetSizeFrom(this.featureMap, FALLBACK_PACKET_SIZE);
    // The connection itself stopped a running guest when the stub announced a stop before answering.
    this.sawStopOnConnect = this.last !== undefined;
    this.runningNow = false;
  }

  /** Features from qSupported, e.g. PacketSize → '1000', 'qXfer:features:read' → '+'. */
  get features(): ReadonlyMap<string, string> {
    return this.featureMap;
  }

  /** Largest packet the stub accepts, in bytes (QEMU: 4096). */
  get packetSize(): number {
    return this.maxPacket;
  }

  /** Most bytes one `m` request may ask for: its hex reply must fit a packet. */
  get maxReadBytes(): number {
    return Math.floor(this.maxPacket / 2);
  }

  /** True while a cont() or step() this client issued has not been answered by a stop. */
  get running(): boolean {
    return this.runningNow;
  }

  /** The latest stop reply seen, whoever caused it. */
  get lastStop(): StopReply | undefined {
    return this.last;
  }

  /** True when the guest was running and connecting stopped it (QEMU 7.2 says so with `T02`). */
  get stoppedOnConnect(): boolean {
    return this.sawStopOnConnect;
  }

  // ------------------------------------------------------------------------------------------
  // Wire

  private onData(chunk: Buffer): void {
    try {
      this.decoder.push(chunk);
    } catch (e) {
      this.fail(e instanceof TargetError ? e : new TargetError(String(e)));
      return;
    }
    for (let ev = this.decoder.next(); ev; ev = this.decoder.next()) this.onEvent(ev);
  }

  private onEvent(ev: WireEvent): void {
    if (ev.kind === 'packet') this.socket.write(ev.checksumOk ? ACK : NACK);
    const cur = this.current;
    if (!cur) {
      if (ev.kind === 'packet' && ev.checksumOk && isStopReply(ev.payload)) this.noteStop(parseStopReply(ev.payload), true);
      return;
    }
    const step = cur.exchange.onEvent(ev);
    switch (step.kind) {
      case 'wait':
        return;
      case 'send':
        this.socket.write(step.bytes);
        return;
      case 'done':
        clearTimeout(cur.timer);
        this.current = undefined;
        cur.onDone?.();
        cur.resolve(step.payload);
        return;
      case 'fail':
        this.fail(step.error);
        return;
    }
  }

  /**
   * A stop reply arrived. `fresh` is false for stops seen while a request waited for its ack:
   * they happened before that request (QEMU stopping the guest because bytes arrived) and are
   * not the outcome of an earlier cont/step that someone may wait for.
   */
  private noteStop(stop: StopReply, fresh: boolean): void {
    this.last = stop;
    this.runningNow = false;
    if (!fresh) return;
    const w = this.stopWaiter;
    if (w) {
      this.stopWaiter = undefined;
      clearTimeout(w.timer);
      w.resolve(stop);
      return;
    }
    this.stops.push(stop);
    if (this.stops.length > MAX_QUEUED_STOPS) this.stops.shift();
  }

  /** The connection is unusable: reject everything outstanding, now and later. */
  private fail(e: TargetError): void {
    if (!this.broken) this.broken = e;
    const cur = this.current;
    if (cur) {
      this.current = undefined;
      clearTimeout(cur.timer);
      cur.reject(this.broken);
    }
    const w = this.stopWaiter;
    if (w) {
      this.stopWaiter = undefined;
      clearTimeout(w.timer);
      w.reject(this.broken);
    }
    this.socket.destroy();
  }

  /**
   * Send one request and resolve with its reply payload (run-length decoded, `}` escapes left
   * in). Requests are serialized. `completion: 'ack'` resolves on the stub's `+` (for c/s).
   */
  request(payload: string | Uint8Array, what?: string, completion: Completion = 'reply'): Promise<Buffer> {
    return this.send(payload, what, completion, undefined);
  }

  private send(payload: string | Uint8Array, what: string | undefined, completion: Completion, onDone: (() => void) | undefined): Promise<Buffer> {
    const label = what ?? (typeof payload === 'string' ? payload.slice(0, 40) : 'binary packet');
    const run = (): Promise<Buffer> => {
      if (this.broken) return Promise.reject(this.broken);
      if (this.runningNow) {
        return Promise.reject(new TargetError(`gdbstub request ${label} while the target runs: interrupt() or waitForStop() first`));
      }
      return new Promise<Buffer>((resolve, reject) => {
        const exchange = new Exchange(framePacket(payload), completion, label, (s) => this.noteStop(s, false), (t) => this.onConsoleText(t));
        const timer = setTimeout(() => {
          this.fail(new TargetError(`gdbstub at ${this.where} did not answer ${label} within ${this.timeoutMs} ms; connection closed`));
        }, this.timeoutMs);
        this.current = { exchange, onDone, resolve, reject, timer };
        this.socket.write(exchange.framed);
      });
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  private onConsoleText(t: string): void {
    // Bounded: monitor output beyond this is dropped.
    if (this.consoleText.length < MAX_XML_BYTES) this.consoleText += t;
  }

  private async requestOk(payload: string, what: string): Promise<void> {
    const r = await this.request(payload, what);
    const text = r.toString('latin1');
    if (text === 'OK') return;
    if (text === '') throw new TargetError(`gdbstub does not support ${what}`);
    throw new TargetError(`gdbstub refused ${what}: ${text.slice(0, 40)}`);
  }

  // ------------------------------------------------------------------------------------------
  // Memory

  /**
   * Switch `m`/`M` between virtual (the selected vCPU's paging) and guest-physical addresses.
   * The mode is QEMU-wide and survives this connection: put it back before closing.
   */
  async setPhysicalMode(on: boolean): Promise<void> {
    await this.requestOk(`Qqemu.PhyMemMode:${on ? 1 : 0}`, 'physical memory mode (Qqemu.PhyMemMode)');
    this.physical = on;
  }

  /** Whether `m`/`M` use physical addresses now (asks the stub). */
  async physicalMode(): Promise<boolean> {
    const r = (await this.request('qqemu.PhyMemMode', 'qqemu.PhyMemMode')).toString('latin1');
    if (r !== '0' && r !== '1') throw new TargetError(`gdbstub does not report a physical memory mode (reply ${JSON.stringify(r.slice(0, 20))})`);
    this.physical = r === '1';
    return this.physical;
  }

  private memoryError(addr: bigint, len: number, why: string): Error {
    if (this.physical && addr <= BigInt(Number.MAX_SAFE_INTEGER)) return new PhysicalAccessError(Number(addr), len, why);
    return new TargetError(`${this.physical ? 'physical' : 'virtual'} ${addrText(addr)} (+${len}) ${why}`);
  }

  /**
   * Read `len` bytes at `addr` (virtual, or physical after setPhysicalMode(true)), in requests
   * of at most maxReadBytes. An `Exx` reply becomes an error naming the address.
   */
  async readMemory(addr: bigint, len: number): Promise<Uint8Array> {
    if (!Number.isInteger(len) || len < 0) throw new UsageError(`bad read length: ${len}`);
    const out = new Uint8Array(len);
    const chunk = this.maxReadBytes;
    for (let done = 0; done < len; ) {
      const n = Math.min(chunk, len - done);
      const a = BigInt.asUintN(64, addr + BigInt(done));
      const r = await this.request(`m${hex(a)},${hex(n)}`, `m ${addrText(a)},${n}`);
      const code = errorCode(r);
      if (code !== undefined) throw this.memoryError(a, n, `could not be read (gdbstub error 0x${code.toString(16)})`);
      if (r.length === 0) throw new TargetError('gdbstub does not support memory reads (m)');
      // A stub may return fewer bytes than asked (a partial read up to an inaccessible page).
      if (r.length % 2 !== 0 || r.length > 2 * n || !hexInto(r, 0, out, done, r.length / 2)) {
        throw new TargetError(`gdbstub sent a malformed reply to m ${addrText(a)},${n}`);
      }
      done += r.length / 2;
    }
    return out;
  }

  /**
   * Write `data` at `addr`. Uses binary `X` packets where the stub has them (probed once with an
   * empty write, as GDB does), hex `M` packets otherwise (QEMU 7.2).
   */
  async writeMemory(addr: bigint, data: Uint8Array): Promise<void> {
    if (this.binaryWrites === undefined) {
      const r = (await this.request(`X${hex(addr)},0:`, 'X probe')).toString('latin1');
      this.binaryWrites = r === 'OK';
    }
    // Fits the worst case: every byte escaped (X) or two hex digits (M), plus the header.
    const chunk = Math.max(1, (this.maxPacket - 32) >> 1);
    for (let done = 0; done < data.length; ) {
      const n = Math.min(chunk, data.length - done);
      const a = BigInt.asUintN(64, addr + BigInt(done));
      const part = data.subarray(done, done + n);
      let r: Buffer;
      if (this.binaryWrites) {
        const head = Buffer.from(`X${hex(a)},${hex(n)}:`, 'latin1');
        r = await this.request(Buffer.concat([head, part]), `X ${addrText(a)},${n}`);
      } else {
        r = await this.request(`M${hex(a)},${hex(n)}:${Buffer.from(part).toString('hex')}`, `M ${addrText(a)},${n}`);
      }
      const text = r.toString('latin1');
      if (text !== 'OK') {
        const code = errorCode(r);
        if (code !== undefined) throw this.memoryError(a, n, `could not be written (gdbstub error 0x${code.toString(16)})`);
        throw new TargetError(`gdbstub refused a write at ${addrText(a)}: ${JSON.stringify(text.slice(0, 40))}`);
      }
      done += n;
    }
  }

  // ------------------------------------------------------------------------------------------
  // Registers

  /**
   * The stub's register layout, from its target description (read once). Reading it is also what
   * enables `p`/`P` on QEMU 7.2.
   */
  async registerLayout(): Promise<RegisterLayout> {
    if (this.regLayout) return this.regLayout;
    if (this.featureMap.get('qXfer:features:read') !== '+') {
      this.regLayout = X86_64_BUILTIN;
      return this.regLayout;
    }
    const regs: { name: string; regnum: number; bits: number }[] = [];
    const todo = ['target.xml'];
    const seen = new Set<string>();
    let total = 0;
    let next = 0;
    while (todo.length) {
      const annex = todo.shift()!;
      if (seen.has(annex)) continue;
      seen.add(annex);
      if (seen.size > MAX_XML_DOCUMENTS) throw new TargetError(`gdbstub target description includes more than ${MAX_XML_DOCUMENTS} documents`);
      const doc = await this.readXfer('features', annex, MAX_XML_BYTES - total);
      total += doc.length;
      const parsed = parseTargetXml(doc, next);
      regs.push(...parsed.regs);
      next = parsed.next;
      todo.push(...parsed.includes);
    }
    this.regLayout = regs.length ? layoutFrom(regs, 'target-description') : X86_64_BUILTIN;
    return this.regLayout;
  }

  /** One qXfer object, read in pieces (`m…` more, `l…` last). */
  private async readXfer(object: string, annex: string, limit: number): Promise<string> {
    const parts: Buffer[] = [];
    let offset = 0;
    const ask = Math.max(16, this.maxPacket - 16);
    for (;;) {
      const r = await this.request(`qXfer:${object}:read:${annex}:${hex(offset)},${hex(ask)}`, `qXfer ${object} ${annex}`);
      const kind = r[0];
      if (kind !== 0x6d /* m */ && kind !== 0x6c /* l */) {
        throw new TargetError(`gdbstub could not send ${annex}: ${JSON.stringify(r.toString('latin1').slice(0, 40))}`);
      }
      const data = unescapeBinary(r.subarray(1));
      parts.push(data);
      offset += data.length;
      if (offset > limit) throw new TargetError(`gdbstub ${object} object ${annex} exceeds ${limit} bytes`);
      if (kind === 0x6c || data.length === 0) break;
    }
    return Buffer.concat(parts).toString('utf8');
  }

  private async describe(reg: number | string): Promise<RegisterDesc> {
    const layout = await this.registerLayout();
    const desc = typeof reg === 'string' ? layout.byName.get(reg) : layout.registers.find((r) => r.regnum === reg);
    if (!desc) throw new UsageError(`no register ${typeof reg === 'string' ? `"${reg}"` : `number ${reg}`} in the target`);
    return desc;
  }

  /** All general, segment and control registers of the selected vCPU (one `g`). */
  async readRegisters(): Promise<X86Registers> {
    const layout = await this.registerLayout();
    const r = await this.request('g', 'g');
    const code = errorCode(r);
    if (code !== undefined) throw new TargetError(`gdbstub could not read registers (error 0x${code.toString(16)})`);
    return decodeX86Registers(layout, r);
  }

  /** One register by number or target-description name (e.g. 'cr3', 'xmm0'), via `p`. */
  async readRegister(reg: number | string): Promise<bigint> {
    const desc = await this.describe(reg);
    const r = await this.request(`p${hex(desc.regnum)}`, `p ${desc.name}`);
    if (r.length === 0) throw new TargetError('gdbstub does not support reading single registers (p)');
    const code = errorCode(r);
    if (code !== undefined) throw new TargetError(`gdbstub could not read register ${desc.name} (error 0x${code.toString(16)})`);
    const v = r.length % 2 === 0 ? leValue(r, 0, r.length / 2) : undefined;
    if (v === undefined) throw new TargetError(`gdbstub sent a malformed value for register ${desc.name}`);
    return v;
  }

  /** Set one register (`P`). The value is sent at the register's full size, little-endian. */
  async writeRegister(reg: number | string, value: bigint): Promise<void> {
    const desc = await this.describe(reg);
    await this.requestOk(`P${hex(desc.regnum)}=${leHex(value, Math.ceil(desc.bits / 8))}`, `setting register ${desc.name}`);
  }

  /**
   * Set several registers, in the order given. One `P` each rather than one `G`: QEMU sizes some
   * fields of `G` by the vCPU's current mode (32-bit outside long mode), so a `G` built from the
   * 64-bit layout would be misread in real or protected mode.
   */
  async writeRegisters(values: Partial<X86Registers>): Promise<void> {
    for (const [field, value] of Object.entries(values) as [X86RegisterName, bigint | undefined][]) {
      if (value === undefined) continue;
      const gdbName = X86_FIELD_TO_GDB[field];
      if (!gdbName) throw new UsageError(`no x86-64 register field "${field}"`);
      await this.writeRegister(gdbName, value);
    }
  }

  // ------------------------------------------------------------------------------------------
  // Breakpoints and execution

  /** Breakpoint at a guest address (for QEMU's TCG: the linear address, i.e. CS base + IP). */
  async insertBreakpoint(addr: bigint, kind: BreakpointKind = 'sw'): Promise<void> {
    await this.requestOk(`Z${kind === 'sw' ? 0 : 1},${hex(addr)},1`, `${kind} breakpoint at ${addrText(addr)}`);
  }

  async removeBreakpoint(addr: bigint, kind: BreakpointKind = 'sw'): Promise<void> {
    await this.requestOk(`z${kind === 'sw' ? 0 : 1},${hex(addr)},1`, `removing ${kind} breakpoint at ${addrText(addr)}`);
  }

  /** Data watchpoint of `len` bytes (Z2 write, Z3 read, Z4 access). */
  async insertWatchpoint(addr: bigint, len: number, kind: WatchpointKind = 'write'): Promise<void> {
    const type = kind === 'write' ? 2 : kind === 'read' ? 3 : 4;
    await this.requestOk(`Z${type},${hex(addr)},${hex(len)}`, `${kind} watchpoint at ${addrText(addr)}`);
  }

  async removeWatchpoint(addr: bigint, len: number, kind: WatchpointKind = 'write'): Promise<void> {
    const type = kind === 'write' ? 2 : kind === 'read' ? 3 : 4;
    await this.requestOk(`z${type},${hex(addr)},${hex(len)}`, `removing ${kind} watchpoint at ${addrText(addr)}`);
  }

  private async resume(packet: 'c' | 's'): Promise<void> {
    // The stop can arrive in the same read as the ack, so the state changes as the ack is taken.
    await this.send(packet, packet === 'c' ? 'continue' : 'step', 'ack', () => {
      // Stops queued before this resume describe an earlier state.
      this.stops.length = 0;
      this.runningNow = true;
    });
  }

  /**
   * Resume all vCPUs. Returns once the stub accepted; the stop comes to waitForStop(). QEMU stops
   * again at once, without executing anything, when a vCPU resumes on a breakpoint's address:
   * remove that breakpoint and step() past it first, as GDB does.
   */
  async cont(): Promise<void> {
    await this.resume('c');
  }

  /**
   * Execute one instruction on the vCPU selected for execution (selectThread 'c') and return the
   * stop. QEMU lets the other vCPUs run meanwhile. If no stop comes in `timeoutMs` (a `hlt`
   * waiting for an interrupt that single-stepping masks) the target is left running.
   */
  async step(timeoutMs = this.timeoutMs): Promise<StopReply> {
    await this.resume('s');
    return this.waitForStop(timeoutMs);
  }

  /**
   * The next stop after the last cont()/step(), at once when it already came. Rejects when the
   * target is not running and no stop is queued, or on timeout (the target keeps running).
   */
  waitForStop(timeoutMs = this.timeoutMs): Promise<StopReply> {
    if (this.broken) return Promise.reject(this.broken);
    const queued = this.stops.shift();
    if (queued) return Promise.resolve(queued);
    if (!this.runningNow) return Promise.reject(new TargetError('the target is not running: nothing to wait for'));
    if (this.stopWaiter) return Promise.reject(new UsageError('waitForStop() is already waiting'));
    return new Promise<StopReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.stopWaiter = undefined;
        reject(new TargetError(`the target did not stop within ${timeoutMs} ms`));
      }, timeoutMs);
      this.stopWaiter = { resolve, reject, timer };
    });
  }

  /**
   * Stop a target that cont()/step() set running, and return the stop (QEMU: signal 2).
   * Resolves undefined when it was not running.
   */
  async interrupt(timeoutMs = this.timeoutMs): Promise<StopReply | undefined> {
    if (this.broken) throw this.broken;
    if (!this.runningNow) return undefined;
    const stop = this.waitForStop(timeoutMs);
    this.socket.write(INTERRUPT);
    return stop;
  }

  /** Why the target is stopped (`?`). QEMU also removes all breakpoints when asked this. */
  async stopReason(): Promise<StopReply> {
    const r = await this.request('?', '?');
    if (!isStopReply(r)) throw new TargetError(`gdbstub sent a malformed reply to ?: ${JSON.stringify(r.toString('latin1').slice(0, 40))}`);
    const stop = parseStopReply(r);
    this.last = stop;
    return stop;
  }

  // ------------------------------------------------------------------------------------------
  // Threads (QEMU: one per vCPU, numbered from 1)

  async threads(): Promise<number[]> {
    const ids: number[] = [];
    let r = await this.request('qfThreadInfo', 'qfThreadInfo');
    for (let round = 0; ; round++) {
      const text = r.toString('latin1');
      if (text === 'l' || text === '') break;
      if (!text.startsWith('m') || round >= MAX_THREAD_ROUNDS) throw new TargetError(`gdbstub sent a malformed thread list: ${JSON.stringify(text.slice(0, 40))}`);
      for (const part of text.slice(1).split(',')) {
        const id = parseThreadId(part);
        if (id === undefined) throw new TargetError(`gdbstub sent a malformed thread id: ${JSON.stringify(part.slice(0, 20))}`);
        ids.push(id);
        if (ids.length > MAX_THREADS) throw new TargetError(`gdbstub lists more than ${MAX_THREADS} threads`);
      }
      r = await this.request('qsThreadInfo', 'qsThreadInfo');
    }
    return ids;
  }

  /** Direct register/memory requests ('g'), execution ('c') or both to one vCPU thread. */
  async selectThread(thread: number, op: 'g' | 'c' | 'both' = 'both'): Promise<void> {
    if (!Number.isInteger(thread) || thread <= 0) throw new UsageError(`bad thread id: ${thread}`);
    if (op !== 'c') await this.requestOk(`Hg${hex(thread)}`, `selecting thread ${thread}`);
    if (op !== 'g') await this.requestOk(`Hc${hex(thread)}`, `selecting thread ${thread}`);
  }

  /** A QEMU monitor (HMP) command through the stub (`qRcmd`); returns its output. */
  async monitor(command: string): Promise<string> {
    this.consoleText = '';
    await this.requestOk(`qRcmd,${Buffer.from(command, 'utf8').toString('hex')}`, `monitor command "${command}"`);
    const text = this.consoleText;
    this.consoleText = '';
    return text;
  }

  // ------------------------------------------------------------------------------------------
  // Ending

  /** Detach (`D`): QEMU removes breakpoints and resumes the guest. Then close. */
  async detach(): Promise<void> {
    // Allowed while running: the request prefix stops the guest first, and D resumes it.
    this.runningNow = false;
    try {
      await this.requestOk('D', 'detach');
    } finally {
      this.close();
    }
  }

  /** Close the connection. The guest stays as it is (stopped, unless a cont() is in progress). */
  close(): void {
    if (!this.broken) this.broken = new TargetError(`gdbstub connection to ${this.where} is closed`);
    this.fail(this.broken);
  }
}
