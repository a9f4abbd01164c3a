/**
 * The shell in a real terminal: tmux runs it, send-keys types, capture-pane reads the screen.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { labGuest, type LabGuest } from '../support/lab.ts';

const VMLENS = resolve(import.meta.dirname, '../../bin/vmlens');
const session = `vmlens-shell-${process.pid}`;

function tmux(...args: string[]): string {
  return execFileSync('tmux', args, { encoding: 'utf8' });
}

/** The terminal's text, scrollback included, without the empty rows below the cursor. */
function screen(): string {
  return tmux('capture-pane', '-p', '-t', session, '-S', '-200').replace(/\s+$/, '');
}

/** The last `n` non-empty rows. */
function tail(s: string, n: number): string {
  return s.split('\n').slice(-n).join('\n');
}

/** Wait until the screen satisfies `ok` (the shell and the guest are real: no fixed sleeps). */
async function waitFor(ok: (s: string) => boolean, what: string, ms = 60_000): Promise<string> {
  const end = Date.now() + ms;
  for (;;) {
    const s = screen();
    if (ok(s)) return s;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; screen:\n${s}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const prompts = (s: string): number => (s.match(/vmlens\([^)]*\)>/g) ?? []).length;

describe('vmlens shell in a terminal', () => {
  let guest: LabGuest;
  let state: string;

  beforeAll(async () => {
    guest = await labGuest('default');
    state = mkdtempSync(join(tmpdir(), 'vmlens-shell-state-'));
    tmux('new-session', '-d', '-s', session, '-x', '200', '-y', '50', '-e', `XDG_STATE_HOME=${state}`, `${VMLENS} --lab ${guest.info.name} shell`);
    await waitFor((s) => prompts(s) >= 1, 'the first prompt');
  });

  afterAll(() => {
    spawnSync('tmux', ['kill-session', '-t', session]);
    if (state) rmSync(state, { recursive: true, force: true });
  });

  it('shows the guest, its kernel and paging in the prompt', () => {
    const s = screen();
    expect(s).toContain(`vmlens(${guest.info.name} ${guest.info.kernelRelease} ${guest.info.paging}-level)>`);
  });

  it('runs ps with the same output as the command alone', async () => {
    tmux('send-keys', '-t', session, 'ps -p 1', 'Enter');
    const s = await waitFor((x) => prompts(x) >= 2, 'ps output');
    const alone = execFileSync(VMLENS, ['--lab', guest.info.name, 'ps', '-p', '1'], { encoding: 'utf8' }).trimEnd();
    expect(s).toContain(alone.split('\n')[1]!.trimEnd());
  });

  it('completes a command name with Tab', async () => {
    tmux('send-keys', '-t', session, 'unam', 'Tab');
    await waitFor((x) => /> uname\s*$/m.test(x), 'uname completed');
    tmux('send-keys', '-t', session, 'Enter');
    await waitFor((x) => x.includes(`Linux ${guest.info.hostname}`) && prompts(x) >= 3, 'uname output');
  });

  it('completes a pid with Tab', async () => {
    const pid = String(guest.info.processes[0]!.pid);
    const prefix = pid.slice(0, -1);
    const typed = `> ps -p ${prefix}`;
    // Node's readline treats a Tab that arrives in one read with more input as pasted text and
    // inserts it: each key is sent once the shell has taken the one before. A Tab that still
    // arrived with the next one leaves a tab in the line; the line is then cleared and typed again.
    for (let attempt = 1; ; attempt++) {
      tmux('send-keys', '-t', session, `ps -p ${prefix}`);
      await waitFor((x) => tail(x, 1).endsWith(typed), 'the typed line');
      tmux('send-keys', '-t', session, 'Tab');
      await new Promise((r) => setTimeout(r, 500));
      // Several pids share the prefix: the second Tab lists them; the real pid must be among them.
      tmux('send-keys', '-t', session, 'Tab');
      const s = await waitFor((x) => new RegExp(`\\b${pid}\\b`).test(tail(x, 6)), `pid ${pid} offered`, 10_000).catch(() => undefined);
      if (s) {
        // The listing is between the line as typed and the line redrawn below it: pids with the prefix only.
        const rows = s.split('\n');
        const at = rows.flatMap((l, i) => (l.endsWith(typed) ? [i] : []));
        const listed = rows.slice(at.at(-2)! + 1, at.at(-1)).join(' ').trim().split(/\s+/);
        expect(listed).toContain(pid);
        for (const p of listed) expect(p.startsWith(prefix), `${p} offered for ${prefix}`).toBe(true);
        break;
      }
      tmux('send-keys', '-t', session, 'C-u', '');
      if (attempt === 3) throw new Error(`pid ${pid} not offered after ${attempt} attempts; screen:\n${screen()}`);
    }
    tmux('send-keys', '-t', session, 'C-u', '');
  });

  it('reports an unknown command in one line and keeps going', async () => {
    tmux('send-keys', '-t', session, 'frobnicate', 'Enter');
    const s = await waitFor((x) => /vmlens: unknown command 'frobnicate'\n.*vmlens\([^)]*\)>$/.test(tail(x, 2)), 'the error and a new prompt');
    expect(tail(s, 3).split('\n')[0]).toMatch(/> frobnicate$/);
  });

  it('recalls the previous command with Up', async () => {
    tmux('send-keys', '-t', session, 'Up');
    await waitFor((x) => /> frobnicate$/.test(tail(x, 1)), 'history recall');
    tmux('send-keys', '-t', session, 'C-u', '');
  });

  it('Ctrl-C stops a command that runs until stopped (dmesg -w, ps --watch), and the shell goes on', async () => {
    const atPrompt = (x: string): boolean => /vmlens\([^)]*\)>$/.test(tail(x, 1));
    for (const [command, after] of [['dmesg -w', /\[\s*\d+\.\d{6}\] .*\n\^?C?vmlens\(/], ['ps --watch', /vmlens: watched [\d.]+ s: /]] as const) {
      tmux('clear-history', '-t', session);
      tmux('send-keys', '-t', session, command, 'Enter');
      // Running: the last row is its output, not the line typed nor a new prompt.
      await waitFor((x) => !/vmlens\([^)]*\)>/.test(tail(x, 1)), `${command} to start`);
      await new Promise((r) => setTimeout(r, 1000));
      expect(atPrompt(screen()), `${command} still running`).toBe(false);
      tmux('send-keys', '-t', session, 'C-c', '');
      const s = await waitFor(atPrompt, `a prompt after Ctrl-C in ${command}`);
      expect(tail(s, 3)).toMatch(after);
    }
    tmux('send-keys', '-t', session, 'uname', 'Enter');
    await waitFor((x) => /> uname\nLinux vmlens-lab .*\n.*vmlens\([^)]*\)>$/.test(tail(x, 3)), 'uname after the stopped commands');
  });

  it('leaves on Ctrl-D', async () => {
    tmux('send-keys', '-t', session, 'C-d', '');
    await waitFor(() => spawnSync('tmux', ['has-session', '-t', session]).status !== 0, 'the shell to exit', 20_000).catch(() => undefined);
    expect(spawnSync('tmux', ['has-session', '-t', session]).status).not.toBe(0);
  });
});

describe('vmlens shell with commands piped in', () => {
  it('runs each line with no prompt noise', async () => {
    const guest = await labGuest('default');
    const out = execFileSync(VMLENS, ['--lab', guest.info.name, 'shell'], { input: 'uname\nps -p 1\n', encoding: 'utf8' });
    const lines = out.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^Linux vmlens-lab /);
    expect(lines[1]).toMatch(/^PID\s+TGID/);
    expect(lines[2]).toMatch(/^\s*1\s+1\s+0\s/);
    expect(out).not.toContain('vmlens(');
  });
});
