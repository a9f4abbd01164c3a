import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { THREADS, threadsElf } from '../../src/lab/threads-elf.ts';

// The generated executable is plain x86-64 Linux: run it on this host, as the guest would.
describe('threadsElf', () => {
  it('starts a process whose threads are named lab-thread-N and stay alive', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmlens-threads-'));
    const exe = join(dir, 'lab-threads');
    writeFileSync(exe, threadsElf());
    chmodSync(exe, 0o755);
    const child = spawn(exe, [], { stdio: 'ignore' });
    try {
      const pid = child.pid!;
      let tasks: string[] = [];
      for (let i = 0; i < 100 && tasks.length < THREADS + 1; i++) {
        await new Promise((r) => setTimeout(r, 20));
        tasks = readdirSync(`/proc/${pid}/task`);
      }
      const names = tasks.map((t) => readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim()).sort();
      expect(names).toEqual(['lab-thread-1', 'lab-thread-2', 'lab-thread-3', 'lab-threads']);
      // All of them sleep rather than spin.
      await new Promise((r) => setTimeout(r, 100));
      for (const t of tasks) {
        const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
        expect(stat.slice(stat.lastIndexOf(')') + 2)[0]).toBe('S');
      }
    } finally {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('is a small static executable', () => {
    const elf = threadsElf();
    expect(elf.length).toBeLessThan(1024);
    expect([...elf.subarray(0, 4)]).toEqual([0x7f, 0x45, 0x4c, 0x46]);
  });
});
