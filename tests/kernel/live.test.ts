/**
 * The Linux layer against real lab guests, with no extra input: every process, every module,
 * the release string, the symbol table and the kernel log agree with what the guest itself
 * reports through its console.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLog, formatRecord } from '../../src/analyses/dmesg.ts';
import { listModules } from '../../src/analyses/lsmod.ts';
import { listTasks } from '../../src/analyses/ps.ts';
import { uname } from '../../src/analyses/uname.ts';
import type { Kernel } from '../../src/kernel/kernel.ts';
import { openKernel } from '../../src/kernel/open.ts';
import { attachQemu } from '../../src/machine/qemu.ts';
import type { Machine } from '../../src/machine/types.ts';
import { guestKallsyms, guestModules, guestProcesses } from '../support/ground-truth.ts';
import { labGuest, type LabConfig, type LabGuest } from '../support/lab.ts';

const configs: LabConfig[] = ['default', '4level', 'k612', 'cloud'];

describe.each(configs)('Linux layer on the %s lab guest', (config) => {
  let guest: LabGuest;
  let machine: Machine;
  let kernel: Kernel;

  beforeAll(async () => {
    guest = await labGuest(config);
    machine = await attachQemu(guest.info.qmpSocket);
    kernel = await openKernel(machine);
  });
  afterAll(async () => {
    await machine?.close();
  });

  it('finds the kernel with the paging mode the guest runs', () => {
    expect(kernel.layout.levels).toBe(guest.info.paging);
    expect(kernel.layout.kaslrOffset % (2n ** 21n)).toBe(0n);
  });

  it('reads the release, version and hostname the guest reports', async () => {
    const u = uname(kernel);
    expect(u.release).toBe((await guest.console.run('uname -r')).trim());
    expect(u.version).toBe((await guest.console.run('uname -v')).trim());
    expect(u.nodename).toBe((await guest.console.run('uname -n')).trim());
    expect(u.machine).toBe('x86_64');
  });

  it('decodes kallsyms: every symbol of the guest\'s /proc/kallsyms, at the same address', async () => {
    const truth = await guestKallsyms(guest.console);
    expect(truth.size).toBeGreaterThan(50_000);
    expect(kernel.symbol('_stext')).toBe(truth.get('_stext')![0]);
    let compared = 0;
    const wrong: string[] = [];
    for (const [name, addrs] of truth) {
      const ours = (kernel.symbols as { lookupAll?(n: string): bigint[] }).lookupAll?.(name) ?? [kernel.symbols.lookup(name)!];
      const a = [...ours].sort().map(String).join(',');
      const b = [...addrs].sort().map(String).join(',');
      if (a !== b && wrong.length < 10) wrong.push(`${name}: ours ${a} guest ${b}`);
      compared++;
    }
    expect(wrong).toEqual([]);
    expect(compared).toBe(truth.size);
  });

  it('lists every process with the pid, ppid, uid and comm the guest\'s /proc shows', async () => {
    const before = await guestProcesses(guest.console);
    const rows = listTasks(kernel);
    const after = await guestProcesses(guest.console);
    const ours = new Map(rows.map((r) => [r.pid, r]));
    // Processes alive before and after our scan must be in it, exactly as the guest sees them.
    let stable = 0;
    for (const [pid, p] of before) {
      const q = after.get(pid);
      // Held still: the same process, parent and user at both reads (a process whose parent
      // exits is reparented while it lives on).
      if (!q || q.comm !== p.comm || q.ppid !== p.ppid || q.uid !== p.uid) continue;
      stable++;
      const r = ours.get(pid);
      expect(r, `pid ${pid} (${p.comm})`).toBeDefined();
      // A workqueue worker's name ends with the work it ran last (kworker/0:1-events), which
      // changes from moment to moment; its thread name before the +/- does not.
      const base = (n: string): string => (n.startsWith('kworker/') ? n.replace(/[-+].*$/, '') : n);
      expect({ pid: r!.pid, ppid: r!.ppid, uid: r!.uid, name: base(r!.name) }).toEqual({ pid, ppid: p.ppid, uid: p.uid, name: base(p.comm) });
      expect(p.comm.startsWith(r!.comm), `comm ${r!.comm} begins ${p.comm}`).toBe(true);
    }
    expect(stable).toBeGreaterThan(40);
    // Everything we list existed in the guest at one of the two moments (or between: short-lived).
    for (const r of rows) {
      if (before.has(r.pid) || after.has(r.pid)) continue;
      expect(r.pid, `pid ${r.pid} (${r.comm}) unknown to the guest`).toBeGreaterThan(Math.min(...before.keys()));
    }
    // The lab's own processes, with their users.
    for (const lp of guest.info.processes) {
      const r = ours.get(lp.pid);
      expect(r?.comm, `lab process ${lp.comm}`).toBe(lp.comm);
      expect(r?.uid).toBe(lp.uid);
    }
    expect(kernel.warnings.items).toEqual([]);
  });

  it('lists threads: each process has as many as the guest counts', async () => {
    const truth = await guestProcesses(guest.console);
    const threads = listTasks(kernel, { threads: true });
    const byTgid = new Map<number, number>();
    for (const t of threads) byTgid.set(t.tgid, (byTgid.get(t.tgid) ?? 0) + 1);
    const multi = [...truth.values()].filter((p) => p.threads > 1);
    expect(multi.length).toBeGreaterThan(0);
    for (const p of multi) expect(byTgid.get(p.pid), `threads of ${p.comm}`).toBe(p.threads);
  });

  it('lists every module with the name, size, refcount, users, state and address of /proc/modules', async () => {
    const truth = await guestModules(guest.console);
    const rows = listModules(kernel);
    expect(rows.map((r) => r.name).sort()).toEqual(truth.map((m) => m.name).sort());
    for (const m of truth) {
      const r = rows.find((x) => x.name === m.name)!;
      expect({ size: r.size, refcount: r.refcount, state: r.state, base: r.base, usedBy: [...r.usedBy].sort() }).toEqual({
        size: m.size,
        refcount: m.refcount,
        state: m.state,
        base: m.address,
        usedBy: [...m.usedBy].sort(),
      });
    }
    for (const name of guest.info.modules) expect(rows.some((r) => r.name === name), name).toBe(true);
  });

  it('reads the kernel log as the guest\'s dmesg prints it', async () => {
    const truth = (await guest.console.run('dmesg')).split('\n').filter((l) => l.startsWith('['));
    const ours = readLog(kernel).flatMap((r) => formatRecord(r).split('\n'));
    expect(truth.length).toBeGreaterThan(100);
    // Ours is read after: it holds every guest line, in the same order.
    let i = 0;
    for (const line of truth) {
      while (i < ours.length && ours[i] !== line) i++;
      expect(i < ours.length, `guest line missing or out of order: ${line}`).toBe(true);
      i++;
    }
  });
});
