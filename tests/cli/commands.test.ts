/**
 * The read commands as a user runs them: `bin/vmlens --json CMD` against the shared lab guest,
 * every answer parsed and set against what the guest itself reports through its console; the
 * same commands as tables; and the exit codes of asking for what is not there.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { guestModules, guestProcesses } from '../support/ground-truth.ts';
import { labGuest, type LabGuest } from '../support/lab.ts';
import { runCliWhenFree, VMLENS, type CliResult } from '../speed/support.ts';

describe('read commands through the CLI', () => {
  let guest: LabGuest;
  const cli = (...args: string[]): Promise<CliResult> => runCliWhenFree(['--qmp', guest.info.qmpSocket, ...args]);
  const json = async <T>(...args: string[]): Promise<T> => {
    const r = await cli('--json', ...args);
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    return JSON.parse(r.stdout) as T;
  };

  beforeAll(async () => {
    guest = await labGuest('default');
  });

  it('uname and overview: the release and hostname the guest prints', async () => {
    const [release, nodename] = (await guest.console.run('uname -r; uname -n')).trim().split('\n');
    const u = await json<{ release: string; nodename: string }>('uname');
    expect({ release: u.release, nodename: u.nodename }).toEqual({ release, nodename });
    const o = await cli('overview');
    expect(o.code, o.stderr).toBe(0);
    expect(o.stdout).toContain(release!);
  });

  it('ps -p and lsmod: the guest\'s own pid 1 and /proc/modules', async () => {
    const truth = await guestProcesses(guest.console);
    const rows = await json<{ pid: number; ppid: number; uid: number; comm: string }[]>('ps', '-p', '1');
    expect(rows.map((r) => ({ pid: r.pid, ppid: r.ppid, uid: r.uid, comm: r.comm }))).toEqual([{ pid: 1, ppid: 0, uid: 0, comm: truth.get(1)!.comm }]);
    const mods = await json<{ name: string; size: number }[]>('lsmod');
    const want = await guestModules(guest.console);
    expect(mods.map((m) => `${m.name} ${m.size}`).sort()).toEqual(want.map((m) => `${m.name} ${m.size}`).sort());
  });

  it('pstree, dmesg, sym, type, sysctl, info: each answers JSON with what it should hold', async () => {
    const tree = await json<{ pid: number; children: unknown[] }[]>('pstree');
    expect(tree.some((n) => n.pid === 1 && n.children.length > 0)).toBe(true);
    const log = await json<{ text: string }[]>('dmesg');
    expect(log.some((r) => r.text.startsWith('Linux version'))).toBe(true);
    const sym = await json<{ name: string; address: string }>('sym', 'init_task');
    expect(sym.address).toMatch(/^0xffffffff[0-9a-f]{8}$/);
    const guestAddr = (await guest.console.run('grep " init_task$" /proc/kallsyms')).trim().split(' ')[0];
    expect(BigInt(sym.address)).toBe(BigInt(`0x${guestAddr}`));
    const type = await cli('type', 'list_head');
    expect(type.code, type.stderr).toBe(0);
    expect(type.stdout).toMatch(/next/);
    const pidMax = (await guest.console.run('cat /proc/sys/kernel/pid_max')).trim();
    const sysctl = await json<{ name: string; value: string }[]>('sysctl', 'kernel.pid_max');
    expect(sysctl).toEqual([expect.objectContaining({ name: 'kernel.pid_max', value: pidMax })]);
    const info = await json<{ live: boolean; ramBytes: number }>('info');
    expect(info.live).toBe(true);
    expect(info.ramBytes).toBe(guest.info.memoryMiB * 1024 * 1024);
  });

  it('dmesg --follow prints what the guest logs from then on, filtered by level, and ends cleanly on Ctrl-C', async () => {
    // A record logged before the command starts: once it is printed, the first read is done
    // and everything after comes through the follow loop.
    const tag = `vmlens-follow-${Date.now()}`;
    await guest.console.run(`echo "<4>${tag} before" > /dev/kmsg`);
    const child = spawn(VMLENS, ['--qmp', guest.info.qmpSocket, '--json', 'dmesg', '--follow', '-l', '4', '--interval', '50'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (err += c));
    const closed = new Promise<number | null>((resolve) => child.on('close', resolve));
    const lines = () => out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { level: number; text: string; seq: number });
    const waitFor = async (what: string, pred: () => boolean): Promise<void> => {
      const deadline = Date.now() + 60_000;
      while (!pred()) {
        if (child.exitCode !== null) throw new Error(`dmesg --follow exited (${child.exitCode}) before ${what}: ${err}`);
        if (Date.now() > deadline) throw new Error(`no ${what} within 60 s: ${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    try {
      await waitFor('the log so far', () => lines().some((l) => l.text === `${tag} before`));
      await guest.console.run(`echo "<6>${tag} info" > /dev/kmsg; echo "<3>${tag} error" > /dev/kmsg; echo "<4>${tag} warning" > /dev/kmsg`);
      await waitFor('the warning', () => lines().some((l) => l.text === `${tag} warning`));
      const mine = lines().filter((l) => l.text.startsWith(tag));
      expect(mine.map((l) => [l.level, l.text])).toEqual([
        [4, `${tag} before`],
        [3, `${tag} error`],
        [4, `${tag} warning`],
      ]);
      const seqs = lines().map((l) => l.seq);
      expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
      expect(new Set(seqs).size).toBe(seqs.length);
      child.kill('SIGINT');
      expect(await closed).toBe(0);
      expect(err).toBe('');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  it('pause and resume: the guest stops and runs as QEMU reports it; a second call says it already was', async () => {
    const status = async (): Promise<string> => {
      const r = await cli('--json', 'info');
      return (JSON.parse(r.stdout) as { paused: boolean }).paused ? 'paused' : 'running';
    };
    try {
      expect((await cli('pause')).stdout.trim()).toBe(`${guest.info.qmpSocket} is paused`);
      expect(await status()).toBe('paused');
      expect((await cli('pause')).stdout.trim()).toBe(`${guest.info.qmpSocket} is paused (it already was)`);
    } finally {
      expect((await cli('resume')).code).toBe(0);
    }
    expect(await status()).toBe('running');
  });

  it('an interrupted dump leaves no file behind and the guest running again (lime, and elf while QEMU writes)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmlens-dump-int-'));
    try {
      for (const format of ['lime', 'elf']) {
        const file = join(dir, `guest.${format}`);
        const child = spawn(VMLENS, ['--qmp', guest.info.qmpSocket, 'dump', '--format', format, file], { stdio: ['ignore', 'pipe', 'pipe'] });
        let err = '';
        child.stderr.setEncoding('utf8').on('data', (c: string) => (err += c));
        const closed = new Promise<number | null>((resolve) => child.on('close', resolve));
        // The file appears once the guest is paused and the copy has begun.
        const deadline = Date.now() + 120_000;
        while (!existsSync(file) && child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
        expect(existsSync(file), `${format}: copying began (${err})`).toBe(true);
        child.kill('SIGINT');
        expect(await closed, `${format}: ${err}`).toBe(130);
        expect(err).toMatch(/interrupted; the guest runs again/);
        expect(existsSync(file), `${format}: no half-written file`).toBe(false);
        const info = JSON.parse((await cli('--json', 'info')).stdout) as { paused: boolean };
        expect(info.paused, `${format}: guest running`).toBe(false);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('asking for a process that is not there: ps prints its header and exits 1, as ps(1) does; a bad pid is exit 2 with one line', async () => {
    const none = await cli('ps', '-p', '999999');
    expect(none.code).toBe(1);
    expect(none.stdout.trim().split('\n')).toHaveLength(1);
    expect(none.stdout).toMatch(/^\s*PID\b/);
    expect(await json<unknown[]>('ps', '-p', '1')).toHaveLength(1);
    const bad = await cli('ps', '-p', 'one');
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim()).toBe("vmlens: not a pid: 'one'");
    const noLab = await runCliWhenFree(['--lab', 'no-such-guest', 'ps']);
    expect(noLab.code).not.toBe(0);
    expect(noLab.stderr.trim().split('\n')).toHaveLength(1);
  });
});
