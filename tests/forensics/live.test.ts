/**
 * The per-process forensic analyses against a real lab guest, for every process it runs, with
 * the guest's own /proc (read through its console) as the ground truth: maps, open files,
 * sockets, mounts, command lines and environments, namespaces, cgroups, and dumped memory.
 *
 * The guest keeps running while vmlens reads it, so each piece of ground truth is read twice,
 * around vmlens's read, and only what held still in both is compared — which still covers
 * every long-lived process. The console's own shell is left out: while it runs a command its
 * descriptors are not those it has when idle.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { processFiles } from '../../src/analyses/lsof.ts';
import { formatCgroupLine } from '../../src/analyses/cgroups.ts';
import { formatCapSet, listCreds } from '../../src/analyses/creds.ts';
import { formatMapLine, processMaps } from '../../src/analyses/maps.ts';
import { formatMountinfoLine, listMounts, mangle } from '../../src/analyses/mounts.ts';
import { listNamespaces, NAMESPACE_KINDS, NS_LINK_NAMES } from '../../src/analyses/namespaces.ts';
import { listSockets, type SocketRow } from '../../src/analyses/netstat.ts';
import { readerRoot } from '../../src/analyses/processes.ts';
import { dumpProcess, listCmdlines, readCmdline, readEnviron, type DumpedArea } from '../../src/analyses/proc-memory.ts';
import { listTasks, type TaskRow } from '../../src/analyses/ps.ts';
import type { Kernel } from '../../src/kernel/kernel.ts';
import { openKernel } from '../../src/kernel/open.ts';
import { attachQemu } from '../../src/machine/qemu.ts';
import type { Machine } from '../../src/machine/types.ts';
import { findLab, GuestConsole } from '../../src/lab/index.ts';
import { labGuest, type LabConfig, type LabGuest } from '../support/lab.ts';
import { fdLinks, FIXTURE_CLEANUP, FIXTURE_SCRIPT, odBytes, perProcess, stable } from './truth.ts';

/**
 * The shared lab guest of a configuration — or, with VMLENS_FORENSICS_LAB=NAME, a running lab
 * guest of that name (e.g. one booted with another kernel), for every test here.
 */
async function guestFor(config: LabConfig): Promise<LabGuest> {
  const name = process.env.VMLENS_FORENSICS_LAB;
  if (!name) return labGuest(config);
  const info = await findLab(name);
  return { info, console: await GuestConsole.forLab(info) };
}

/** Reading every process's /proc through the console takes tens of seconds under TCG, more on a busy host. */
const SLOW = 300_000;

/** Read the guest's view, run vmlens, read the guest's view again; keep what held still. */
async function around<T>(guest: LabGuest, command: string, ours: () => T, pids?: readonly number[]): Promise<{ truth: Map<number, string>; ours: T; seen: number }> {
  const before = await perProcess(guest.console, command, pids);
  const result = ours();
  const after = await perProcess(guest.console, command, pids);
  return { truth: stable(before, after), ours: result, seen: before.size };
}

/** A disagreeing process is read again on its own this many times before the test fails. */
const RECHECKS = 3;

/**
 * `check` for every process that held still around vmlens's read; it returns whether the
 * process was compared (false: skipped) and throws on a disagreement. Holding still at two
 * reads does not mean holding still between them: lab-ticker points its stdout at a file for
 * a moment every half second, and vmlens may read it in that moment. So a process that
 * disagrees is read again on its own (guest, vmlens, guest) up to RECHECKS times; a real
 * disagreement shows every time, a passing moment does not come back each time.
 */
async function compareEach<T>(
  guest: LabGuest,
  command: string,
  ours: () => Map<number, T>,
  check: (pid: number, text: string, mine: T | undefined) => boolean,
): Promise<{ compared: number; seen: number }> {
  const first = await around(guest, command, ours);
  let compared = 0;
  for (const [pid, text] of first.truth) {
    let outcome: boolean;
    try {
      outcome = check(pid, text, first.ours.get(pid));
    } catch (firstError) {
      outcome = await recheck(pid, firstError);
    }
    if (outcome) compared++;
  }
  return { compared, seen: first.seen };

  async function recheck(pid: number, firstError: unknown): Promise<boolean> {
    let last = firstError;
    for (let i = 0; i < RECHECKS; i++) {
      const again = await around(guest, command, ours, [pid]);
      const text = again.truth.get(pid);
      if (text === undefined) continue; // changed under this read too
      try {
        return check(pid, text, again.ours.get(pid));
      } catch (e) {
        last = e;
      }
    }
    throw last;
  }
}

function userProcesses(tasks: readonly TaskRow[]): TaskRow[] {
  return tasks.filter((t) => !t.kthread);
}

/** maps of every process equal to its /proc/PID/maps, text for text. */
async function compareMaps(guest: LabGuest, k: Kernel): Promise<void> {
  let withAreas = 0;
  const ours = () => {
    const tasks = listTasks(k);
    const root = readerRoot(k, tasks);
    return new Map(tasks.map((t) => [t.pid, processMaps(k, t, root).map(formatMapLine).join('\n')]));
  };
  const { compared, seen } = await compareEach(guest, 'cat $d/maps 2>/dev/null', ours, (pid, text, mine) => {
    if (mine === undefined) return false; // exited between the scans
    expect(mine, `maps of pid ${pid}`).toBe(text);
    if (text !== '') withAreas++;
    return true;
  });
  expect(compared).toBeGreaterThan(seen * 0.8);
  // init, httpd, the 16 workers, lab-threads, lab-ticker and the console's shells at least.
  expect(withAreas).toBeGreaterThan(20);
  expect(k.warnings.items).toEqual([]);
}

/** Every descriptor, cwd, root and exe named as the /proc/PID links name them (the console's shell excepted). */
async function compareFdLinks(guest: LabGuest, k: Kernel, shellPid: number): Promise<number> {
  // One ls per process (forks are slow under TCG): the fd directory and the three links.
  const cmd = 'ls -l $d/cwd $d/root $d/exe $d/fd 2>/dev/null';
  const ours = () => {
    const tasks = listTasks(k);
    const root = readerRoot(k, tasks);
    return new Map(tasks.map((t) => [t.pid, processFiles(k, t, root)]));
  };
  let fds = 0;
  const { compared } = await compareEach(guest, cmd, ours, (pid, text, rows) => {
    if (!rows || pid === shellPid) return false;
    const links = [...fdLinks(text)].sort((a, b) => a[0] - b[0]);
    const mine = rows.filter((r) => r.use === 'fd').map((r) => [r.fd!, r.path] as [number, string]);
    expect(mine, `fds of pid ${pid}`).toEqual(links);
    for (const [use, link] of [['cwd', 'cwd'], ['rtd', 'root'], ['txt', 'exe']] as const) {
      // "… /proc/PID/cwd -> /"; a link that cannot be read (a kernel thread's exe) has no arrow.
      const line = text.split('\n').find((l) => l.includes(`/${pid}/${link}`)) ?? '';
      const want = line.includes(' -> ') ? line.slice(line.indexOf(' -> ') + 4) : '';
      expect(rows.find((r) => r.use === use)?.path ?? '', `${use} of pid ${pid}`).toBe(want);
    }
    fds += mine.length;
    return true;
  });
  expect(compared).toBeGreaterThan(40);
  expect(fds).toBeGreaterThan(60);
  return fds;
}

/** /proc/PID/cmdline and /proc/PID/environ of every process, byte for byte. */
async function compareProcBytes(guest: LabGuest, k: Kernel): Promise<void> {
  for (const file of ['cmdline', 'environ'] as const) {
    const ours = () => {
      const tasks = listTasks(k);
      return new Map(tasks.map((t) => [t.pid, file === 'cmdline' ? readCmdline(k, t) : readEnviron(k, t)]));
    };
    let nonEmpty = 0;
    const { compared } = await compareEach(guest, `od -An -tx1 -v $d/${file} 2>/dev/null`, ours, (pid, text, mine) => {
      if (!mine) return false;
      expect(mine.complete, `${file} of pid ${pid} complete`).toBe(true);
      expect(Buffer.from(mine.bytes).toString('latin1'), `${file} of pid ${pid}`).toBe(Buffer.from(odBytes(text)).toString('latin1'));
      if (mine.bytes.length > 0) nonEmpty++;
      return true;
    });
    expect(compared, file).toBeGreaterThan(60);
    expect(nonEmpty, file).toBeGreaterThan(20);
  }
}

describe('per-process forensics on the default lab guest (with fixtures)', () => {
  let guest: LabGuest;
  let machine: Machine;
  let k: Kernel;
  /** The guest shell that runs console commands (left out of fd comparisons). */
  let shellPid: number;
  let fixturePids: number[];

  beforeAll(async () => {
    guest = await guestFor('default');
    machine = await attachQemu(guest.info.qmpSocket);
    k = await openKernel(machine);
    // Memory stays readable through the RAM file; other tools (the CLI tests) need the monitor.
    await machine.releaseMonitor?.();
    await guest.console.run(FIXTURE_CLEANUP);
    await guest.console.run(FIXTURE_SCRIPT);
    shellPid = Number((await guest.console.run('echo $$')).trim());
    fixturePids = (await guest.console.run('cat /tmp/vmlens-fx/pids')).split('\n').filter(Boolean).map(Number);
  });
  afterAll(async () => {
    await guest?.console.run(FIXTURE_CLEANUP).catch(() => undefined);
    await machine?.close();
  });

  it('maps: every process\'s areas are exactly the lines of its /proc/PID/maps', async () => {
    await compareMaps(guest, k);
  });

  it('lsof: every descriptor names what its /proc/PID/fd link names; cwd, root and exe too', async () => {
    expect(await compareFdLinks(guest, k, shellPid)).toBeGreaterThan(80);
  });

  it('lsof: pos, flags, mount id and inode of every descriptor as /proc/PID/fdinfo shows them', async () => {
    // One grep per process: "/proc/PID/fdinfo/FD:field:\tvalue" lines.
    const cmd = 'grep -E "^(pos|flags|mnt_id|ino):" $d/fdinfo/* 2>/dev/null';
    const ours = () => {
      const tasks = userProcesses(listTasks(k));
      const root = readerRoot(k);
      return new Map(tasks.map((t) => [t.pid, processFiles(k, t, root, false)]));
    };
    let compared = 0;
    await compareEach(guest, cmd, ours, (pid, text, rows) => {
      if (!rows || pid === shellPid) return false;
      let here = 0;
      const byFd = new Map<number, Record<string, string>>();
      for (const line of text.split('\n')) {
        const m = /\/fdinfo\/(\d+):(\w+):\s*(\S+)$/.exec(line);
        if (!m) continue;
        const fields = byFd.get(Number(m[1])) ?? {};
        fields[m[2]!] = m[3]!;
        byFd.set(Number(m[1]), fields);
      }
      for (const [fd, f] of byFd) {
        const row = rows.find((r) => r.fd === fd);
        expect(row, `pid ${pid} fd ${fd}`).toBeDefined();
        expect({ pos: row!.pos, flags: `0${row!.flags.toString(8)}`, mnt: row!.mntId, ino: row!.inode }, `pid ${pid} fd ${fd}`).toEqual({
          pos: Number(f.pos),
          flags: f.flags,
          mnt: Number(f.mnt_id),
          ino: Number(f.ino),
        });
        here++;
      }
      compared += here;
      return true;
    });
    expect(compared).toBeGreaterThan(80);
  });

  it('lsof: the deleted file, the pipe and the sockets are named as the kernel names them', () => {
    const rows = fixturePids.flatMap((pid) => {
      const t = listTasks(k).find((x) => x.pid === pid);
      return t ? processFiles(k, t, readerRoot(k)) : [];
    });
    const deleted = rows.find((r) => r.fd === 5);
    expect(deleted?.path).toBe('/tmp/vmlens-fx/deleted.txt (deleted)');
    expect(deleted?.type).toBe('REG');
    expect(deleted?.size).toBe(5); // "gone\n"
    // The fixtures' pipelines: every shell holds no pipe itself, but their children do.
    const all = listTasks(k).flatMap((t) => (fixturePids.includes(t.ppid) ? processFiles(k, t, readerRoot(k), false) : []));
    expect(all.some((r) => /^pipe:\[\d+\]$/.test(r.path) && r.type === 'FIFO')).toBe(true);
    expect(all.some((r) => /^socket:\[\d+\]$/.test(r.path) && r.type === 'IPv6' && r.protocol === 'TCP')).toBe(true);
  });

  it('netstat: every line of /proc/net/tcp, tcp6, udp, udp6 and unix, with the owners the fd tables show', async () => {
    // A fresh TIME_WAIT remnant (they last a minute): the client side of an HTTP fetch.
    await guest.console.run('wget -q -O /dev/null http://127.0.0.1:8080/');
    const cmd = 'for f in tcp tcp6 udp udp6 unix; do echo "@@ $f"; cat /proc/net/$f; done';
    const before = await guest.console.run(cmd);
    const rows = listSockets(k);
    const after = await guest.console.run(cmd);
    const truthLines = (text: string) => new Set(parseProcNet(text));
    const b = truthLines(before);
    const a = truthLines(after);
    const held = [...b].filter((l) => a.has(l));
    const initNet = listNamespaces(k, { pids: new Set([1]) })[0]!.ns.net;
    const mine = new Set(rows.filter((r) => r.netns === initNet).map(procNetKey));
    for (const line of held) expect(mine.has(line), `guest socket ${line}`).toBe(true);
    // Everything vmlens lists in the init namespace existed at one of the two reads.
    for (const r of rows.filter((x) => x.netns === initNet)) expect(b.has(procNetKey(r)) || a.has(procNetKey(r)), `vmlens socket ${procNetKey(r)}`).toBe(true);
    const kinds = new Set(rows.map((r) => `${r.proto} ${r.state}`));
    // Which side of the HTTP fetch keeps the TIME_WAIT remnant (and so its family) varies by kernel.
    for (const want of [/^tcp6 LISTEN$/, /^tcp6 ESTABLISHED$/, /^tcp ESTABLISHED$/, /^tcp6? TIME_WAIT$/, /^udp CLOSE$/, /^unix CONNECTED$/]) {
      expect([...kinds].some((x) => want.test(x)), `${want} in ${[...kinds].join(', ')}`).toBe(true);
    }

    // Owners: each socket inode's holders, from the guest's own fd links.
    const links = await guest.console.run('for d in /proc/[0-9]*; do ls -l $d/fd 2>/dev/null | sed -n "s|.* \\([0-9]*\\) -> socket:\\[\\([0-9]*\\)\\]|${d#/proc/} \\2|p"; done');
    const holders = new Map<number, Set<number>>();
    for (const line of links.split('\n')) {
      const [pid, ino] = line.split(' ').map(Number);
      if (!pid || !ino || pid === shellPid) continue;
      holders.set(ino, (holders.get(ino) ?? new Set()).add(pid));
    }
    let owned = 0;
    for (const r of rows) {
      const want = holders.get(r.inode);
      if (!want || r.inode === 0) continue;
      expect(new Set(r.owners.map((o) => o.pid)), `owners of socket ${r.inode}`).toEqual(want);
      owned++;
    }
    expect(owned).toBeGreaterThanOrEqual(6);
  });

  it('netstat: -p keeps the sockets of those processes only', () => {
    const httpd = listTasks(k).find((t) => t.comm === 'httpd')!;
    const rows = listSockets(k, { pids: new Set([httpd.pid]) });
    expect(rows.map((r) => `${r.proto} ${r.local} ${r.state}`)).toEqual(['tcp6 [::]:8080 LISTEN']);
  });

  it('mounts: /proc/PID/mountinfo of every process, in both mount namespaces', async () => {
    const ours = () => {
      const tasks = userProcesses(listTasks(k));
      const views = new Map<number, ReturnType<typeof listMounts>>();
      for (const t of tasks) {
        try {
          views.set(t.pid, listMounts(k, { pids: new Set([t.pid]) }));
        } catch {
          // exited since the task list was read
        }
      }
      return views;
    };
    const namespaces = new Set<number>();
    const propagation = new Set<string>();
    const { compared } = await compareEach(guest, 'cat $d/mountinfo 2>/dev/null', ours, (pid, text, rows) => {
      if (!rows || text === '') return false;
      // The super-block options vmlens rebuilds are the generic ones; drop the file system's own.
      const generic = new Set(['rw', 'ro', 'sync', 'dirsync', 'mand', 'lazytime']);
      const want = text.split('\n').map((line) => {
        const [head, tail] = line.split(' - ');
        const [type, source, opts] = tail!.split(' ');
        return `${head} - ${type} ${source} ${opts!.split(',').filter((o) => generic.has(o)).join(',')}`;
      });
      expect(rows.map(formatMountinfoLine), `mountinfo of pid ${pid}`).toEqual(want);
      for (const r of rows) {
        namespaces.add(r.mntNs);
        for (const tag of r.propagation) propagation.add(tag);
      }
      return true;
    });
    expect(compared).toBeGreaterThan(25);
    expect(namespaces.size).toBeGreaterThanOrEqual(2);
    // The container's view: its own tmpfs, read-only and noexec where asked, slaves of /run.
    const container = listTasks(k).find((t) => t.comm === 'sleep' && listNamespaces(k, { pids: new Set([t.pid]) })[0]!.contained && listMounts(k, { pids: new Set([t.pid]) }).some((m) => m.source === 'vmlens-ro'));
    expect(container).toBeDefined();
    const mounts = listMounts(k, { pids: new Set([container!.pid]) });
    expect(mounts.find((m) => m.source === 'vmlens-ro')).toMatchObject({ mountPoint: '/mnt/ro', options: 'ro,noexec,relatime', fsType: 'tmpfs' });
    expect(mounts.find((m) => m.mountPoint === '/srv')).toMatchObject({ root: '/sub', source: 'vmlens-fx' });
    // Propagation tags were compared above; the fixtures made at least /run shared.
    expect([...propagation].some((p) => p.startsWith('shared:'))).toBe(true);
    expect(mangle('a b\\c')).toBe('a\\040b\\134c');
  });

  it('cmdline and environ: byte for byte what /proc/PID/cmdline and /proc/PID/environ return', async () => {
    await compareProcBytes(guest, k);
    const worker = listCmdlines(k).find((r) => r.comm === 'lab-worker-3')!;
    expect(worker.args).toEqual(['/bin/sh', '/bin/lab-worker-3', '3']);
  });

  it('ns: every /proc/PID/ns link of every process; the container and the user namespace stand out', async () => {
    const ours = () => new Map(listNamespaces(k).map((r) => [r.pid, r]));
    const { compared } = await compareEach(guest, 'ls -l $d/ns 2>/dev/null', ours, (pid, text, row) => {
      if (!row) return false;
      // "… pid_for_children -> pid:[4026531836]"
      const want = Object.fromEntries([...text.matchAll(/ (\w+) -> (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
      if (Object.keys(want).length === 0) return false; // exited while listed
      for (const kind of NAMESPACE_KINDS) {
        const name = NS_LINK_NAMES[kind];
        const id = row.ns[kind];
        expect(id === null ? undefined : `${name.replace(/_for_children$/, '')}:[${id}]`, `${name} of pid ${pid}`).toBe(want[name]);
      }
      return true;
    });
    expect(compared).toBeGreaterThan(60);
    const rows = listNamespaces(k);
    const contained = rows.filter((r) => r.contained);
    expect(contained.length).toBeGreaterThanOrEqual(2);
    const init = rows.find((r) => r.pid === 1)!;
    expect(contained.some((r) => r.ns.mnt !== init.ns.mnt && r.ns.net !== init.ns.net && r.ns.pid !== init.ns.pid && r.ns.uts !== init.ns.uts)).toBe(true);
    expect(contained.some((r) => r.ns.user !== init.ns.user)).toBe(true);
  });

  it('creds: uids, gids, groups, capability sets, no_new_privs, seccomp and tracer of every process, as /proc/PID/status shows them', async () => {
    const cmd = 'grep -E "^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|TracerPid):" $d/status 2>/dev/null';
    const ours = () => new Map(listCreds(k).map((r) => [r.pid, r]));
    const { compared } = await compareEach(guest, cmd, ours, (pid, text, row) => {
      if (!row || text === '') return false;
      const want = new Map(text.split('\n').map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)]));
      const mine = new Map<string, string>([
        ['Uid', row.uids.join('\t')],
        ['Gid', row.gids.join('\t')],
        // The kernel separates groups by spaces and always adds one more.
        ['Groups', `${row.groups.join(' ')} `],
        ['CapInh', formatCapSet(row.caps.inheritable)],
        ['CapPrm', formatCapSet(row.caps.permitted)],
        ['CapEff', formatCapSet(row.caps.effective)],
        ['CapBnd', formatCapSet(row.caps.bounding)],
        ['CapAmb', formatCapSet(row.caps.ambient)],
        ['NoNewPrivs', row.noNewPrivs ? '1' : '0'],
        ['Seccomp', String(row.seccomp)],
        ['TracerPid', String(row.tracerPid)],
      ]);
      expect(Object.fromEntries(mine), `status of pid ${pid}`).toEqual(Object.fromEntries(want));
      return true;
    });
    expect(compared).toBeGreaterThan(60);
    const rows = ours();
    const CAP_NET_BIND_SERVICE = 1n << 10n;
    const CAP_NET_RAW = 1n << 13n;
    const limited = rows.get(fixturePids.at(-1)!)!;
    expect(limited.noNewPrivs).toBe(true);
    expect(limited.caps.ambient).toBe(CAP_NET_BIND_SERVICE);
    expect(limited.caps.inheritable).toBe(CAP_NET_BIND_SERVICE | CAP_NET_RAW);
    const alice = rows.get(guest.info.processes.find((p) => p.comm === 'lab-worker-1')!.pid)!;
    expect({ uids: alice.uids, effective: alice.caps.effective }).toEqual({ uids: [1000, 1000, 1000, 1000], effective: 0n });
  });

  it('cgroup: every line of every /proc/PID/cgroup, v1 hierarchies and v2, with the processes moved to child cgroups', async () => {
    const ours = () => new Map(listNamespaces(k).map((r) => [r.pid, r]));
    const { compared } = await compareEach(guest, 'cat $d/cgroup 2>/dev/null', ours, (pid, text, row) => {
      if (!row || text === '') return false;
      expect(row.cgroupV2Visible).toBe(true);
      expect(row.cgroups.map(formatCgroupLine).join('\n'), `cgroup of pid ${pid}`).toBe(text);
      expect(`0::${row.cgroupPath}`).toBe(text.split('\n').at(-1));
      return true;
    });
    expect(compared).toBeGreaterThan(60);
    const rows = ours();
    expect(rows.get(fixturePids[0]!)?.cgroupPath).toBe('/vmlens-fx/inner');
    // The v1 hierarchies the fixtures mounted, newest first, and the process moved in one of them.
    const second = rows.get(fixturePids[1]!)!.cgroups;
    expect(second.map((l) => l.controllers)).toEqual(['pids', 'name=vmlens', '']);
    expect(second.find((l) => l.controllers === 'name=vmlens')?.path).toBe('/box');
    expect(rows.get(1)!.cgroups.map((l) => l.path)).toEqual(['/', '/', '/']);
  });
}, SLOW);

/** /proc/net lines as comparable keys: protocol, addresses, state, queues, uid, inode (unix: flags, type, state, inode, path). */
function parseProcNet(text: string): string[] {
  const out: string[] = [];
  let proto = '';
  for (const raw of text.split('\n')) {
    const section = /^@@ (\w+)$/.exec(raw);
    if (section) {
      proto = section[1]!;
      continue;
    }
    const f = raw.trim().split(/\s+/);
    if (!/^[0-9a-f]+:$/.test(f[0] ?? '')) continue; // headers
    if (proto === 'unix') {
      out.push(`unix ${parseInt(f[3]!, 16)} ${parseInt(f[4]!, 16)} ${parseInt(f[5]!, 16)} ${f[6]} ${f[7] ?? ''}`);
      continue;
    }
    // Addresses are the kernel's __be32 words printed as host (little-endian) integers.
    const addr = (s: string) => {
      const [h, p] = s.split(':');
      const bytes: number[] = [];
      for (let i = 0; i < h!.length; i += 8) {
        const word = parseInt(h!.slice(i, i + 8), 16);
        bytes.push(word & 0xff, (word >>> 8) & 0xff, (word >>> 16) & 0xff, word >>> 24);
      }
      return `${bytes.join('.')}:${parseInt(p!, 16)}`;
    };
    const [tx, rx] = f[4]!.split(':').map((x) => parseInt(x, 16));
    out.push(`${proto} ${addr(f[1]!)} ${addr(f[2]!)} ${parseInt(f[3]!, 16)} ${tx} ${rx} ${f[7]} ${f[9]}`);
  }
  return out;
}

function procNetKey(r: SocketRow): string {
  if (r.proto === 'unix') {
    const type = r.type === 'STREAM' ? 1 : r.type === 'DGRAM' ? 2 : 5;
    return `unix ${r.state === 'LISTENING' ? 1 << 16 : 0} ${type} ${r.stateNumber} ${r.inode} ${r.local}`;
  }
  const bytes = (s: string | null) => {
    if (s === null) return '';
    if (!s.includes(':')) return s;
    // Expand an IPv6 text address back to its 16 bytes.
    const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
    const parse = (x: string | undefined) => (x ? x.split(':') : []);
    let words = parse(head);
    const rest = parse(tail);
    const v4 = rest.length > 0 && rest[rest.length - 1]!.includes('.') ? rest.pop()! : words.length > 0 && words[words.length - 1]!.includes('.') ? words.pop()! : undefined;
    const v4words = v4 ? v4.split('.').map(Number) : [];
    const fill = 8 - words.length - rest.length - (v4 ? 2 : 0);
    words = [...words, ...Array(tail !== undefined ? fill : 0).fill('0'), ...rest];
    const out: number[] = [];
    for (const w of words) {
      const n = parseInt(w, 16);
      out.push(n >>> 8, n & 0xff);
    }
    return [...out, ...v4words].join('.');
  };
  const state = r.stateNumber;
  return `${r.proto} ${bytes(r.localAddress)}:${r.localPort} ${bytes(r.remoteAddress)}:${r.remotePort} ${state} ${r.sendQ} ${r.recvQ} ${r.uid} ${r.inode}`;
}

/**
 * Every lab configuration (other paging mode, newer kernel, other flavour): the comparisons that
 * need no fixtures, so the shared guests stay as the other test files expect them. The default
 * guest has them above, with fixtures.
 */
const ALL_CONFIGS: LabConfig[] = process.env.VMLENS_FORENSICS_LAB ? ['default'] : ['default', '4level', 'k612', 'cloud'];

describe.each<LabConfig>(ALL_CONFIGS)('processes on the %s lab guest', (config) => {
  let guest: LabGuest;
  let machine: Machine;
  let k: Kernel;
  let dir: string;

  beforeAll(async () => {
    guest = await guestFor(config);
    machine = await attachQemu(guest.info.qmpSocket);
    k = await openKernel(machine);
    await machine.releaseMonitor?.();
    dir = mkdtempSync(join(tmpdir(), 'vmlens-dump-proc-'));
  });
  afterAll(async () => {
    await machine?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it.skipIf(config === 'default')('maps, descriptors, command lines and environments of every process match /proc', async () => {
    await compareMaps(guest, k);
    const shellPid = Number((await guest.console.run('echo $$')).trim());
    await compareFdLinks(guest, k, shellPid);
    await compareProcBytes(guest, k);
  });

  it('dump-proc writes every area; its present pages are what /proc/PID/mem reads', async () => {
    const worker = guest.info.processes.find((p) => p.comm === 'lab-worker-4')!;
    const index = dumpProcess(k, worker.pid, dir);
    const maps = (await guest.console.run(`cat /proc/${worker.pid}/maps`)).trim().split('\n');
    expect(index.areas.length).toBe(maps.length);
    expect(index.presentBytes).toBeGreaterThan(0);
    for (const a of index.areas) {
      expect(statSync(join(dir, a.file)).size).toBe(Number(a.end - a.start));
      // Not-present pages are zeros on disk.
      const bytes = readFileSync(join(dir, a.file));
      for (const miss of a.missing) {
        const from = Number(miss.start - a.start);
        expect(bytes.subarray(from, from + Number(miss.end - miss.start)).every((b) => b === 0)).toBe(true);
      }
    }
    // The stack and the heap, page for page, against the guest's own reading of its memory.
    for (const name of ['[stack]', '[heap]']) {
      const a = index.areas.find((x) => x.path === name)!;
      const bytes = readFileSync(join(dir, a.file));
      const present: bigint[] = [];
      for (let va = a.start; va < a.end; va += 4096n) if (!a.missing.some((m) => va >= m.start && va < m.end)) present.push(va);
      expect(present.length, `present pages of ${name}`).toBeGreaterThan(0);
      for (const va of present.slice(-4)) {
        const out = await guest.console.run(`dd if=/proc/${worker.pid}/mem bs=4096 skip=$((0x${(va / 4096n).toString(16)})) count=1 2>/dev/null | od -An -tx1 -v`);
        const off = Number(va - a.start);
        expect(Buffer.from(bytes.subarray(off, off + 4096)).equals(Buffer.from(odBytes(out))), `${name} page 0x${va.toString(16)}`).toBe(true);
      }
    }
    // The worker's secret is in its memory (the shell keeps its variables on the heap).
    const heap = readFileSync(join(dir, index.areas.find((x) => x.path === '[heap]')!.file));
    expect(heap.includes(Buffer.from('vmlens-lab-secret-4'))).toBe(true);
    const json = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as { pid: number; areas: unknown[] };
    expect(json.pid).toBe(worker.pid);
    expect(json.areas.length).toBe(index.areas.length);
  });

  it('dump-proc fills file pages a process never touched from the page cache, as the guest reads them', async () => {
    // Any process with busybox pages it has not faulted in will do (reading them from inside the
    // guest, below, maps them: on a long-lived guest some processes have none left).
    let found: { pid: number; dir: string; area: DumpedArea } | undefined;
    for (const t of listTasks(k).filter((x) => !x.kthread)) {
      const out = join(dir, `cache-${t.pid}`);
      const index = dumpProcess(k, t.pid, out);
      const area = index.areas.find((a) => a.path === '/bin/busybox' && a.pageCache.length > 0);
      if (area) {
        expect(index.pageCacheBytes).toBeGreaterThan(0);
        found = { pid: t.pid, dir: out, area };
        break;
      }
    }
    expect(found, 'a process with busybox pages only in the page cache').toBeDefined();
    const { pid, area } = found!;
    const bytes = readFileSync(join(found!.dir, area.file));
    for (const range of area.pageCache.slice(0, 3)) {
      const va = range.start;
      const out = await guest.console.run(`dd if=/proc/${pid}/mem bs=4096 skip=$((0x${(va / 4096n).toString(16)})) count=1 2>/dev/null | od -An -tx1 -v`);
      const off = Number(va - area.start);
      expect(Buffer.from(bytes.subarray(off, off + 4096)).equals(Buffer.from(odBytes(out))), `busybox page 0x${va.toString(16)} of pid ${pid}`).toBe(true);
    }
  });

  it('cmdline reads every lab worker\'s arguments through its own page tables', () => {
    for (const p of guest.info.processes.filter((x) => x.comm.startsWith('lab-worker-'))) {
      const n = p.comm.slice('lab-worker-'.length);
      expect(listCmdlines(k, { pids: new Set([p.pid]) })[0]!.args).toEqual(['/bin/sh', `/bin/lab-worker-${n}`, n]);
    }
  });
}, SLOW);

describe('the forensic commands through the CLI', () => {
  let guest: LabGuest;
  let dir: string;
  const run = (args: string[]) => spawnSync(join(process.cwd(), 'bin/vmlens'), ['--qmp', guest.info.qmpSocket, ...args], { encoding: 'utf8', timeout: 120_000 });

  beforeAll(async () => {
    guest = await guestFor('default');
    dir = mkdtempSync(join(tmpdir(), 'vmlens-cli-dump-'));
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('maps --proc prints /proc/PID/maps exactly', async () => {
    const worker = guest.info.processes.find((p) => p.comm === 'lab-worker-1')!;
    const r = run(['maps', '-p', String(worker.pid), '--proc']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${(await guest.console.run(`cat /proc/${worker.pid}/maps`)).trimEnd()}\n`);
  });

  it('every command answers --json with rows for pid 1 or the httpd', () => {
    const httpd = guest.info.processes.find((p) => p.comm === 'httpd')!;
    for (const args of [['lsof', '-p', '1'], ['netstat', '-t', '-p', String(httpd.pid)], ['mounts', '-p', '1'], ['cmdline', '-p', '1'], ['environ', '-p', '1'], ['ns', '-p', '1']]) {
      const r = run(['--json', ...args]);
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      const rows = JSON.parse(r.stdout) as unknown[];
      expect(rows.length, args.join(' ')).toBeGreaterThan(0);
    }
  });

  it('cgroup prints the lines of /proc/PID/cgroup as rows, a v1 hierarchy mounted for the test included', async () => {
    const V1 = '/tmp/vmlens-cg-cli';
    const pid = Number((await guest.console.run(`mkdir -p ${V1} && mount -t cgroup -o none,name=vmlenscli cgroup ${V1} && echo $$`)).trim());
    try {
      const r = run(['--json', 'cgroup', '-p', String(pid)]);
      expect(r.status, r.stderr).toBe(0);
      const rows = JSON.parse(r.stdout) as { pid: number; hierarchy: number; controllers: string; path: string }[];
      const want = (await guest.console.run(`cat /proc/${pid}/cgroup`)).trim().split('\n');
      expect(rows.map((x) => `${x.hierarchy}:${x.controllers}:${x.path}`)).toEqual(want);
      expect(rows.some((x) => x.controllers === 'name=vmlenscli' && x.pid === pid)).toBe(true);
      const table = run(['cgroup', '-p', String(pid)]);
      expect(table.stdout).toMatch(/^PID +COMM +ID +CONTROLLERS +PATH\n/);
    } finally {
      await guest.console.run(`umount ${V1}; rmdir ${V1}`);
    }
  });

  it('dump-proc writes the areas and an index; a pid that is not there is a one-line usage error', () => {
    const worker = guest.info.processes.find((p) => p.comm === 'lab-worker-2')!;
    const r = run(['--json', 'dump-proc', String(worker.pid), '--out', dir]);
    expect(r.status, r.stderr).toBe(0);
    const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as { pid: number; areas: { file: string }[] };
    expect(index.pid).toBe(worker.pid);
    for (const a of index.areas) expect(statSync(join(dir, a.file)).isFile()).toBe(true);
    const bad = run(['maps', '-p', '999999']);
    expect(bad.status).toBe(2);
    expect(bad.stderr.trim()).toBe('vmlens: no process with pid 999999 in the guest');
  });
});
