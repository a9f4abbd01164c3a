/**
 * `vmlens ps --watch` against a running lab guest: it reports a process the guest starts and
 * kills while it watches (the guest's console gives the pid), and it never reports a process
 * as gone because the task list changed under a walk.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProcessWatch, type WatchEvent } from '../../src/analyses/watch.ts';
import { taskLayout, TaskScanner } from '../../src/analyses/ps.ts';
import { Kernel } from '../../src/kernel/kernel.ts';
import { openKernel } from '../../src/kernel/open.ts';
import type { QemuMachine } from '../../src/machine/qemu.ts';
import { AddressSpace } from '../../src/mmu/address-space.ts';
import { PhysReader } from '../../src/mmu/phys-reader.ts';
import { vaAddHi, vaAddLo, vaFromParts } from '../../src/mmu/va.ts';
import type { PhysicalMemory, PhysRange } from '../../src/source/types.ts';
import { guestProcesses } from '../support/ground-truth.ts';
import { labGuest, type LabGuest } from '../support/lab.ts';
import { attachWaiting, monitorBusy, ROOT, VMLENS } from './support.ts';

interface Line {
  readonly type: string;
  readonly pid?: number;
  readonly comm?: string;
  readonly uid?: number;
  readonly reason?: string;
  readonly livedMs?: number;
  readonly scans?: number;
  readonly startTimeNs?: number;
}

/** `vmlens ps --watch --json` as a child process, its JSON lines collected as they come. */
class Watcher {
  readonly lines: Line[] = [];
  stderr = '';
  readonly child: ChildProcess;
  readonly closed: Promise<number | null>;

  constructor(qmpSocket: string) {
    this.child = spawn(VMLENS, ['--qmp', qmpSocket, 'ps', '--watch', '--json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      if (line.trim()) this.lines.push(JSON.parse(line) as Line);
    });
    this.child.stderr!.setEncoding('utf8').on('data', (c: string) => (this.stderr += c));
    this.closed = new Promise((resolve) => this.child.on('close', resolve));
  }

  async until(what: string, pred: (l: Line) => boolean, timeoutMs = 60_000): Promise<Line> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.find(pred);
      if (hit) return hit;
      if (this.child.exitCode !== null) throw new Error(`ps --watch exited (${this.child.exitCode}) before ${what}: ${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

describe('ps --watch on a running guest', () => {
  let guest: LabGuest;
  beforeAll(async () => {
    guest = await labGuest('default');
  });

  it('reports a process the guest starts and kills, with the pid the guest gives', async () => {
    let w: Watcher | undefined;
    // The monitor may be held by another test file for a while: start again until it is ours.
    const deadline = Date.now() + 240_000;
    for (;;) {
      w = new Watcher(guest.info.qmpSocket);
      const ready = await w.until('ready', (l) => l.type === 'ready', 120_000).catch((e: unknown) => e as Error);
      if (!(ready instanceof Error)) break;
      await w.closed;
      if (!monitorBusy({ code: 1, stdout: '', stderr: w.stderr }) || Date.now() > deadline) throw ready;
    }
    try {
      const pid = Number((await guest.console.run('sleep 600 >/dev/null 2>&1 & echo $!')).trim());
      expect(pid).toBeGreaterThan(1);
      const start = await w.until(`start of pid ${pid}`, (l) => l.type === 'start' && l.pid === pid);
      expect(start.uid).toBe(0);
      // Caught between fork and exec it is still the shell. Busybox runs an applet by exec'ing
      // /proc/self/exe, which names the task "exe" until busybox renames it to the applet: a
      // scan can land in either window. The change to the final name is reported then.
      if (start.comm !== 'sleep') {
        expect(['sh', 'exe']).toContain(start.comm);
        await w.until(`exec of pid ${pid}`, (l) => l.type === 'exec' && l.pid === pid && l.comm === 'sleep');
      }
      await guest.console.run(`kill ${pid}`);
      const exit = await w.until(`exit of pid ${pid}`, (l) => l.type === 'exit' && l.pid === pid);
      expect(exit.reason).toBe('gone');
      expect(exit.comm).toBe('sleep');
      expect(exit.livedMs).toBeGreaterThan(0);

      // Nothing reported gone is alive in the guest now (same pid and start time).
      w.child.kill('SIGINT');
      expect(await w.closed).toBe(0);
      const alive = await guestProcesses(guest.console);
      const starts = await guest.console.run('for d in /proc/[0-9]*; do echo "${d#/proc/} $(cut -d" " -f22 $d/stat 2>/dev/null)"; done');
      const startTicks = new Map(starts.trim().split('\n').map((l) => l.split(' ').map(Number) as [number, number]));
      for (const e of w.lines.filter((l) => l.type === 'exit')) {
        if (!alive.has(e.pid!)) continue;
        // Same pid alive: it must be a later process (start times in USER_HZ ticks of 10 ms).
        expect(Math.abs(startTicks.get(e.pid!)! * 1e7 - e.startTimeNs!)).toBeGreaterThan(2e7);
      }
      const summary = w.lines.find((l) => l.type === 'summary');
      expect(summary?.scans).toBeGreaterThan(0);
    } finally {
      if (w.child.exitCode === null) w.child.kill('SIGKILL');
    }
  });
});

/**
 * A PhysicalMemory over another with some 8-byte words replaced: how the tests below make a task
 * list change under a walk without touching the guest. No windows, so every read comes here.
 */
class PatchedMemory implements PhysicalMemory {
  readonly kind = 'patched';
  readonly description = 'test overlay';
  readonly writable = false;
  readonly ranges: readonly PhysRange[];
  readonly patches = new Map<number, bigint>();
  constructor(private readonly inner: PhysicalMemory) {
    this.ranges = inner.ranges;
  }
  read(gpa: number, dst: Uint8Array): void {
    this.inner.read(gpa, dst);
    for (const [at, value] of this.patches) {
      for (let i = 0; i < 8; i++) {
        const o = at + i - gpa;
        if (o >= 0 && o < dst.length) dst[o] = Number((value >> BigInt(8 * i)) & 0xffn);
      }
    }
  }
  write(): void {
    throw new Error('read-only');
  }
  close(): void {}
}

describe('a task list that changes under the walk', () => {
  let guest: LabGuest;
  let machine: QemuMachine;
  let kernel: Kernel;
  let patched: PatchedMemory;

  beforeAll(async () => {
    guest = await labGuest('default');
    machine = await attachWaiting(guest.info.qmpSocket);
    const base = await openKernel(machine);
    await machine.releaseMonitor();
    patched = new PatchedMemory(machine.memory);
    const space = new AddressSpace(new PhysReader(patched, { frozen: false }), base.layout.root, base.layout.levels);
    kernel = new Kernel({ machine, space, btf: base.btf, symbols: base.symbols, layout: base.layout });
  });
  afterAll(async () => {
    await machine?.close();
  });

  /** Guest-physical address of a task's `tasks.next` (+0) or `tasks.prev` (+8). */
  function linkPa(task: { hi: number; lo: number }, which: 0 | 8): number {
    const off = taskLayout(kernel).tasks + which;
    return kernel.space.translateVa(vaFromParts(vaAddHi(task.hi, task.lo, off), vaAddLo(task.lo, off)));
  }

  it('never reports an exit from a torn scan, and resumes cleanly', () => {
    const watch = new ProcessWatch(kernel);
    // A complete baseline (the guest may change the list under the first scans).
    for (let i = 0; i < 20 && watch.stats.completeScans === 0; i++) watch.scan();
    expect(watch.stats.completeScans).toBeGreaterThan(0);
    const baseline = watch.processes();
    expect(baseline.length).toBeGreaterThan(16);

    // Tasks in the middle of the list, to corrupt.
    const scanner = new TaskScanner(kernel);
    const tasks: { hi: number; lo: number; pid: number }[] = [];
    scanner.scan((t) => void tasks.push({ hi: t.hi, lo: t.lo, pid: t.pid }));
    const mid = tasks[Math.floor(tasks.length / 2)]!;
    const prev = tasks[Math.floor(tasks.length / 2) - 1]!;
    const LIST_POISON2 = 0xdead_0000_0000_0122n;
    const first = vaFromParts(vaAddHi(tasks[1]!.hi, tasks[1]!.lo, taskLayout(kernel).tasks), vaAddLo(tasks[1]!.lo, taskLayout(kernel).tasks));
    const corruptions: [string, number, bigint][] = [
      // list_del_rcu() as seen mid-walk: the node's prev poisoned, its next left intact.
      ['a node taken off the list', linkPa(mid, 8), LIST_POISON2],
      ['a NULL next link', linkPa(prev, 0), 0n],
      ['a next link to an unmapped address', linkPa(prev, 0), 0xffff_ffff_ffff_0000n],
      // next pointing back at the first task: a cycle that does not pass through the head.
      ['a cycle', linkPa(prev, 0), first],
    ];
    const events: WatchEvent[] = [];
    for (const [what, pa, value] of corruptions) {
      patched.patches.clear();
      patched.patches.set(pa, value);
      const before = watch.stats;
      const got = watch.scan();
      events.push(...got);
      const after = watch.stats;
      expect(after.tornScans, what).toBe(before.tornScans + 1);
      expect(got.filter((e) => e.type === 'exit'), what).toEqual([]);
    }
    patched.patches.clear();
    for (let i = 0; i < 20; i++) {
      const before = watch.stats.completeScans;
      events.push(...watch.scan());
      if (watch.stats.completeScans > before) break;
    }
    // Whatever exited meanwhile really did: none of the lab's long-lived processes.
    const exited = events.filter((e) => e.type === 'exit').map((e) => (e.type === 'exit' ? e.process.comm : ''));
    expect(exited.filter((c) => c.startsWith('lab-worker-') || c === 'init' || c === 'lab-threads')).toEqual([]);
    const now = new Set(watch.processes().map((p) => p.pid));
    for (const p of baseline.filter((b) => b.comm.startsWith('lab-worker-'))) expect(now.has(p.pid), p.comm).toBe(true);
  });
});
