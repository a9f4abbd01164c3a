/**
 * Every data write vmlens makes to a guest is a transaction:
 *
 *   1. the guest is paused (QMP stop, unless it already was) and the PhysReader declared frozen;
 *   2. the writes are planned against the paused guest (so the old bytes are exact) and checked:
 *      each address translates, and — for an undo — the bytes there are still the ones expected;
 *   3. the old and new bytes go to the audit log *before* anything is written;
 *   4. the bytes are written through the AddressSpace and read back;
 *   5. if the read-back differs or a write fails, the old bytes are put back and the log says so;
 *   6. the reader is unfrozen and the guest resumed — always, in `finally`.
 *
 * A dry run does steps 1–2 and returns what would change. Dumps are refused: they are evidence.
 */
import type { Kernel } from '../kernel/kernel.ts';
import { ReadOnlyError, TargetError, UsageError, VmlensError } from '../util/errors.ts';
import {
  appendAudit,
  auditLogPath,
  auditTargetOf,
  fromHex,
  readAuditHistory,
  sameTarget,
  toHex,
  type AuditEntry,
  type AuditKind,
  type AuditTarget,
  type AuditValue,
  type AuditWrite,
} from './audit.ts';

/** Largest single transaction: sysctl strings and pointers are tiny; this bounds mistakes. */
export const MAX_TRANSACTION_BYTES = 64 * 1024;

/** One write the caller wants: `bytes` at kernel virtual address `va`. */
export interface PlannedWrite {
  readonly va: bigint;
  readonly bytes: Uint8Array;
  /** The bytes that must be there now, or the transaction is refused (undo uses it). */
  readonly expect?: Uint8Array;
  /** What the bytes are, for messages (e.g. `vm.swappiness`). */
  readonly label?: string;
}

/** One write as done (or, for a dry run, as it would be done). */
export interface WriteChange {
  readonly va: bigint;
  /** Guest-physical address of the first byte. */
  readonly pa: number;
  /** symbol+offset of `va`, when the kernel has a symbol there. */
  readonly symbol?: string;
  readonly label?: string;
  readonly old: Uint8Array;
  readonly new: Uint8Array;
}

export interface TransactionRequest {
  /** The command as a user would type it, for the log (`sysctl vm.swappiness=10`). */
  readonly command: string;
  /** Default 'write'. */
  readonly kind?: Extract<AuditKind, 'write' | 'undo'>;
  /** For an undo: the audit id of the write it reverts. */
  readonly undoes?: string;
  /**
   * Computes the writes while the guest is paused, from its current state. Throw a VmlensError
   * to refuse (nothing is written). May also return facts for the log (`details`).
   */
  readonly plan: () => readonly PlannedWrite[] | { writes: readonly PlannedWrite[]; details?: Record<string, AuditValue> };
  /** Show what would change, write nothing, log nothing. */
  readonly dryRun?: boolean;
  /** Audit log file (default: auditLogPath()). */
  readonly auditPath?: string;
}

export interface TransactionResult {
  /** Audit id of the transaction; undefined for dry runs and for no-ops. */
  readonly id?: string;
  readonly dryRun: boolean;
  /** Every planned byte already had its new value: nothing was written or logged. */
  readonly unchanged: boolean;
  readonly changes: readonly WriteChange[];
  readonly details?: Record<string, AuditValue>;
  /** How long the guest was stopped for this transaction (0 if it was already paused). */
  readonly pausedMs: number;
}

/** Refuse early, before pausing anything, when the target cannot be written at all. */
export function assertWritable(kernel: Kernel, dryRun = false): void {
  const m = kernel.machine;
  if (!m.live) {
    if (dryRun) return;
    throw new ReadOnlyError(`${m.name}: dumps are read-only; vmlens writes only to live guests`);
  }
  if (!m.memory.writable && !dryRun) throw new ReadOnlyError(`${m.name}: guest memory is open read-only (${m.memory.description})`);
  if (!m.pause || !m.resume) throw new ReadOnlyError(`${m.name}: the guest cannot be paused, so it cannot be written safely`);
}

/** The audit identity of the guest this kernel runs in (name, QMP socket, kernel text address = boot). */
export function auditTargetOfKernel(kernel: Kernel): AuditTarget {
  return auditTargetOf(kernel.machine, kernel.layout.textBase);
}

/** Run one write transaction (see the module comment). */
export async function runTransaction(kernel: Kernel, req: TransactionRequest): Promise<TransactionResult> {
  const dryRun = req.dryRun === true;
  assertWritable(kernel, dryRun);
  const machine = kernel.machine;
  const space = kernel.space;
  const auditPath = req.auditPath ?? auditLogPath();
  const target = auditTargetOfKernel(kernel);

  const deferred = deferInterrupts();
  const wasPaused = machine.live ? await machine.isPaused() : true;
  const wasFrozen = space.reader.frozen;
  const pausedAt = process.hrtime.bigint();
  let pausedByUs = false;
  try {
    if (!wasPaused) {
      await machine.pause!();
      pausedByUs = true;
    }
    if (machine.live) space.setFrozen(true);

    const planned = req.plan();
    const writes = Array.isArray(planned) ? (planned as readonly PlannedWrite[]) : (planned as { writes: readonly PlannedWrite[] }).writes;
    const details = Array.isArray(planned) ? undefined : (planned as { details?: Record<string, AuditValue> }).details;
    const changes = prepare(kernel, writes);
    const elapsed = (): number => (pausedByUs ? Number(process.hrtime.bigint() - pausedAt) / 1e6 : 0);
    const base = { dryRun, changes, ...(details ? { details } : {}) };

    if (dryRun) return { ...base, unchanged: changes.every((c) => equalBytes(c.old, c.new)), pausedMs: elapsed() };
    if (changes.every((c) => equalBytes(c.old, c.new))) return { ...base, unchanged: true, pausedMs: elapsed() };

    const entry = {
      kind: req.kind ?? 'write',
      command: req.command,
      target,
      writes: changes.map(auditWriteOf),
      ...(req.undoes !== undefined ? { undoes: req.undoes } : {}),
      ...(details ? { details } : {}),
    } as const;
    // The old bytes reach the disk before the guest is touched.
    const started = appendAudit({ ...entry, result: 'started' }, auditPath);
    try {
      applyAndVerify(kernel, changes);
    } catch (e) {
      const restored = putBack(kernel, changes);
      const why = e instanceof Error ? e.message : String(e);
      appendAudit({ ...entry, id: started.id, result: 'failed', error: `${why}; old bytes ${restored ? 'restored' : 'NOT restored'}` }, auditPath);
      if (!restored) throw new TargetError(`${why}; restoring the old bytes failed too: the guest memory at ${describe(changes[0]!)} may be inconsistent`);
      throw e instanceof VmlensError ? e : new TargetError(`${why}; old bytes restored`);
    }
    appendAudit({ ...entry, id: started.id, result: 'ok' }, auditPath);
    return { ...base, id: started.id, unchanged: false, pausedMs: elapsed() };
  } finally {
    try {
      if (machine.live) space.setFrozen(wasFrozen);
      if (pausedByUs) await machine.resume!();
    } finally {
      deferred.release();
    }
  }
}

/** Translate and read every planned write; refuse bad plans before anything is written. */
function prepare(kernel: Kernel, writes: readonly PlannedWrite[]): WriteChange[] {
  if (writes.length === 0) throw new UsageError('nothing to write');
  let total = 0;
  const changes: WriteChange[] = [];
  for (const w of writes) {
    if (w.bytes.length === 0) throw new UsageError(`empty write at 0x${w.va.toString(16)}`);
    total += w.bytes.length;
    if (total > MAX_TRANSACTION_BYTES) throw new UsageError(`a transaction writes at most ${MAX_TRANSACTION_BYTES} bytes`);
    if (w.expect && w.expect.length !== w.bytes.length) throw new UsageError('expected and new bytes differ in length');
    const pa = kernel.space.translateVa(w.va);
    // Every page of the range must translate: readBytes checks them all before reading.
    const old = kernel.space.readBytes(w.va, w.bytes.length);
    const symbol = kernel.symbolize(w.va);
    const change: WriteChange = { va: w.va, pa, old, new: new Uint8Array(w.bytes), ...(symbol ? { symbol } : {}), ...(w.label ? { label: w.label } : {}) };
    if (w.expect && !equalBytes(old, w.expect)) {
      throw new TargetError(
        `${describe(change)} now holds ${toHex(old)}, not the ${toHex(w.expect)} expected: it changed since; nothing written`,
      );
    }
    for (const c of changes) {
      if (w.va < c.va + BigInt(c.new.length) && c.va < w.va + BigInt(w.bytes.length)) throw new UsageError(`writes at ${describe(c)} and ${describe(change)} overlap`);
    }
    changes.push(change);
  }
  return changes;
}

function applyAndVerify(kernel: Kernel, changes: readonly WriteChange[]): void {
  const space = kernel.space;
  for (const c of changes) space.write(c.va, c.new);
  for (const c of changes) {
    const back = space.readBytes(c.va, c.new.length);
    if (!equalBytes(back, c.new)) throw new TargetError(`read-back of ${describe(c)} gave ${toHex(back)}, not the ${toHex(c.new)} written`);
  }
}

/** Put the old bytes back (newest first) and check them; false when that failed too. */
function putBack(kernel: Kernel, changes: readonly WriteChange[]): boolean {
  let ok = true;
  for (const c of [...changes].reverse()) {
    try {
      kernel.space.write(c.va, c.old);
      if (!equalBytes(kernel.space.readBytes(c.va, c.old.length), c.old)) ok = false;
    } catch {
      ok = false;
    }
  }
  return ok;
}

function auditWriteOf(c: WriteChange): AuditWrite {
  return {
    va: `0x${c.va.toString(16)}`,
    pa: `0x${c.pa.toString(16)}`,
    ...(c.symbol !== undefined ? { symbol: c.symbol } : {}),
    old: toHex(c.old),
    new: toHex(c.new),
  };
}

/** `0xffff… (symbol+0x8)` for messages. */
export function describe(c: { va: bigint; symbol?: string; label?: string }): string {
  const where = c.symbol ?? c.label;
  return `0x${c.va.toString(16)}${where ? ` (${where})` : ''}`;
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Hold SIGINT/SIGTERM while the guest is paused, so an impatient Ctrl-C cannot leave it stopped;
 * the signal is re-raised once the guest runs again.
 */
function deferInterrupts(): { release(): void } {
  const got: NodeJS.Signals[] = [];
  const onSignal = (s: NodeJS.Signals): void => {
    got.push(s);
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
  for (const s of signals) process.on(s, onSignal);
  return {
    release(): void {
      for (const s of signals) process.off(s, onSignal);
      const first = got[0];
      if (first !== undefined) process.kill(process.pid, first);
    },
  };
}

// ---- undo -------------------------------------------------------------------------------------

export interface UndoOptions {
  readonly dryRun?: boolean;
  readonly auditPath?: string;
}

/** The write `undo` would revert for this guest: the newest successful write not yet undone. */
export function lastUndoableWrite(kernel: Kernel, auditPath: string = auditLogPath()): AuditEntry {
  const target = auditTargetOfKernel(kernel);
  const history = readAuditHistory(auditPath).entries;
  const undone = new Set(history.filter((e) => e.kind === 'undo' && e.result === 'ok' && e.undoes !== undefined).map((e) => e.undoes!));
  const mine = history.filter((e) => e.kind === 'write' && e.result === 'ok' && sameTarget(e.target, { ...target, kernelText: undefined }));
  const candidates = mine.filter((e) => !undone.has(e.id));
  const thisBoot = candidates.filter((e) => sameTarget(e.target, target));
  const last = thisBoot[thisBoot.length - 1];
  if (last) return last;
  if (candidates.length > 0) {
    throw new UsageError(`nothing to undo for ${target.guest} in this boot of its kernel (${candidates.length} older writes were made before it rebooted)`);
  }
  throw new UsageError(`nothing to undo for ${target.guest} (audit log ${auditPath})`);
}

/**
 * Revert the newest write of this guest: put back the old bytes, provided every byte is still
 * the one vmlens wrote (otherwise refuse: something else changed it since).
 */
export async function undoLast(kernel: Kernel, opts: UndoOptions = {}): Promise<TransactionResult & { readonly undone: AuditEntry }> {
  const auditPath = opts.auditPath ?? auditLogPath();
  assertWritable(kernel, opts.dryRun === true);
  const undone = lastUndoableWrite(kernel, auditPath);
  const writes: PlannedWrite[] = [...undone.writes].reverse().map((w) => ({
    va: BigInt(w.va),
    bytes: fromHex(w.old),
    expect: fromHex(w.new),
    ...(w.symbol !== undefined ? { label: w.symbol } : {}),
  }));
  try {
    const result = await runTransaction(kernel, {
      command: `undo (${undone.command})`,
      kind: 'undo',
      undoes: undone.id,
      plan: () => ({ writes, details: { undoes: undone.command, time: undone.time } }),
      dryRun: opts.dryRun,
      auditPath,
    });
    return { ...result, undone };
  } catch (e) {
    if (e instanceof TargetError && e.message.includes('changed since')) {
      throw new TargetError(`cannot undo '${undone.command}' (${undone.time}): ${e.message}`);
    }
    throw e;
  }
}
