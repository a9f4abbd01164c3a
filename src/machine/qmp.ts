import { connect, type Socket } from 'node:net';
import { TargetError } from '../util/errors.ts';

/**
 * A small QMP client over a unix socket: greeting, capabilities negotiation, commands matched to
 * replies by id, events delivered to listeners, timeouts. QEMU serves one QMP client per monitor
 * at a time, so a second client connects at the socket level but never receives a greeting —
 * that case ends in a greeting timeout with a message saying so.
 */

export interface QmpVersion {
  readonly qemu: { readonly major: number; readonly minor: number; readonly micro: number };
  readonly package: string;
}

export interface QmpGreeting {
  readonly version: QmpVersion;
  readonly capabilities: readonly string[];
}

export interface QmpEvent {
  readonly event: string;
  readonly data?: Readonly<Record<string, unknown>>;
  readonly timestamp?: { readonly seconds: number; readonly microseconds: number };
}

export interface QmpConnectOptions {
  /** How long to wait for the socket and the greeting (ms). */
  readonly timeoutMs?: number;
  /** Default timeout for each command (ms); a command may override it. */
  readonly commandTimeoutMs?: number;
}

export interface QmpCommandOptions {
  readonly timeoutMs?: number;
}

/** QEMU refused a command: `errorClass` is QMP's class (GenericError, CommandNotFound…). */
export class QmpError extends TargetError {
  override name = 'QmpError';
  constructor(readonly command: string, readonly errorClass: string, readonly description: string) {
    super(`QMP ${command}: ${description}`);
  }
}

const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
/** A reply line larger than this is not something QEMU sends us; stop rather than buffer it. */
const MAX_LINE_BYTES = 256 * 1024 * 1024;

interface Pending {
  readonly command: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (e: Error) => void;
  readonly timer: NodeJS.Timeout;
}

type Message = Record<string, unknown>;

function isObject(v: unknown): v is Message {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export class QmpClient {
  private readonly pending = new Map<number, Pending>();
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  private nextId = 1;
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private closedReason: string | undefined;

  private constructor(
    private readonly socket: Socket,
    readonly path: string,
    readonly greeting: QmpGreeting,
    private readonly commandTimeoutMs: number,
  ) {}

  /** Connect, read the greeting and leave negotiation mode (`qmp_capabilities`). */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    // A caller's timeout bounds the whole wait; by default a busy monitor is waited for.
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const { socket, greeting, rest } = await openWhenFree(path, opts.timeoutMs ?? MONITOR_BUSY_WAIT_MS);
    const client = new QmpClient(socket, path, greeting, opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS);
    client.attach(rest);
    await client.execute('qmp_capabilities', undefined, { timeoutMs });
    return client;
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  /** Run a QMP command and return its `return` value. QEMU's refusals become QmpError. */
  execute<T = unknown>(command: string, args?: Readonly<Record<string, unknown>>, opts: QmpCommandOptions = {}): Promise<T> {
    if (this.closedReason !== undefined) return Promise.reject(new TargetError(this.closedReason));
    const id = this.nextId++;
    const message: Message = { execute: command, id };
    if (args !== undefined) message.arguments = args;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new TargetError(`QMP ${command}: no reply within ${timeoutMs} ms from ${this.path}`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(JSON.stringify(message) + '\n');
    });
  }

  /** Run a human-monitor (HMP) command line and return its text output. */
  async hmp(commandLine: string, opts: QmpCommandOptions = {}): Promise<string> {
    const out = await this.execute<unknown>('human-monitor-command', { 'command-line': commandLine }, opts);
    if (typeof out !== 'string') throw new TargetError(`QMP human-monitor-command "${commandLine}": reply is not text`);
    return out;
  }

  /** Listen to asynchronous events (STOP, RESUME, DUMP_COMPLETED…). Returns the unsubscribe function. */
  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Resolve with the next event named `name` (and matching `filter`), or reject after the timeout. */
  waitForEvent(name: string, timeoutMs: number, filter?: (e: QmpEvent) => boolean): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new TargetError(`QMP: no ${name} event within ${timeoutMs} ms from ${this.path}`));
      }, timeoutMs);
      const off = this.onEvent((e) => {
        if (e.event !== name || (filter && !filter(e))) return;
        clearTimeout(timer);
        off();
        resolve(e);
      });
    });
  }

  async close(): Promise<void> {
    if (this.closedReason === undefined) this.shutdown('QMP connection was closed');
    await new Promise<void>((resolve) => {
      if (this.socket.destroyed) resolve();
      else this.socket.once('close', () => resolve());
    });
  }

  private attach(rest: Buffer): void {
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('error', (e: NodeJS.ErrnoException) => this.shutdown(`QMP connection to ${this.path} failed: ${e.code ?? e.message}`));
    this.socket.on('close', () => this.shutdown(`QMP connection to ${this.path} closed (QEMU exited?)`));
    if (rest.length > 0) this.onData(rest);
    this.socket.resume();
  }

  private onData(chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(10, start); nl >= 0; nl = chunk.indexOf(10, start)) {
      this.buffered.push(chunk.subarray(start, nl));
      const line = Buffer.concat(this.buffered).toString('utf8');
      this.buffered = [];
      this.bufferedBytes = 0;
      start = nl + 1;
      if (line.trim() !== '') this.onLine(line);
      if (this.closedReason !== undefined) return;
    }
    if (start < chunk.length) {
      this.buffered.push(chunk.subarray(start));
      this.bufferedBytes += chunk.length - start;
      if (this.bufferedBytes > MAX_LINE_BYTES) this.shutdown(`QMP peer at ${this.path} sent an oversized message`);
    }
  }

  private onLine(line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      this.shutdown(`QMP peer at ${this.path} sent something that is not JSON`);
      return;
    }
    if (!isObject(msg)) return;
    if (typeof msg.event === 'string') {
      const event = msg as unknown as QmpEvent;
      for (const l of [...this.listeners]) {
        try {
          l(event);
        } catch {
          // A listener's failure is its own; the connection carries on.
        }
      }
      return;
    }
    const id = typeof msg.id === 'number' ? msg.id : this.oldestPendingId();
    if (id === undefined) return;
    const p = this.pending.get(id);
    if (!p) return; // a reply to a command that already timed out
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (isObject(msg.error)) {
      const cls = typeof msg.error.class === 'string' ? msg.error.class : 'GenericError';
      const desc = typeof msg.error.desc === 'string' ? msg.error.desc : 'command failed';
      p.reject(new QmpError(p.command, cls, desc));
    } else {
      p.resolve(msg.return);
    }
  }

  /** QEMU answers malformed requests without an id; they belong to the oldest request. */
  private oldestPendingId(): number | undefined {
    for (const id of this.pending.keys()) return id;
    return undefined;
  }

  private shutdown(reason: string): void {
    if (this.closedReason !== undefined) return;
    this.closedReason = reason;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new TargetError(`QMP ${p.command}: ${reason}`));
    }
    this.pending.clear();
    this.listeners.clear();
    this.socket.destroy();
  }
}

/** How long a command waits for a monitor another client holds. */
const MONITOR_BUSY_WAIT_MS = 30_000;
const BUSY = 'monitor busy';
const NO_GREETING = 'no QMP greeting within';

const CONNECT_ERRORS: Record<string, string> = {
  EAGAIN: BUSY,
  ENOENT: 'no such socket',
  ECONNREFUSED: 'nothing is listening (QEMU gone?)',
  ENOTSOCK: 'not a socket',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
};

/**
 * QEMU serves one QMP client per monitor at a time. While another holds it, a connection is
 * either refused with EAGAIN (the listen backlog is full) or accepted into the backlog with no
 * greeting until the other client leaves. Wait for the monitor to be free, a bounded time,
 * rather than fail a command because another tool is briefly talking to QEMU.
 */
async function openWhenFree(path: string, waitMs: number): Promise<{ socket: Socket; greeting: QmpGreeting; rest: Buffer }> {
  const deadline = Date.now() + waitMs;
  for (let delay = 20; ; delay = Math.min(delay * 2, 500)) {
    const left = Math.max(1, deadline - Date.now());
    try {
      return await openAndGreet(path, Math.min(DEFAULT_CONNECT_TIMEOUT_MS, left));
    } catch (e) {
      const busy = e instanceof TargetError && (e.message.endsWith(BUSY) || e.message.includes(NO_GREETING));
      if (!busy) throw e;
      if (Date.now() + delay >= deadline) {
        throw new TargetError(`${path}: no QMP greeting within ${waitMs} ms (another client holds the monitor, or this is not a QMP socket)`);
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/** Connect and read the first line: it must be QMP's greeting. */
function openAndGreet(path: string, timeoutMs: number): Promise<{ socket: Socket; greeting: QmpGreeting; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path });
    let got = Buffer.alloc(0);
    let done = false;
    const fail = (why: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      reject(new TargetError(`${path}: ${why}`));
    };
    const timer = setTimeout(
      () => fail(`no QMP greeting within ${timeoutMs} ms (not a QMP socket, or another client holds the monitor)`),
      timeoutMs,
    );
    socket.on('error', (e: NodeJS.ErrnoException) => fail(CONNECT_ERRORS[e.code ?? ''] ?? `cannot connect: ${e.code ?? e.message}`));
    socket.on('close', () => fail('closed before sending a QMP greeting (not a QMP socket?)'));
    socket.on('data', (chunk: Buffer) => {
      if (done) return;
      got = Buffer.concat([got, chunk]);
      const nl = got.indexOf(10);
      if (nl < 0) {
        if (got.length > 64 * 1024) fail('not a QMP socket (no greeting line)');
        return;
      }
      const line = got.subarray(0, nl).toString('utf8');
      const greeting = parseGreeting(line);
      if (!greeting) {
        fail(`not a QMP socket (it said: ${JSON.stringify(line.slice(0, 60))})`);
        return;
      }
      done = true;
      clearTimeout(timer);
      // Paused until the client attaches its own listeners, so no reply can slip past.
      socket.pause();
      socket.removeAllListeners();
      socket.on('error', () => undefined);
      resolve({ socket, greeting, rest: got.subarray(nl + 1) });
    });
  });
}

function parseGreeting(line: string): QmpGreeting | undefined {
  let msg: unknown;
  try {
    msg = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (!isObject(msg) || !isObject(msg.QMP)) return undefined;
  const q = msg.QMP;
  const version = isObject(q.version) ? q.version : {};
  const qemu = isObject(version.qemu) ? version.qemu : {};
  const num = (v: unknown): number => (typeof v === 'number' ? v : 0);
  return {
    version: {
      qemu: { major: num(qemu.major), minor: num(qemu.minor), micro: num(qemu.micro) },
      package: typeof version.package === 'string' ? version.package : '',
    },
    capabilities: Array.isArray(q.capabilities) ? q.capabilities.filter((c): c is string => typeof c === 'string') : [],
  };
}

/**
 * A QMP monitor used on demand: connected when a command needs it, let go with `release()` so
 * that other tools (and other vmlens commands) can reach a monitor QEMU serves to one client at
 * a time. A long-lived user — the shell, `ps --watch` — releases it between commands.
 */
export class QmpLink {
  private client: QmpClient | undefined;
  private connecting: Promise<QmpClient> | undefined;
  private closed = false;
  private inflight = 0;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly path: string,
    private readonly opts: QmpConnectOptions = {},
    client?: QmpClient,
  ) {
    this.client = client;
    if (client) this.releaseWhenIdle();
  }

  private async connected(): Promise<QmpClient> {
    if (this.closed) throw new TargetError(`${this.path}: the QMP link is closed`);
    if (this.client && !this.client.closed) return this.client;
    this.connecting ??= QmpClient.connect(this.path, this.opts).finally(() => {
      this.connecting = undefined;
    });
    this.client = await this.connecting;
    return this.client;
  }

  /**
   * Commands come in bursts (registers, then a pause, then a resume): keep the monitor for a
   * moment after the last one, then give it back so other clients are not locked out while
   * this one only reads memory.
   */
  private releaseWhenIdle(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.inflight === 0) void this.release();
    }, IDLE_RELEASE_MS);
    this.idleTimer.unref();
  }

  private async run<T>(fn: (c: QmpClient) => Promise<T>): Promise<T> {
    clearTimeout(this.idleTimer);
    this.inflight++;
    try {
      return await fn(await this.connected());
    } finally {
      if (--this.inflight === 0 && !this.closed) this.releaseWhenIdle();
    }
  }

  execute<T = unknown>(command: string, args?: Readonly<Record<string, unknown>>, opts?: QmpCommandOptions): Promise<T> {
    return this.run((c) => c.execute<T>(command, args, opts));
  }

  hmp(commandLine: string, opts?: QmpCommandOptions): Promise<string> {
    return this.run((c) => c.hmp(commandLine, opts));
  }

  /** Disconnect for now; the next command connects again. */
  async release(): Promise<void> {
    clearTimeout(this.idleTimer);
    const c = this.client;
    this.client = undefined;
    await c?.close();
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.release();
  }
}

/** How long an idle monitor connection is kept before it is given back. */
const IDLE_RELEASE_MS = 250;
