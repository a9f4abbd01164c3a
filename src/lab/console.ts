import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { TargetError, UsageError } from '../util/errors.ts';

/**
 * A client for the lab guest's serial console: it runs one shell command in the guest and
 * returns exactly what the command printed. Tests use it as ground truth ("the guest's own
 * /proc, read through its console").
 *
 * How output is told apart from everything else on the line: each command is wrapped between
 * two printf calls that emit markers with a per-command token framed by 0x1E bytes. The
 * markers are written as backslash escapes, so an echo of the typed line can never look like
 * a marker; output is what lies between the real markers. The guest's tty turns "\n" into
 * "\r\n" (ONLCR); that is undone exactly.
 *
 * QEMU's socket chardev serves one client at a time and keeps later connections waiting in
 * the listen queue. So a GuestConsole holds its connection only while it has commands queued:
 * several processes (parallel test workers) then take turns, each for one burst of commands.
 */
export interface CommandResult {
  /** Everything the command wrote to stdout and stderr. */
  readonly output: string;
  readonly exitCode: number;
}

export const DEFAULT_COMMAND_TIMEOUT_MS = 60_000;
/** The guest tty's canonical mode holds at most 4095 bytes per input line. */
const MAX_LINE_BYTES = 4000;
/** Bytes before the begin marker kept while searching for it (prompts, stale output). */
const MAX_PREAMBLE = 64 * 1024;
const MAX_OUTPUT = 256 * 1024 * 1024;
const RS = 0x1e;
const CTRL_C = '\x03';

export class GuestConsole {
  private socket: Socket | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private queued = 0;
  private closed = false;
  private sequence = 0;
  private onData: ((chunk: Buffer) => void) | undefined;
  private onGone: ((why: string) => void) | undefined;

  private constructor(readonly socketPath: string) {}

  /** Connect and check that the guest's shell answers. */
  static async connect(socketPath: string, timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS): Promise<GuestConsole> {
    if (!existsSync(socketPath)) throw new TargetError(`no guest console at ${socketPath}`);
    const guest = new GuestConsole(socketPath);
    const { output } = await guest.exec('echo ok', timeoutMs);
    if (output !== 'ok\n') {
      guest.close();
      throw new TargetError(`guest console ${socketPath} answered '${output.slice(0, 40)}' instead of 'ok'`);
    }
    return guest;
  }

  /** Run a shell command in the guest (as root, stdin from /dev/null); its output, stderr included. */
  async run(command: string, timeoutMs?: number): Promise<string> {
    return (await this.exec(command, timeoutMs)).output;
  }

  /** Like run(), with the command's exit status. Commands run one at a time, in call order. */
  exec(command: string, timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS): Promise<CommandResult> {
    try {
      checkCommand(command);
    } catch (e) {
      return Promise.reject(e);
    }
    if (this.closed) return Promise.reject(new TargetError('guest console is closed'));
    this.queued++;
    const result = this.queue.then(() => this.runOne(command, timeoutMs));
    this.queue = result.catch(() => undefined).finally(() => {
      if (--this.queued === 0) this.release();
    });
    return result;
  }

  close(): void {
    this.closed = true;
    this.onGone?.('guest console was closed');
    this.release();
  }

  /** Drop the connection; `lastWords` are flushed to the guest first. */
  private release(lastWords?: string): void {
    if (lastWords !== undefined) this.socket?.end(lastWords);
    else this.socket?.destroy();
    this.socket = undefined;
  }

  private async runOne(command: string, timeoutMs: number): Promise<CommandResult> {
    if (this.closed) throw new TargetError('guest console is closed');
    const deadline = Date.now() + timeoutMs;
    const socket = this.socket ?? (this.socket = await this.open(deadline));
    const token = `${process.pid.toString(36)}x${(this.sequence++).toString(36)}x${randomBytes(4).toString('hex')}`;
    const begin = Buffer.from(`\x1eB${token}\x1e\r\n`, 'latin1');
    const endPrefix = Buffer.from(`\x1eE${token}:`, 'latin1');
    const wrapped =
      `printf '\\036B%s\\036\\n' ${token};(\n${command}\n) </dev/null 2>&1;` + `printf '\\036E%s:%d\\036\\n' ${token} $?\n`;

    return new Promise<CommandResult>((resolve, reject) => {
      let preamble: Buffer = Buffer.alloc(0);
      let started = false;
      const body: Buffer[] = [];
      let bodyLength = 0;
      let tail: Buffer = Buffer.alloc(0);
      const timer = setTimeout(
        () => settle(new TargetError(`guest command timed out after ${timeoutMs} ms: ${summary(command)}`)),
        Math.max(1, deadline - Date.now()),
      );
      const settle = (err: Error | undefined, value?: CommandResult) => {
        clearTimeout(timer);
        this.onData = undefined;
        this.onGone = undefined;
        if (err) {
          // Interrupt the command so that the shell is free for the next one, and leave the
          // connection: whatever the command still prints must not reach the next parser.
          this.release(CTRL_C);
          reject(err);
        } else resolve(value!);
      };
      this.onGone = (why) => settle(new TargetError(`${why} while running: ${summary(command)}`));
      this.onData = (chunk) => {
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
          else if (keep < 0) trimBody(body, -keep);
          resolveOutput(body, end.exitCode);
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
      const resolveOutput = (parts: Buffer[], exitCode: number) => {
        const text = Buffer.concat(parts).toString('utf8').replace(/\r\n/g, '\n');
        settle(undefined, { output: text, exitCode });
      };
      socket.write(wrapped);
    });
  }

  private open(deadline: number): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const attempt = () => {
        const s = connect(this.socketPath);
        s.once('connect', () => {
          s.removeAllListeners('error');
          s.on('data', (chunk: Buffer) => this.onData?.(chunk));
          s.on('error', () => undefined);
          s.on('close', () => {
            if (this.socket === s) this.socket = undefined;
            this.onGone?.('guest console connection closed');
          });
          resolve(s);
        });
        s.once('error', (e: NodeJS.ErrnoException) => {
          s.destroy();
          // A full listen queue (other clients waiting their turn) is worth waiting for.
          if (e.code === 'EAGAIN' && Date.now() < deadline) setTimeout(attempt, 20);
          else reject(new TargetError(`guest console ${this.socketPath}: ${e.code ?? e.message}`));
        });
      };
      attempt();
    });
  }
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
function trimBody(body: Buffer[], n: number): void {
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

function checkCommand(command: string): void {
  if (/[\x00-\x08\x0b-\x1f\x7f]/.test(command)) {
    throw new UsageError('guest command contains control characters (the tty would act on them)');
  }
  for (const line of command.split('\n')) {
    if (Buffer.byteLength(line) > MAX_LINE_BYTES) throw new UsageError(`guest command has a line over ${MAX_LINE_BYTES} bytes`);
  }
}

function summary(command: string): string {
  const one = command.replace(/\s+/g, ' ').trim();
  return one.length > 80 ? `${one.slice(0, 77)}...` : one;
}
