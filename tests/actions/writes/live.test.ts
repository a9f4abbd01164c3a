/**
 * Data writes against a real guest, judged by the guest's own view through its console: every
 * sysctl read agrees with its /proc/sys, every write shows there exactly as the same write made
 * by the guest itself would, refusals change nothing, undo restores, dumps are refused, and
 * after 100 mixed writes the guest still runs with the same processes.
 *
 * One file, run in order: the tests change state (hostname, sysctls) that the others check.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findSysctl, formatSysctl, listSysctls, readSysctlValues } from '../../../src/analyses/sysctl.ts';
import { readAuditHistory } from '../../../src/actions/audit.ts';
import { getHostname, setHostname } from '../../../src/actions/hostname.ts';
import { evaluateAddress, restorePointer } from '../../../src/actions/restore.ts';
import { setSysctl } from '../../../src/actions/sysctl.ts';
import { undoLast } from '../../../src/actions/transaction.ts';
import type { Kernel } from '../../../src/kernel/kernel.ts';
import { openKernel } from '../../../src/kernel/open.ts';
import { LAB_HOSTNAME, type GuestConsole } from '../../../src/lab/index.ts';
import { openDump } from '../../../src/machine/dump.ts';
import type { QemuMachine } from '../../../src/machine/qemu.ts';
import { ReadOnlyError, UsageError, VmlensError } from '../../../src/util/errors.ts';
import { guestKallsyms, guestProcesses } from '../../support/ground-truth.ts';
import { guestSysctl, openWritesKernel, tempAuditLog, writesGuest, type WritesGuest } from './support.ts';

const LONG = 600_000;

/** Single-quote for the guest's shell. */
const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
const procPath = (name: string): string => `/proc/sys/${name.replace(/\./g, '/')}`;

/** The guest writes a sysctl itself; its exit status and what it shows afterwards. */
async function guestWrite(con: GuestConsole, name: string, value: string): Promise<{ ok: boolean; shown: string }> {
  const r = await con.exec(`printf '%s\\n' ${q(value)} > ${procPath(name)}`);
  return { ok: r.exitCode === 0, shown: await guestSysctl(con, name) };
}

let g: WritesGuest;
let machine: QemuMachine;
let kernel: Kernel;
let log: { path: string; cleanup: () => void };

beforeAll(async () => {
  g = await writesGuest();
  ({ machine, kernel } = await openWritesKernel(g.info));
  log = tempAuditLog();
}, LONG);

afterAll(async () => {
  await machine?.close();
  log?.cleanup();
});

const auditText = (): string => (existsSync(log.path) ? readFileSync(log.path, 'utf8') : '');

describe('reading sysctls', () => {
  it('lists every file of the guest\'s /proc/sys, and formats values exactly as the guest shows them', async () => {
    const out = await g.console.run('cd /proc/sys && for f in $(find . -type f); do echo "@@$f"; cat $f 2>/dev/null; done', LONG);
    const guest = new Map<string, string>();
    for (const chunk of out.split('@@./').slice(1)) {
      const nl = chunk.indexOf('\n');
      guest.set(chunk.slice(0, nl).replace(/\//g, '.'), chunk.slice(nl + 1).replace(/\n$/, ''));
    }
    const ours = readSysctlValues(kernel, listSysctls(kernel));
    expect(kernel.warnings.items).toEqual([]);
    expect(guest.size).toBeGreaterThan(1000);
    expect(new Set(ours.map((v) => v.name))).toEqual(new Set(guest.keys()));

    const formatted = ours.filter((v) => v.value !== undefined);
    const differ = formatted.filter((v) => v.value !== guest.get(v.name));
    // A value may change between the guest's read and ours (counters): such a one must agree on a second look.
    for (const v of differ) {
      const again = await guestSysctl(g.console, v.name);
      expect({ name: v.name, ours: formatSysctl(kernel, findSysctl(kernel, v.name)) }).toEqual({ name: v.name, ours: again });
    }
    expect(formatted.length).toBeGreaterThan(800);
    // Every readable entry whose handler is one of kernel/sysctl.c's is formatted.
    const base = ours.filter((v) => v.spec && v.spec.name.startsWith('proc_do') && (v.mode & 0o444) !== 0);
    expect(base.filter((v) => v.value === undefined).map((v) => `${v.name}: ${v.error}`)).toEqual([]);
    // Per-namespace entries are reached through their links (net.*, user.*, fs.mqueue.*, kernel.shmmax…).
    for (const name of ['net.ipv4.icmp_echo_ignore_broadcasts', 'user.max_user_namespaces', 'fs.mqueue.msg_max', 'kernel.shmmax']) {
      expect(formatted.find((v) => v.name === name)?.value, name).toBe(guest.get(name));
    }
  }, LONG);

  it('finds one sysctl by dotted or slashed name, lists a subtree, and refuses unknown names', () => {
    const a = findSysctl(kernel, 'kernel.hostname');
    expect(findSysctl(kernel, 'kernel/hostname').table).toBe(a.table);
    expect(findSysctl(kernel, '/proc/sys/kernel/hostname').table).toBe(a.table);
    expect(a.spec?.name).toBe('proc_do_uts_string');
    const sub = listSysctls(kernel, { prefix: 'net.ipv4.route' });
    expect(sub.length).toBeGreaterThan(5);
    expect(sub.every((e) => e.name.startsWith('net.ipv4.route.'))).toBe(true);
    expect(() => findSysctl(kernel, 'kernel.no_such_thing')).toThrow("unknown sysctl 'kernel.no_such_thing'");
    expect(() => findSysctl(kernel, 'net.ipv4')).toThrow(/is a directory/);
  });
});

describe('sysctl writes, against the same write made by the guest itself', () => {
  const cases: [kind: string, name: string, value: string][] = [
    ['int (proc_dointvec)', 'fs.lease-break-time', '46'],
    ['int with bounds (proc_dointvec_minmax)', 'vm.swappiness', '17'],
    ['unsigned (proc_douintvec)', 'net.core.xfrm_aevent_etime', '11'],
    ['unsigned with bounds (proc_douintvec_minmax)', 'net.ipv4.fib_sync_mem', '600000'],
    ['u8 of the init net namespace (proc_dou8vec_minmax)', 'net.ipv4.icmp_echo_ignore_broadcasts', '0'],
    ['unsigned long (proc_doulongvec_minmax)', 'fs.aio-max-nr', '65537'],
    ['seconds in jiffies (proc_dointvec_jiffies)', 'net.ipv4.ipfrag_time', '31'],
    ['milliseconds in jiffies, rounded (proc_dointvec_ms_jiffies)', 'net.ipv4.icmp_ratelimit', '1001'],
    ['part of an int vector', 'kernel.printk', '3 4'],
    ['bool (proc_dobool)', 'vm.hugetlb_optimize_vmemmap', '1'],
    ['uts string (proc_do_uts_string)', 'kernel.domainname', 'vmlens.test'],
    ['string (proc_dostring)', 'kernel.poweroff_cmd', '/bin/true'],
    ['capability-checked int (proc_dointvec_minmax_sysadmin)', 'kernel.dmesg_restrict', '0'],
  ];

  it.each(cases)('%s: %s=%s', async (_kind, name, value) => {
    const original = await guestSysctl(g.console, name);
    const own = await guestWrite(g.console, name, value);
    expect(own.ok).toBe(true);
    expect((await guestWrite(g.console, name, original)).shown).toBe(original);
    expect(own.shown).not.toBe(original);

    const r = await setSysctl(kernel, name, value, { auditPath: log.path });
    expect(r.oldValue).toBe(original);
    expect(r.newValue).toBe(own.shown);
    expect(await guestSysctl(g.console, name)).toBe(own.shown);
    expect(await machine.isPaused()).toBe(false);

    const u = await undoLast(kernel, { auditPath: log.path });
    expect(u.undone.id).toBe(r.id);
    expect(await guestSysctl(g.console, name)).toBe(original);
  }, LONG);

  it('a dry run shows address, symbol and bytes, and changes nothing', async () => {
    const before = await guestSysctl(g.console, 'vm.swappiness');
    const audit = auditText();
    const r = await setSysctl(kernel, 'vm.swappiness', '123', { dryRun: true, auditPath: log.path });
    expect(r.dryRun).toBe(true);
    expect(r.newValue).toBe('123');
    expect(r.changes).toHaveLength(1);
    const c = r.changes[0]!;
    expect(c.symbol).toBe('vm_swappiness');
    expect(c.va).toBe(kernel.symbol('vm_swappiness'));
    expect(c.pa).toBe(kernel.space.translateVa(c.va));
    expect(new DataView(c.old.buffer, c.old.byteOffset).getInt32(0, true)).toBe(Number(before));
    expect([...c.new]).toEqual([123, 0, 0, 0]);
    expect(await guestSysctl(g.console, 'vm.swappiness')).toBe(before);
    expect(auditText()).toBe(audit);
  }, LONG);

  const refusals: [why: string, name: string, value: string, message: RegExp, guestRefuses: boolean | undefined][] = [
    ['above the maximum', 'vm.swappiness', '201', /vm\.swappiness: 201 is out of range 0 … 200/, true],
    ['above a u8 maximum', 'net.ipv4.icmp_echo_ignore_broadcasts', '2', /out of range 0 … 1/, true],
    ['below an unsigned minimum', 'net.ipv4.fib_sync_mem', '1', /out of range 65536 … /, true],
    ['negative for an unsigned', 'net.core.xfrm_aevent_etime', '-1', /out of range 0 … 4294967295/, true],
    ['not a number', 'fs.lease-break-time', 'soon', /'soon' is not an integer/, true],
    ['more values than the vector holds', 'kernel.printk', '1 2 3 4 5', /at most 4 values/, undefined],
    ['a read-only sysctl', 'kernel.osrelease', '7.0', /read-only \(mode 0444\)/, true],
    ['a string too long', 'kernel.domainname', 'x'.repeat(65), /65 bytes; at most 64 fit/, undefined],
    ['a handler with side effects', 'net.ipv4.ip_forward', '1', /devinet_sysctl_forward does more than store the value/, false],
    ['a handler not understood', 'kernel.random.write_wakeup_threshold', '100', /not one vmlens understands/, false],
    ['an unknown name', 'kernel.no_such_thing', '1', /unknown sysctl 'kernel.no_such_thing'/, true],
    ['a directory', 'net.ipv4', '1', /is a directory/, true],
  ];

  it.each(refusals)('refuses %s (%s=%s) cleanly, changing nothing', async (_why, name, value, message, guestRefuses) => {
    const exists = !name.includes('no_such') && name !== 'net.ipv4';
    const before = exists ? await guestSysctl(g.console, name) : '';
    const audit = auditText();
    const err = await setSysctl(kernel, name, value, { auditPath: log.path }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UsageError);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).not.toContain('\n');
    expect(auditText()).toBe(audit);
    expect(await machine.isPaused()).toBe(false);
    if (exists) expect(await guestSysctl(g.console, name)).toBe(before);
    if (guestRefuses === true) {
      // The guest's own write is refused as well (and changes nothing either).
      const own = await g.console.exec(`printf '%s\\n' ${q(value)} > ${procPath(name)}`);
      expect(own.exitCode).not.toBe(0);
      if (exists) expect(await guestSysctl(g.console, name)).toBe(before);
    }
  }, LONG);

  it('undo refuses when the guest changed the value since, and changes nothing', async () => {
    const original = await guestSysctl(g.console, 'vm.swappiness');
    await setSysctl(kernel, 'vm.swappiness', '23', { auditPath: log.path });
    expect((await guestWrite(g.console, 'vm.swappiness', '24')).shown).toBe('24');
    const err = await undoLast(kernel, { auditPath: log.path }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmlensError);
    expect((err as Error).message).toMatch(/cannot undo 'sysctl vm\.swappiness=23'.*now holds 18000000, not the 17000000 expected/);
    expect(await guestSysctl(g.console, 'vm.swappiness')).toBe('24');
    expect((await guestWrite(g.console, 'vm.swappiness', original)).shown).toBe(original);
  }, LONG);
});

describe('hostname', () => {
  it('sets what the guest\'s hostname and uname -n print, and undo puts it back', async () => {
    expect(getHostname(kernel)).toBe(LAB_HOSTNAME);
    const r = await setHostname(kernel, 'vmlens-changed', { auditPath: log.path });
    expect(r.oldName).toBe(LAB_HOSTNAME);
    expect((await g.console.run('hostname; uname -n')).trim().split('\n')).toEqual(['vmlens-changed', 'vmlens-changed']);
    expect(getHostname(kernel)).toBe('vmlens-changed');
    // NUL-padded as sethostname leaves it: nothing of the longer old name remains.
    const field = kernel.space.readBytes(kernel.symbol('init_uts_ns') + BigInt(kernel.offsetOf('uts_namespace', 'name') + kernel.offsetOf('new_utsname', 'nodename')), 65);
    expect([...field.subarray(14)].every((b) => b === 0)).toBe(true);
    await undoLast(kernel, { auditPath: log.path });
    expect((await g.console.run('hostname; uname -n')).trim().split('\n')).toEqual([LAB_HOSTNAME, LAB_HOSTNAME]);
  }, LONG);

  it('takes a 64-byte name, and refuses longer, empty and control-character names', async () => {
    const long = `h${'x'.repeat(63)}`;
    await setHostname(kernel, long, { auditPath: log.path });
    expect((await g.console.run('hostname')).trim()).toBe(long);
    await undoLast(kernel, { auditPath: log.path });
    const audit = auditText();
    for (const bad of [`${long}y`, '', 'a\nb', 'tab\there']) await expect(setHostname(kernel, bad, { auditPath: log.path }), JSON.stringify(bad)).rejects.toThrow(UsageError);
    expect(auditText()).toBe(audit);
    expect((await g.console.run('hostname')).trim()).toBe(LAB_HOSTNAME);
  }, LONG);
});

describe('restoring a hooked pointer', () => {
  it('puts a syscall-table entry back to the function the guest\'s kallsyms names', async () => {
    const truth = await guestKallsyms(g.console);
    const slot = evaluateAddress(kernel, 'sys_call_table+8*62');
    expect(slot).toBe(truth.get('sys_call_table')![0]! + 8n * 62n);
    const original = kernel.space.readU64Big(slot);
    expect(original).toBe(truth.get('__x64_sys_kill')![0]);

    // A hook, staged: the slot made to point elsewhere.
    await restorePointer(kernel, slot, '__x64_sys_getpid', { auditPath: log.path });
    expect(kernel.space.readU64Big(slot)).toBe(truth.get('__x64_sys_getpid')![0]);
    const r = await restorePointer(kernel, slot, '__x64_sys_kill', { auditPath: log.path });
    expect(kernel.symbol(r.oldSymbol!)).toBe(truth.get('__x64_sys_getpid')![0]); // or an alias at the same address
    expect(r.newSymbol).toBe('__x64_sys_kill');
    expect(kernel.space.readU64Big(slot)).toBe(original);
    const again = await restorePointer(kernel, slot, original, { auditPath: log.path });
    expect(again.unchanged).toBe(true);
    expect((await g.console.exec('kill -0 1')).exitCode).toBe(0);
  }, LONG);

  it('refuses values that are not the start of a kernel function, and unaligned slots', async () => {
    const truth = await guestKallsyms(g.console);
    const slot = evaluateAddress(kernel, 'sys_call_table+8*62');
    const before = kernel.space.readU64Big(slot);
    const moduleFunction = (await g.console.run("grep ' t .*\\[dummy\\]' /proc/kallsyms | head -1")).split(/\s+/)[0]!;
    const audit = auditText();
    const bad: [bigint | string, RegExp][] = [
      [truth.get('init_task')![0]!, /is not in the kernel's text/],
      [truth.get('__x64_sys_kill')![0]! + 4n, /not the start of a kernel function \(it is __x64_sys_kill\+0x4\)/],
      [BigInt(`0x${moduleFunction}`), /is not in the kernel's text/],
      ['no_such_function', /has no symbol 'no_such_function'/],
    ];
    for (const [value, message] of bad) await expect(restorePointer(kernel, slot, value, { auditPath: log.path })).rejects.toThrow(message);
    await expect(restorePointer(kernel, slot + 1n, '__x64_sys_kill', { auditPath: log.path })).rejects.toThrow(/not 8-byte aligned/);
    expect(kernel.space.readU64Big(slot)).toBe(before);
    expect(auditText()).toBe(audit);
  }, LONG);

  it('evaluates address expressions', () => {
    const base = kernel.symbol('sys_call_table');
    expect(evaluateAddress(kernel, 'sys_call_table + 0x10 * 2 - 8')).toBe(base + 24n);
    expect(evaluateAddress(kernel, '0x1000')).toBe(0x1000n);
    expect(() => evaluateAddress(kernel, 'sys_call_table+')).toThrow(UsageError);
    expect(() => evaluateAddress(kernel, 'sys_call_table/2')).toThrow(UsageError);
    expect(() => evaluateAddress(kernel, '0-1')).toThrow(/not a 64-bit address/);
  });
});

/** Run the CLI against the guest with this file's audit log. */
function cli(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(join(process.cwd(), 'bin/vmlens'), args, { encoding: 'utf8', env: { ...process.env, VMLENS_AUDIT_LOG: log.path }, timeout: 300_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

describe('the admin commands', () => {
  // QEMU serves one client per QMP socket: the CLI's turn while this file's connection is closed.
  beforeAll(async () => {
    await machine.close();
  });
  afterAll(async () => {
    ({ machine, kernel } = await openWritesKernel(g.info));
  }, LONG);

  it('sysctl --dry-run, a write, undo and audit, as a user runs them', async () => {
    const lab = ['--lab', g.info.name];
    const before = await guestSysctl(g.console, 'vm.swappiness');
    const dry = cli(...lab, 'sysctl', 'vm.swappiness=31', '--dry-run');
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(new RegExp(`^vm\\.swappiness = 31\\ndry run: nothing written\\n  0x[0-9a-f]+ \\(vm_swappiness\\)  phys 0x[0-9a-f]+  ${Number(before).toString(16).padStart(2, '0')}000000 → 1f000000\\n$`));
    expect(await guestSysctl(g.console, 'vm.swappiness')).toBe(before);

    const set = cli(...lab, '--json', 'sysctl', 'vm.swappiness=31');
    expect(set.code, set.stderr).toBe(0);
    const json = JSON.parse(set.stdout) as { name: string; old: string; new: string; auditId: string }[];
    expect(json[0]).toMatchObject({ name: 'vm.swappiness', old: before, new: '31' });
    expect(await guestSysctl(g.console, 'vm.swappiness')).toBe('31');

    const undo = cli(...lab, 'undo');
    expect(undo.code, undo.stderr).toBe(0);
    expect(undo.stdout).toMatch(/^undone: sysctl vm\.swappiness=31 /);
    expect(await guestSysctl(g.console, 'vm.swappiness')).toBe(before);

    const audit = cli('--json', 'audit', '--last', '2');
    const entries = JSON.parse(audit.stdout) as { id: string; kind: string; result: string; undone: boolean; undoes?: string }[];
    expect(entries.map((e) => [e.kind, e.result, e.undone])).toEqual([
      ['write', 'ok', true],
      ['undo', 'ok', false],
    ]);
    expect(entries[1]!.undoes).toBe(json[0]!.auditId);

    const bad = cli(...lab, 'sysctl', 'vm.swappiness=999');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe('vmlens: vm.swappiness: 999 is out of range 0 … 200\n');
    expect(cli(...lab, 'sysctl', 'vm.swappiness').stdout).toBe(`vm.swappiness = ${before}\n`);
  }, LONG);
});

describe('dumps', () => {
  let dir: string;
  let file: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vmlens-writes-dump-'));
    file = join(dir, 'guest.core');
    await machine.qmp.execute('dump-guest-memory', { paging: false, protocol: `file:${file}` }, { timeoutMs: 300_000 });
  }, LONG);
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('are read-only: every write is refused with one clear line, and the file is unchanged', async () => {
    const dump = await openDump(file);
    try {
      const k = await openKernel(dump);
      expect(getHostname(k)).toBe(LAB_HOSTNAME);
      const { size, mtimeMs } = statSync(file);
      for (const attempt of [
        () => setSysctl(k, 'vm.swappiness', '11', { auditPath: log.path }),
        () => setHostname(k, 'from-a-dump', { auditPath: log.path }),
        () => restorePointer(k, k.symbol('sys_call_table') + 8n * 62n, '__x64_sys_kill', { auditPath: log.path }),
        () => undoLast(k, { auditPath: log.path }),
      ]) {
        const err = await attempt().catch((e: unknown) => e);
        expect(err).toBeInstanceOf(ReadOnlyError);
        expect((err as Error).message).toMatch(/dumps are read-only/);
      }
      expect(statSync(file)).toMatchObject({ size, mtimeMs });
      expect(getHostname(k)).toBe(LAB_HOSTNAME);
    } finally {
      await dump.close();
    }
    const viaCli = cli('--dump', file, 'sysctl', 'vm.swappiness=11');
    expect(viaCli.code).toBe(1);
    expect(viaCli.stderr).toMatch(/^vmlens: .*dumps are read-only; vmlens writes only to live guests\n$/);
  }, LONG);
});

describe('100 mixed writes in a row', () => {
  /** Processes that are neither kernel threads nor the console's own transient commands. */
  async function steadyProcesses(): Promise<string[]> {
    const procs = await guestProcesses(g.console);
    const transient = (pid: number): boolean => {
      for (let p = procs.get(pid), hops = 0; p && hops < 64; p = procs.get(p.ppid), hops++) {
        const parent = procs.get(p.ppid);
        if (parent && parent.comm === 'sh' && procs.get(parent.ppid)?.comm === 'lab-shell') return true;
      }
      return false;
    };
    return [...procs.values()]
      .filter((p) => p.pid !== 2 && p.ppid !== 2 && !transient(p.pid))
      .map((p) => `${p.pid} ${p.comm}`)
      .sort();
  }

  it('sysctl writes, hostname changes and undos: the guest ends as it began, and still answers', async () => {
    const processes = await steadyProcesses();
    expect(processes.length).toBeGreaterThan(16);
    const start = { swappiness: await guestSysctl(g.console, 'vm.swappiness'), printk: await guestSysctl(g.console, 'kernel.printk'), hostname: LAB_HOSTNAME };

    // The model: what each value should be; a stack of what each write replaced, for undo.
    const model = { ...start };
    const stack: { key: keyof typeof model; before: string }[] = [];
    let seed = 12345;
    const rand = (n: number): number => {
      // The low bits of this generator cycle quickly: take the high ones.
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return Math.floor((seed / 2 ** 31) * n);
    };
    const printkWith = (first: number): string => [String(first), ...model.printk.split('\t').slice(1)].join('\t');
    const ops = { sysctl: 0, printk: 0, hostname: 0, undo: 0 };
    try {
      for (let i = 0; i < 100; i++) {
        const pick = rand(stack.length > 0 ? 4 : 3);
        if (pick === 0) {
          const v = String(rand(201));
          const r = await setSysctl(kernel, 'vm.swappiness', v, { auditPath: log.path });
          // A write of the value already there changes nothing and is not logged: nothing to undo.
          if (!r.unchanged) stack.push({ key: 'swappiness', before: model.swappiness });
          model.swappiness = v;
          ops.sysctl++;
        } else if (pick === 1) {
          const first = 1 + rand(7);
          const r = await setSysctl(kernel, 'kernel.printk', String(first), { auditPath: log.path });
          if (!r.unchanged) stack.push({ key: 'printk', before: model.printk });
          model.printk = printkWith(first);
          ops.printk++;
        } else if (pick === 2) {
          const name = `mix-${i}-${rand(1000)}`;
          const r = await setHostname(kernel, name, { auditPath: log.path });
          if (!r.unchanged) stack.push({ key: 'hostname', before: model.hostname });
          model.hostname = name;
          ops.hostname++;
        } else {
          const top = stack.pop()!;
          await undoLast(kernel, { auditPath: log.path });
          model[top.key] = top.before;
          ops.undo++;
        }
        // vmlens's own view after every step; the guest's every 20 steps.
        expect(formatSysctl(kernel, findSysctl(kernel, 'vm.swappiness')), `step ${i}`).toBe(model.swappiness);
        expect(formatSysctl(kernel, findSysctl(kernel, 'kernel.printk')), `step ${i}`).toBe(model.printk);
        expect(getHostname(kernel), `step ${i}`).toBe(model.hostname);
        if (i % 20 === 19) {
          expect(await guestSysctl(g.console, 'vm.swappiness')).toBe(model.swappiness);
          expect(await guestSysctl(g.console, 'kernel.printk')).toBe(model.printk);
          expect((await g.console.run('uname -n')).trim()).toBe(model.hostname);
        }
      }
    } finally {
      // Back to the start, whatever happened: the guest is reused.
      await setSysctl(kernel, 'vm.swappiness', start.swappiness, { auditPath: log.path });
      await setSysctl(kernel, 'kernel.printk', start.printk, { auditPath: log.path });
      await setHostname(kernel, start.hostname, { auditPath: log.path });
    }
    expect(Math.min(ops.sysctl, ops.printk, ops.hostname, ops.undo)).toBeGreaterThan(5);
    expect(await machine.isPaused()).toBe(false);

    expect(await guestSysctl(g.console, 'vm.swappiness')).toBe(start.swappiness);
    expect(await guestSysctl(g.console, 'kernel.printk')).toBe(start.printk);
    expect((await g.console.run('echo alive; hostname')).trim()).toBe(`alive\n${LAB_HOSTNAME}`);
    expect(await steadyProcesses()).toEqual(processes);
    // Every write is in the log, each with an outcome.
    const history = readAuditHistory(log.path).entries;
    expect(history.filter((e) => e.result !== 'ok')).toEqual([]);
  }, LONG);
});
