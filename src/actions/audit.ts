/**
 * The audit log: one JSON object per line, append-only, of every change vmlens makes to a guest
 * (data writes, their undos, kernel function calls made from outside). It is what `vmlens audit`
 * prints and what `vmlens undo` reads to find the bytes a write replaced.
 *
 * Location: $VMLENS_AUDIT_LOG when set (a file path), else $XDG_STATE_HOME/vmlens/audit.jsonl,
 * else ~/.local/state/vmlens/audit.jsonl. The directory is created 0700 and the file 0600: the
 * log holds guest memory contents.
 *
 * Appending: each entry is written with one write(2) on a file opened O_APPEND, so entries from
 * concurrent vmlens processes never interleave inside a line (Linux keeps appends of one write
 * whole on local file systems).
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Machine } from '../machine/types.ts';
import { UsageError } from '../util/errors.ts';

/** Environment variable that overrides the log's path (tests, system-wide logs). */
export const AUDIT_LOG_ENV = 'VMLENS_AUDIT_LOG';

/** Which guest a change was made to. */
export interface AuditTarget {
  /** The name users know the guest by (lab name, or the QMP socket path). */
  readonly guest: string;
  /** QMP socket path of a live QEMU guest. */
  readonly qmp?: string;
  /**
   * The running kernel's _text address (KASLR applied), as 0x hex: identifies one boot of the
   * guest, so an undo never applies to a guest rebooted since the write.
   */
  readonly kernelText?: string;
}

/** One contiguous range of guest memory changed by an entry. */
export interface AuditWrite {
  /** Kernel virtual address, 0x hex. */
  readonly va: string;
  /** Guest-physical address of the first byte, 0x hex (a write may span pages: see `pieces`). */
  readonly pa: string;
  /** symbol+offset of `va`, when the kernel has a symbol there. */
  readonly symbol?: string;
  /** Bytes before and after, lower-case hex, same length. */
  readonly old: string;
  readonly new: string;
}

/**
 * - `write`: a data write (sysctl, hostname, restore). Undo-able.
 * - `undo`: the revert of an earlier write; `undoes` names it.
 * - `call`: a kernel function called from outside (kill, rmmod…); not undo-able.
 */
export type AuditKind = 'write' | 'undo' | 'call';

/**
 * - `started`: written before the guest is touched, with the old bytes; a later line with the
 *   same id gives the outcome. A `started` entry with no outcome means vmlens died mid-way: its
 *   old bytes are the way back.
 * - `ok`: done and verified.
 * - `failed`: an error after the guest was paused; `error` says what, and whether the old bytes
 *   were put back.
 * - `refused`: a check failed before anything was written (logged only by callers that want to).
 */
export type AuditResult = 'started' | 'ok' | 'failed' | 'refused';

export interface AuditEntry {
  /**
   * Unique id of the change (an undo refers to the write by it). Several lines may share an id:
   * the last one is the outcome (see AuditResult).
   */
  readonly id: string;
  /** ISO-8601 time the entry was written. */
  readonly time: string;
  readonly kind: AuditKind;
  /** The command as a user would type it, e.g. `sysctl vm.swappiness=10`. */
  readonly command: string;
  readonly target: AuditTarget;
  /** Memory ranges changed (or that would be, for a dry run), in the order they were written. */
  readonly writes: readonly AuditWrite[];
  readonly result: AuditResult;
  readonly error?: string;
  /** For `undo`: the id of the write it reverted. */
  readonly undoes?: string;
  /**
   * Free-form facts of the change for people reading the log (sysctl name and values, the
   * function called and its arguments and return value…). JSON values only.
   */
  readonly details?: Readonly<Record<string, AuditValue>>;
}

export type AuditValue = string | number | boolean | null | readonly AuditValue[] | { readonly [k: string]: AuditValue };

/** What a caller gives to appendAudit: `id` and `time` are filled in when absent. */
export type AuditEntryInput = Omit<AuditEntry, 'id' | 'time' | 'writes'> & {
  readonly id?: string;
  readonly time?: string;
  readonly writes?: readonly AuditWrite[];
};

/** Path of the audit log for this environment. */
export function auditLogPath(env: NodeJS.ProcessEnv = process.env): string {
  const explicit = env[AUDIT_LOG_ENV];
  if (explicit !== undefined && explicit !== '') return explicit;
  const state = env.XDG_STATE_HOME !== undefined && env.XDG_STATE_HOME !== '' ? env.XDG_STATE_HOME : join(homedir(), '.local', 'state');
  return join(state, 'vmlens', 'audit.jsonl');
}

/**
 * Append one entry to the audit log and return it as written. Call it *before* changing the guest
 * when the entry carries what is needed to repair it (old bytes), and again with the outcome:
 * a crash in between must leave the old bytes on disk.
 */
export function appendAudit(input: AuditEntryInput, path: string = auditLogPath()): AuditEntry {
  const entry: AuditEntry = {
    id: input.id ?? randomUUID(),
    time: input.time ?? new Date().toISOString(),
    kind: input.kind,
    command: input.command,
    target: input.target,
    writes: input.writes ?? [],
    result: input.result,
    ...(input.error !== undefined ? { error: input.error } : {}),
    ...(input.undoes !== undefined ? { undoes: input.undoes } : {}),
    ...(input.details !== undefined ? { details: input.details } : {}),
  };
  const line = `${JSON.stringify(entry)}\n`;
  try {
    ensureDirectory(dirname(path));
    appendFileSync(path, line, { mode: 0o600 });
  } catch (e) {
    throw new UsageError(`cannot write the audit log ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (set ${AUDIT_LOG_ENV} to another file)`);
  }
  return entry;
}

/**
 * mkdir -p, one component at a time: Node's recursive mkdirSync can spin forever on some
 * errors (under /proc, for one), and a bad path from the environment must fail, not hang.
 */
function ensureDirectory(dir: string, depth = 0): void {
  if (existsSync(dir)) return;
  if (depth > 64) throw Object.assign(new Error('path too deep'), { code: 'ENAMETOOLONG' });
  const parent = dirname(dir);
  if (parent !== dir) ensureDirectory(parent, depth + 1);
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
}

/**
 * Every change once, in the order they began, each with its final state (the last line of its
 * id). What `vmlens audit` shows and `vmlens undo` decides on.
 */
export function readAuditHistory(path: string = auditLogPath()): { entries: AuditEntry[]; skipped: number } {
  const { entries, skipped } = readAudit(path);
  const byId = new Map<string, AuditEntry>();
  for (const e of entries) byId.set(e.id, e);
  const merged: AuditEntry[] = [];
  const seen = new Set<string>();
  for (const e of entries) {
    if (seen.has(e.id)) continue;
    seen.add(e.id);
    merged.push(byId.get(e.id)!);
  }
  return { entries: merged, skipped };
}

/**
 * Every line of the log, oldest first. Lines that are not entries (a torn last line after a
 * crash, hand edits) are skipped and counted, never fatal: the log must stay readable.
 */
export function readAudit(path: string = auditLogPath()): { entries: AuditEntry[]; skipped: number } {
  if (!existsSync(path)) return { entries: [], skipped: 0 };
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read the audit log ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const entries: AuditEntry[] = [];
  let skipped = 0;
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      const v: unknown = JSON.parse(line);
      if (isAuditEntry(v)) entries.push(v);
      else skipped++;
    } catch {
      skipped++;
    }
  }
  return { entries, skipped };
}

function isAuditEntry(v: unknown): v is AuditEntry {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return (
    typeof o.id === 'string' &&
    typeof o.time === 'string' &&
    typeof o.kind === 'string' &&
    typeof o.command === 'string' &&
    typeof o.result === 'string' &&
    typeof o.target === 'object' &&
    o.target !== null &&
    typeof (o.target as Record<string, unknown>).guest === 'string' &&
    Array.isArray(o.writes) &&
    o.writes.every(
      (w: unknown) =>
        typeof w === 'object' &&
        w !== null &&
        typeof (w as Record<string, unknown>).va === 'string' &&
        typeof (w as Record<string, unknown>).old === 'string' &&
        typeof (w as Record<string, unknown>).new === 'string',
    )
  );
}

/**
 * The audit identity of a machine: its name and, for a live QEMU guest, its QMP socket path.
 * `kernelText` is added by callers that have opened the kernel.
 */
export function auditTargetOf(machine: Machine, kernelText?: bigint): AuditTarget {
  const qmp = qmpPathOf(machine);
  return {
    guest: machine.name,
    ...(qmp !== undefined ? { qmp } : {}),
    ...(kernelText !== undefined ? { kernelText: `0x${kernelText.toString(16)}` } : {}),
  };
}

/** Whether two targets are the same guest (same socket when both have one, else same name) in the same boot. */
export function sameTarget(a: AuditTarget, b: AuditTarget): boolean {
  const sameGuest = a.qmp !== undefined && b.qmp !== undefined ? a.qmp === b.qmp : a.guest === b.guest;
  if (!sameGuest) return false;
  return a.kernelText === undefined || b.kernelText === undefined || a.kernelText === b.kernelText;
}

function qmpPathOf(machine: Machine): string | undefined {
  // QemuMachine carries its QMP client; other machines (dumps) have none. Checked structurally so
  // this module does not depend on the QEMU implementation.
  const qmp = (machine as { qmp?: { path?: unknown } }).qmp;
  return qmp !== undefined && typeof qmp.path === 'string' ? qmp.path : undefined;
}

/** Lower-case hex of bytes, as the log stores them. */
export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

/** Bytes of a hex string from the log; throws UsageError when it is not even-length hex. */
export function fromHex(hex: string): Uint8Array {
  if (!/^(?:[0-9a-f]{2})*$/i.test(hex)) throw new UsageError(`audit log: '${hex.slice(0, 40)}' is not hex bytes`);
  return new Uint8Array(Buffer.from(hex, 'hex'));
}
