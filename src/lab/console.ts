import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { TargetError, UsageError } from '../util/errors.ts';
import { acquireLock } from './lock.ts';

/**
 * A client for a lab guest's root shell: it runs one shell command in the guest and returns
 * exactly what the command printed. Tests use it as ground truth ("the guest's own /proc,
 * read through its console").
 *
 * Output is told apart from everything else by two printf calls around each command that emit
 * markers with a per-command token framed by 0x1E bytes; the markers are typed as backslash
 * escapes, so an echo of the typed line never looks like one. The command itself goes through
 * `eval` of a single-quoted string, so even a syntax error in it ends with the end marker.
 *
 * Two ways for the output to come back:
 * - on the shell's own tty (any console, e.g. the serial ttyS0): the tty turns "\n" into "\r\n"
 *   (ONLCR), which is undone exactly; a 16550 UART under TCG moves ~100-200 KB/s;
 * - through a raw virtio-serial port (`dataSocket`) that the lab guest's command shell holds
 *   open as fd 3: no tty processing and ~10 MB/s, so `cat /proc/kallsyms` is quick.
 *
 * QEMU serves one client per socket. A GuestConsole connects only while it has commands queued
 * and takes a lock file beside the socket meanwhile, so several processes (parallel test
 * workers) take turns, one burst of commands each.
 */
export interface CommandResult {
  /** Everything the command wrote to stdout and stderr. */
  readonly output: string;
  readonly exitCode: number;
}

export interface GuestConsoleOptions {
  /** Socket of the guest's raw output port, where the shell's fd 3 leads. */
  readonly dataSocket?: string;
  /** For the first command, which checks that the shell answers. */
  readonly timeoutMs?: number;
}

export const DEFAULT_COMMAND_TIMEOUT_MS = 60_000;
/** Waiting for other processes' turns at the console. */
const LOCK_TIMEOUT_MS = 10 * 60_000;
/**
 * The guest tty's canonical mode holds at most 4095 bytes per input line; the markers around
 * the command share its first and last lines.
 */
const MAX_LINE_BYTES = 3800;
/** Bytes before the begin marker kept while searching for it (prompts, stale output). */
const MAX_PREAMBLE = 64 * 1024;
const MAX_OUTPUT = 256 * 1024 * 1024;
const RS = 0x1e;
const CTRL_C = '\x03';
const LAST_WORDS_MS = 300;

interface Session {
  readonly tty: Socket;
  readonly data: Socket | undefined;
  readonly release: () => void;
}

export class GuestConsole {
  private session: Session | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private queued = 0;
  private closed = false;
  private sequence = 0;
  private onOutput: ((chunk: Buffer) => void) | undefined;
  private onGone: ((why: string) => void) | undefined;

  private constructor(
    readonly socketPath: string,
    readonly dataSocket: string | undefined,
  ) {}

  /** Connect to a shell's tty socket (and its output port, if given); check that it answers. */
  static async connect(socketPath: string, opts: GuestConsoleOptions = {}): Promise<GuestConsole> {
    for (const p of [socketPath, opts.dataSocket]) {
      if (p !== undefined && !existsSync(p)) throw new TargetError(`no guest console at ${p}`);
    }
    const guest = new GuestConsole(socketPath, opts.dataSocket);
    const { output } = await guest.exec('echo ok', opts.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS).catch((e: unknown) => {
      guest.close();
      throw e;
    });
    if (output !== 'ok\n') {
      guest.close();
      throw new TargetError(`guest console ${socketPath} answered '${output.slice(0, 40)}' instead of 'ok'`);
    }
    return guest;
  }

  /** The lab guest's command shell (hvc0) with its fast output port. */
  static forLab(lab: { readonly shellSocket: string; readonly dataSocket: string }, timeoutMs?: number): Promise<GuestConsole> {
    return GuestConsole.connect(lab.shellSocket, { dataSocket: lab.dataSocket, ...(timeoutMs ? { timeoutMs } : {}) });
  }

  /** Run a shell command in the guest (as root, stdin from /dev/null); its output, stderr included. */
  async run(command: string, timeoutMs?: number): Promise<string> {
    return (await this.exec(command, timeoutMs)).output;
  }

  /** Like run(), with the command's exit status. Commands run one at a time, in call order. */
  exec(command: string, timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS): Promise<CommandResult> {
    let quoted: string;
    try {
      quoted = quoteCommand(command);
    } catch (e) {
      return Promise.reject(e);
    }
    if (this.closed) return Promise.reject(new TargetError('guest console is closed'));
    this.queued++;
    const result = this.queue.then(() => this.runOne(command, quoted, timeoutMs));
    this.queue = result
      .catch(() => undefined)
      .finally(() => {
        if (--this.queued === 0) this.endSession();
      });
    return result;
  }

  close(): void {
    this.closed = true;
    this.onGone?.('guest console was closed');
    this.endSession();
  }

  /**
   * Leave the console to others. `lastWords` are sent to the shell first, and given a moment
   * to get there: QEMU drops unread input when a client hangs up.
   */
  private endSession(lastWords?: string): void {
    const s = this.session;
    if (!s) return;
    this.session = undefined;
    const hangUp = () => {
      s.tty.destroy();
      s.data?.destroy();
      s.release();
    };
    if (lastWords === undefined) return hangUp();
    s.tty.write(lastWords);
    setTimeout(hangUp, LAST_WORDS_MS);
  }

  private async startSession(): Promise<Session> {
    const release = await acquireLock(`${this.socketPath}.lock`, `the guest console ${this.socketPath}`, LOCK_TIMEOUT_MS);
    let tty: Socket | undefined;
    try {
      tty = await openSocket(this.socketPath);
      const data = this.dataSocket === undefined ? undefined : await openSocket(this.dataSocket);
      const session: Session = { tty, data, release };
      const output = data ?? tty;
      output.on('data', (chunk: Buffer) => this.onOutput?.(chunk));
      // With a data port the tty only carries prompts: read and drop them.
      if (data) tty.on('data', () => undefined);
      for (const s of data ? [tty, data] : [tty]) {
        s.on('close', () => {
          if (this.session !== session) return;
          this.endSession();
          this.onGone?.('guest console connection closed');
        });
      }
      return session;
    } catch (e) {
      tty?.destroy();
      release();
      throw e;
    }
  }

  private async runOne(command: string, quoted: string, timeoutMs: number): Promise<CommandResult> {
    if (this.closed) throw new TargetError('guest console is closed');
    const session = this.session ?? (this.session = await this.startSession());
    const token = `${process.pid.toString(36)}x${(this.sequence++).toString(36)}x${randomBytes(4).toString('hex')}`;
    // On a tty, "\n" arrives as "\r\n"; through the data port, as is.
    const begin = Buffer.from(`\x1eB${token}\x1e${session.data ? '\n' : '\r\n'}`, 'latin1');
    const endPrefix = Buffer.from(`\x1eE${token}:`, 'latin1');
    const inner = `printf '\\036B%s\\036\\n' ${token};(eval ${quoted}) </dev/null 2>&1;printf '\\036E%s:%d\\036\\n' ${token} $?`;
    const line = session.data ? `{ ${inner};} >&3\n` : `${inner}\n`;
    const normalize = session.data === undefined;

    return new Promise<CommandResult>((resolve, reject) => {
      let preamble: Buffer = Buffer.alloc(0);
      let started = false;
      const body: Buffer[] = [];
      let bodyLength = 0;
      let tail: Buffer = Buffer.alloc(0);
      const settle = (err: Error | undefined, value?: CommandResult) => {
        clearTimeout(timer);
        this.onOutput = undefined;
        this.onGone = undefined;
        if (err) {
          // Interrupt the command so that the shell is free for the next one, and drop the
          // connection: whatever the command still prints must not reach the next parser.
          this.endSession(CTRL_C);
          reject(err);
        } else resolve(value!);
      };
      const timer = setTimeout(
        () => settle(new TargetError(`guest command timed out after ${timeoutMs} ms: ${summary(command)}`)),
        timeoutMs,
      );
      this.onGone = (why) => settle(new TargetError(`${why} while running: ${summary(command)}`));
      this.onOutput = (chunk) => {
        if (!started) {
          preamble = preamble.length ? Buffer.concat([preamble, chunk]) : chunk;
          const at = preamble.indexOf(begin);
          if (at < 0) {
            if (preamble.length > MAX_PREAMBLE) preamble = preamble.subarray(preamble.length - begin.length);
            return;
          }
          started = true;
          chunk = preamble.subarray(at + begin.length);
          preamble = Buffer.alloc(0);
        }
        // Search the end marker only in new bytes plus a marker-sized tail of the old ones.
        const window = tail.length ? Buffer.concat([tail, chunk]) : chunk;
        const end = findEnd(window, endPrefix);
        if (end) {
          const keep = end.at - tail.length;
          if (keep > 0) body.push(chunk.subarray(0, keep));
          else if (keep < 0) trimEnd(body, -keep);
          const raw = Buffer.concat(body).toString('utf8');
          settle(undefined, { output: normalize ? raw.replace(/\r\n/g, '\n') : raw, exitCode: end.exitCode });
          return;
        }
        body.push(chunk);
        bodyLength += chunk.length;
        if (bodyLength > MAX_OUTPUT) {
          settle(new TargetError(`guest command printed more than ${MAX_OUTPUT} bytes: ${summary(command)}`));
          return;
        }
        tail = window.subarray(Math.max(0, window.length - endPrefix.length - 16));
      };
      session.tty.write(line);
    });
  }
}

/** Connect to a QEMU chardev socket, waiting while its listen queue is full. */
function openSocket(path: string): Promise<Socket> {
  const deadline = Date.now() + 10_000;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const s = connect(path);
      s.once('connect', () => {
        s.removeAllListeners('error');
        s.on('error', () => undefined);
        resolve(s);
      });
      s.once('error', (e: NodeJS.ErrnoException) => {
        s.destroy();
        if (e.code === 'EAGAIN' && Date.now() < deadline) setTimeout(attempt, 20);
        else reject(new TargetError(`guest console ${path}: ${e.code ?? e.message}`));
      });
    };
    attempt();
  });
}

/** Where the end marker starts in `window`, and the exit status it carries. */
function findEnd(window: Buffer, endPrefix: Buffer): { at: number; exitCode: number } | undefined {
  const at = window.indexOf(endPrefix);
  if (at < 0) return undefined;
  const statusStart = at + endPrefix.length;
  const close = window.indexOf(RS, statusStart);
  if (close < 0 || close - statusStart > 4) return undefined;
  const exitCode = Number(window.subarray(statusStart, close).toString('latin1'));
  return Number.isInteger(exitCode) ? { at, exitCode } : undefined;
}

/** Drop `n` bytes from the end of the collected output (they were the start of the marker). */
function trimEnd(body: Buffer[], n: number): void {
  while (n > 0 && body.length) {
    const last = body[body.length - 1]!;
    if (last.length <= n) {
      body.pop();
      n -= last.length;
    } else {
      body[body.length - 1] = last.subarray(0, last.length - n);
      n = 0;
    }
  }
}

/** The command as one single-quoted shell word, checked to pass through the guest's tty. */
function quoteCommand(command: string): string {
  if (/[\x00-\x08\x0b-\x1f\x7f]/.test(command)) {
    throw new UsageError('guest command contains control characters (the tty would act on them)');
  }
  const quoted = `'${command.replace(/'/g, `'\\''`)}'`;
  for (const line of quoted.split('\n')) {
    if (Buffer.byteLength(line) > MAX_LINE_BYTES) throw new UsageError(`guest command has a line over ${MAX_LINE_BYTES} bytes`);
  }
  return quoted;
}

function summary(command: string): string {
  const one = command.replace(/\s+/g, ' ').trim();
  return one.length > 80 ? `${one.slice(0, 77)}...` : one;
}
