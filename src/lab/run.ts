import { spawn } from 'node:child_process';
import { TargetError } from '../util/errors.ts';

export interface ToolResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface ToolOptions {
  readonly cwd?: string;
  readonly env?: NodeJS.ProcessEnv;
  /**
   * Show the tool's own progress output on our stderr (a terminal) instead of capturing it.
   * Our stdout stays clean for data either way.
   */
  readonly passThrough?: boolean;
  /** Return a non-zero exit as a result instead of throwing. */
  readonly allowFailure?: boolean;
  /** Kill the tool after this long (it is then a failure). */
  readonly timeoutMs?: number;
}

/** Output kept per stream: enough for an error message, bounded whatever the tool prints. */
const MAX_CAPTURE = 4 * 1024 * 1024;

/**
 * Run a host tool to completion. A tool that is missing, killed or exits non-zero is a
 * TargetError whose one-line message carries the end of the tool's stderr.
 */
export function runTool(command: string, args: readonly string[], opts: ToolOptions = {}): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['ignore', opts.passThrough ? 2 : 'pipe', opts.passThrough ? 'inherit' : 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outLen = 0;
    let errLen = 0;
    child.stdout?.on('data', (b: Buffer) => {
      if (outLen < MAX_CAPTURE) out.push(b);
      outLen += b.length;
    });
    child.stderr?.on('data', (b: Buffer) => {
      if (errLen < MAX_CAPTURE) err.push(b);
      errLen += b.length;
    });
    let timedOut = false;
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, opts.timeoutMs);
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (timer) clearTimeout(timer);
      const why = e.code === 'ENOENT' ? 'is not installed' : `could not be started (${e.message})`;
      reject(new TargetError(`${command} ${why}`));
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      const result: ToolResult = {
        code: code ?? -1,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      };
      if (code === 0 || (opts.allowFailure && !timedOut && signal === null)) {
        resolve(result);
        return;
      }
      const how = timedOut ? `timed out after ${opts.timeoutMs} ms` : signal ? `was killed by ${signal}` : `failed (exit ${code})`;
      const detail = lastLine(result.stderr) || lastLine(result.stdout);
      reject(new TargetError(`${[command, ...args.slice(0, 3)].join(' ')} ${how}${detail ? `: ${detail}` : ''}`));
    });
  });
}

/** The last non-empty line of a tool's output, for one-line error messages. */
export function lastLine(text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  return lines[lines.length - 1] ?? '';
}
