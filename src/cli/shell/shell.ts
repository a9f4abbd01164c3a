/**
 * The external shell: one guest, many commands, nothing installed in the guest. Every command
 * of the command line is available with the same flags and help (each line is parsed by the
 * same program), against a target opened once.
 */
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { isVmlensError } from '../../util/errors.ts';
import type { Session } from '../context.ts';
import { buildProgram, main } from '../main.ts';
import { complete } from './complete.ts';
import { splitWords } from './words.ts';

const HISTORY_SIZE = 1000;

export function historyFile(): string {
  const state = process.env.XDG_STATE_HOME || join(homedir(), '.local', 'state');
  return join(state, 'vmlens', 'history');
}

function loadHistory(file: string): string[] {
  try {
    return readFileSync(file, 'utf8').split('\n').filter((l) => l.trim().length > 0).slice(-HISTORY_SIZE).reverse();
  } catch {
    return [];
  }
}

function saveHistory(file: string, line: string): void {
  try {
    mkdirSync(dirname(file), { recursive: true });
    appendFileSync(file, `${line}\n`);
  } catch {
    // A read-only home must not stop the shell.
  }
}

export interface ShellOptions {
  readonly session: Session;
  /** Shown in the prompt: guest name, kernel release, paging. */
  readonly label: string;
  readonly input?: NodeJS.ReadableStream;
  readonly output?: NodeJS.WritableStream;
}

/**
 * Run one line; returns false when the shell should end. While a command runs, the terminal
 * leaves raw mode, so Ctrl-C reaches the process as SIGINT: commands that run until stopped
 * (ps --watch, dmesg --follow) and kernel calls handle it themselves; the shell's own listener
 * only keeps it from ending the shell.
 */
async function runLine(line: string, rl: Interface | undefined, tty?: NodeJS.ReadStream): Promise<boolean> {
  let words: string[];
  try {
    words = splitWords(line);
  } catch (e) {
    process.stderr.write(`vmlens: ${(e as Error).message}\n`);
    return true;
  }
  if (words.length === 0) return true;
  const [first, ...rest] = words;
  if (first === 'exit' || first === 'quit') return false;
  if (first === 'shell') {
    process.stderr.write('vmlens: already in the shell\n');
    return true;
  }
  if (first === 'help') {
    if (rest.length === 0) process.stdout.write(buildProgram().helpInformation());
    else await main([rest[0]!, '--help']);
    return true;
  }
  rl?.pause();
  const keepShell = (): void => undefined;
  process.on('SIGINT', keepShell);
  tty?.setRawMode(false);
  try {
    await main(words);
  } catch (e) {
    // main() reports every error itself; anything escaping is a bug, still not fatal here.
    process.stderr.write(`vmlens: ${isVmlensError(e) ? e.message : String(e)}\n`);
  } finally {
    tty?.setRawMode(true);
    process.off('SIGINT', keepShell);
    rl?.resume();
  }
  return true;
}

export async function runShell(opts: ShellOptions): Promise<void> {
  const input = opts.input ?? process.stdin;
  const output = opts.output ?? process.stdout;
  const interactive = (input as NodeJS.ReadStream).isTTY === true && (output as NodeJS.WriteStream).isTTY === true;
  const program = buildProgram();
  const file = historyFile();
  const rl = createInterface({
    input,
    output,
    terminal: interactive,
    historySize: HISTORY_SIZE,
    history: interactive ? loadHistory(file) : [],
    completer: interactive ? (line: string) => complete({ program, kernel: () => opts.session.kernel }, line) : undefined,
  });
  rl.setPrompt(`vmlens(${opts.label})> `);
  if (interactive) {
    rl.on('SIGINT', () => {
      // Ctrl-C drops the line being typed, as in a shell.
      rl.write('', { ctrl: true, name: 'u' });
      output.write('^C\n');
      rl.prompt();
    });
    rl.prompt();
  }
  for await (const line of rl) {
    if (interactive && line.trim()) saveHistory(file, line);
    if (!(await runLine(line, interactive ? rl : undefined, interactive ? (input as NodeJS.ReadStream) : undefined))) break;
    if (interactive) rl.prompt();
  }
  rl.close();
  if (interactive) output.write('\n');
}
