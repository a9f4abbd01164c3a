/**
 * Credentials of each process, as the identity part of /proc/PID/status shows them
 * (task_state() and task_cap() in fs/proc/array.c): the four uids and gids, supplementary
 * groups, the five capability sets, no_new_privs, the seccomp mode and the tracer's pid —
 * Volatility's linux.capabilities and more. What privilege escalation changes is here: a shell
 * of a user that suddenly holds euid 0 or a full effective set, a process under a debugger.
 *
 * Ids are the kernel's (kuid/kgid), which is what a reader in the initial user namespace sees.
 */
import { structReader, type StructReader } from '../kernel/helpers/struct-reader.ts';
import type { Kernel } from '../kernel/kernel.ts';
import { selectProcesses } from './processes.ts';
import type { TaskRow } from './ps.ts';

export interface CapabilitySets {
  readonly inheritable: bigint;
  readonly permitted: bigint;
  readonly effective: bigint;
  readonly bounding: bigint;
  readonly ambient: bigint;
}

export interface CredRow {
  readonly pid: number;
  readonly comm: string;
  /** uid, euid, suid, fsuid. */
  readonly uids: readonly [number, number, number, number];
  /** gid, egid, sgid, fsgid. */
  readonly gids: readonly [number, number, number, number];
  readonly groups: readonly number[];
  readonly caps: CapabilitySets;
  readonly noNewPrivs: boolean;
  /** 0 disabled, 1 strict, 2 filter. */
  readonly seccomp: number;
  /** The pid of the tracing process, 0 when none. */
  readonly tracerPid: number;
}

/** NGROUPS_MAX: more supplementary groups than the kernel allows is a corrupt group_info. */
const NGROUPS_MAX = 65536;
/** Bit 0 of task_struct.atomic_flags (PFA_NO_NEW_PRIVS). */
const PFA_NO_NEW_PRIVS = 1;

export function listCreds(k: Kernel, opts: { pids?: ReadonlySet<number> } = {}): CredRow[] {
  const r = structReader(k);
  const rows: CredRow[] = [];
  for (const t of selectProcesses(k, opts.pids)) {
    try {
      rows.push(taskCreds(k, r, t));
    } catch (e) {
      k.warnings.warn('creds', `pid ${t.pid}: ${(e as Error).message}`);
    }
  }
  return rows;
}

/** The credentials /proc/PID/status shows for a task: its objective ones (real_cred). */
export function taskCreds(k: Kernel, r: StructReader, t: Pick<TaskRow, 'task' | 'pid' | 'comm'>): CredRow {
  const cred = r.ptr(t.task, 'task_struct', 'real_cred');
  if (cred === 0n) throw new Error('real_cred is NULL');
  const id = (member: string): number => r.u32(cred, 'cred', `${member}.val`);
  const ptraced = r.u32(t.task, 'task_struct', 'ptrace') !== 0;
  const parent = ptraced ? r.ptr(t.task, 'task_struct', 'parent') : 0n;
  return {
    pid: t.pid,
    comm: t.comm,
    uids: [id('uid'), id('euid'), id('suid'), id('fsuid')],
    gids: [id('gid'), id('egid'), id('sgid'), id('fsgid')],
    groups: readGroups(k, r, r.ptr(cred, 'cred', 'group_info')),
    caps: {
      inheritable: capSet(k, r, cred, 'cap_inheritable'),
      permitted: capSet(k, r, cred, 'cap_permitted'),
      effective: capSet(k, r, cred, 'cap_effective'),
      bounding: capSet(k, r, cred, 'cap_bset'),
      ambient: r.has('cred', 'cap_ambient') ? capSet(k, r, cred, 'cap_ambient') : 0n,
    },
    noNewPrivs: (Number(r.u64(t.task, 'task_struct', 'atomic_flags') & 0xffn) & PFA_NO_NEW_PRIVS) !== 0,
    seccomp: r.has('task_struct', 'seccomp') ? r.i32(t.task, 'task_struct', 'seccomp.mode') : 0,
    // The tracer's pid as the initial pid namespace numbers it (task_pid_nr_ns of the parent).
    tracerPid: parent === 0n ? 0 : r.i32(parent, 'task_struct', 'pid'),
  };
}

/**
 * kernel_cap_t: one u64 (`val`, 6.3+) or two u32 words (`cap[2]`, low word first, before) —
 * the same eight little-endian bytes either way.
 */
function capSet(k: Kernel, r: StructReader, cred: bigint, member: string): bigint {
  return k.space.readU64Big(r.at(cred, 'cred', member));
}

/** group_info->gid[0 … ngroups), bounded by NGROUPS_MAX. */
function readGroups(k: Kernel, r: StructReader, info: bigint): number[] {
  if (info === 0n) return [];
  const n = r.i32(info, 'group_info', 'ngroups');
  if (n < 0 || n > NGROUPS_MAX) {
    k.warnings.warn('creds', `group_info 0x${info.toString(16)} claims ${n} groups; none read`);
    return [];
  }
  const base = r.at(info, 'group_info', 'gid');
  const bytes = n === 0 ? new Uint8Array(0) : k.space.readBytes(base, 4 * n);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: n }, (_, i) => dv.getUint32(4 * i, true));
}

/** A capability set as /proc/PID/status prints it: 16 hex digits. */
export function formatCapSet(caps: bigint): string {
  return caps.toString(16).padStart(16, '0');
}
