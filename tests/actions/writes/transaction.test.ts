/**
 * The transaction rules on a synthetic guest, where every failure can be staged: the guest is
 * paused around the write and always resumed, the reader frozen meanwhile, the old bytes logged
 * before the write, a failed read-back or write put back, dumps refused, undo guarded.
 */
import { readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readAudit, readAuditHistory } from '../../../src/actions/audit.ts';
import { lastUndoableWrite, runTransaction, undoLast } from '../../../src/actions/transaction.ts';
import { Btf } from '../../../src/kernel/btf/index.ts';
import { Kernel, type SymbolTable } from '../../../src/kernel/kernel.ts';
import type { Machine, VcpuState } from '../../../src/machine/types.ts';
import { AddressSpace } from '../../../src/mmu/address-space.ts';
import { readerFor } from '../../../src/mmu/from-vcpu.ts';
import { ReadOnlyError, TargetError, UsageError } from '../../../src/util/errors.ts';
import { buildMini } from '../../kernel/btf/mini.ts';
import { PageTableBuilder, SyntheticMemory } from '../../support/synthetic-memory.ts';
import { tempAuditLog } from './support.ts';

const TEXT = 0xffffffff81000000n;
const DATA_PA = 0x100000;
const VAR = TEXT + 0x1000n; // 'sysctl_var', 8 bytes
const PAGE_END = TEXT + 0x1ffcn; // a write across into the next page

/** A memory whose next write can be made to lose a byte, or to fail. */
class FlakyMemory extends SyntheticMemory {
  corruptNextWrite = false;
  failWriteNumber = -1;
  override write(gpa: number, src: Uint8Array): void {
    if (this.writes === this.failWriteNumber) {
      this.writes++;
      throw new TargetError('staged write failure');
    }
    if (this.corruptNextWrite) {
      this.corruptNextWrite = false;
      const bad = new Uint8Array(src);
      bad[0]! ^= 0xff;
      super.write(gpa, bad);
      return;
    }
    super.write(gpa, src);
  }
}

class FakeMachine implements Machine {
  readonly name = 'synthetic';
  paused = false;
  pauses = 0;
  resumes = 0;
  /** Whether the reader was frozen when resume() was called (it must not be). */
  frozenAtResume: boolean[] = [];
  reader?: { frozen: boolean };
  constructor(
    readonly memory: FlakyMemory,
    readonly live = true,
  ) {}
  async vcpus(): Promise<VcpuState[]> {
    return [];
  }
  async pause(): Promise<void> {
    this.pauses++;
    this.paused = true;
  }
  async resume(): Promise<void> {
    this.resumes++;
    this.frozenAtResume.push(this.reader?.frozen ?? false);
    this.paused = false;
  }
  async isPaused(): Promise<boolean> {
    return !this.live || this.paused;
  }
  async close(): Promise<void> {}
}

const symbols: SymbolTable = {
  count: 2,
  lookup: (n) => ({ _text: TEXT, sysctl_var: VAR })[n],
  symbolize: (a) => (a >= VAR && a < VAR + 0x100n ? { name: 'sysctl_var', offset: a - VAR } : a >= TEXT && a < VAR ? { name: '_text', offset: a - TEXT } : undefined),
};

function setup(live = true): { kernel: Kernel; memory: FlakyMemory; machine: FakeMachine } {
  const memory = new FlakyMemory({ ranges: [{ start: 0, size: 0x400000 }] });
  const pt = new PageTableBuilder(memory, { levels: 4, tableArea: { start: 0x300000, size: 0x100000 } });
  pt.mapRange(TEXT, DATA_PA, 0x10000);
  const machine = new FakeMachine(memory, live);
  const reader = readerFor(machine);
  machine.reader = reader;
  const space = new AddressSpace(reader, pt.root, 4);
  const kernel = new Kernel({
    machine,
    space,
    btf: Btf.parse(buildMini().blob),
    symbols,
    layout: { levels: 4, root: pt.root, textBase: TEXT, physBase: DATA_PA, kaslrOffset: 0n },
  });
  memory.setBytes(DATA_PA + 0x1000, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8));
  return { kernel, memory, machine };
}

const bytesAt = (m: SyntheticMemory, va: bigint, n: number): number[] => [...m.getBytes(DATA_PA + Number(va - TEXT), n)];

describe('write transactions', () => {
  let log: { path: string; cleanup: () => void };
  beforeEach(() => {
    log = tempAuditLog();
  });
  afterEach(() => log.cleanup());

  it('pauses, freezes, writes, verifies, logs old and new bytes, unfreezes and resumes', async () => {
    const { kernel, memory, machine } = setup();
    const seen: { paused: boolean; frozen: boolean }[] = [];
    const r = await runTransaction(kernel, {
      command: 'test write',
      auditPath: log.path,
      plan: () => {
        seen.push({ paused: machine.paused, frozen: kernel.space.reader.frozen });
        return [{ va: VAR + 2n, bytes: Uint8Array.of(0xaa, 0xbb) }];
      },
    });
    expect(seen).toEqual([{ paused: true, frozen: true }]);
    expect(bytesAt(memory, VAR, 8)).toEqual([1, 2, 0xaa, 0xbb, 5, 6, 7, 8]);
    expect([machine.pauses, machine.resumes, machine.paused]).toEqual([1, 1, false]);
    expect(machine.frozenAtResume).toEqual([false]);
    expect(kernel.space.reader.frozen).toBe(false);
    expect(r.changes).toHaveLength(1);
    expect(r.changes[0]).toMatchObject({ va: VAR + 2n, pa: DATA_PA + 0x1002, symbol: 'sysctl_var+0x2' });
    expect([...r.changes[0]!.old]).toEqual([3, 4]);
    // Two lines: the old bytes before the write, then the outcome.
    const lines = readAudit(log.path).entries;
    expect(lines.map((e) => e.result)).toEqual(['started', 'ok']);
    expect(lines[0]!.id).toBe(r.id);
    expect(lines[1]!.writes).toEqual([{ va: `0x${(VAR + 2n).toString(16)}`, pa: '0x101002', symbol: 'sysctl_var+0x2', old: '0304', new: 'aabb' }]);
    expect(lines[1]!.target).toEqual({ guest: 'synthetic', kernelText: `0x${TEXT.toString(16)}` });
  });

  it('leaves an already paused guest paused and an already frozen reader frozen', async () => {
    const { kernel, machine } = setup();
    machine.paused = true;
    kernel.space.setFrozen(true);
    await runTransaction(kernel, { command: 'w', auditPath: log.path, plan: () => [{ va: VAR, bytes: Uint8Array.of(9) }] });
    expect([machine.pauses, machine.resumes, machine.paused]).toEqual([0, 0, true]);
    expect(kernel.space.reader.frozen).toBe(true);
  });

  it('writes across a page boundary and reads it back', async () => {
    const { kernel, memory } = setup();
    await runTransaction(kernel, { command: 'w', auditPath: log.path, plan: () => [{ va: PAGE_END, bytes: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8) }] });
    expect(bytesAt(memory, PAGE_END, 8)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('dry run: reports the change, writes and logs nothing, still resumes', async () => {
    const { kernel, memory, machine } = setup();
    const r = await runTransaction(kernel, { command: 'w', dryRun: true, auditPath: log.path, plan: () => [{ va: VAR, bytes: Uint8Array.of(0xee) }] });
    expect(r.dryRun).toBe(true);
    expect([...r.changes[0]!.old, ...r.changes[0]!.new]).toEqual([1, 0xee]);
    expect(memory.writes).toBe(0);
    expect(bytesAt(memory, VAR, 1)).toEqual([1]);
    expect(readAudit(log.path).entries).toEqual([]);
    expect([machine.pauses, machine.resumes]).toEqual([1, 1]);
  });

  it('a write of the bytes already there is a no-op: nothing written, nothing logged', async () => {
    const { kernel, memory } = setup();
    const r = await runTransaction(kernel, { command: 'w', auditPath: log.path, plan: () => [{ va: VAR, bytes: Uint8Array.of(1, 2) }] });
    expect(r.unchanged).toBe(true);
    expect(r.id).toBeUndefined();
    expect(memory.writes).toBe(0);
    expect(readAudit(log.path).entries).toEqual([]);
  });

  it('a failed read-back puts the old bytes back, logs the failure, and resumes', async () => {
    const { kernel, memory, machine } = setup();
    memory.corruptNextWrite = true;
    await expect(runTransaction(kernel, { command: 'w', auditPath: log.path, plan: () => [{ va: VAR, bytes: Uint8Array.of(0x10, 0x20) }] })).rejects.toThrow(
      /read-back of .* gave ef20, not the 1020 written/,
    );
    expect(bytesAt(memory, VAR, 8)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect([machine.pauses, machine.resumes, machine.paused]).toEqual([1, 1, false]);
    expect(kernel.space.reader.frozen).toBe(false);
    const h = readAuditHistory(log.path).entries;
    expect(h).toHaveLength(1);
    expect(h[0]!.result).toBe('failed');
    expect(h[0]!.error).toMatch(/old bytes restored$/);
  });

  it('a write that fails half-way puts back what was already written', async () => {
    const { kernel, memory, machine } = setup();
    memory.failWriteNumber = 1; // the second write fails
    await expect(
      runTransaction(kernel, {
        command: 'w',
        auditPath: log.path,
        plan: () => [
          { va: VAR, bytes: Uint8Array.of(0x10) },
          { va: VAR + 4n, bytes: Uint8Array.of(0x50) },
        ],
      }),
    ).rejects.toThrow('staged write failure');
    expect(bytesAt(memory, VAR, 8)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(machine.paused).toBe(false);
    expect(readAuditHistory(log.path).entries[0]!.result).toBe('failed');
  });

  it('a refusal in the plan writes nothing, logs nothing, and resumes', async () => {
    const { kernel, memory, machine } = setup();
    await expect(
      runTransaction(kernel, {
        command: 'w',
        auditPath: log.path,
        plan: () => {
          throw new UsageError('value out of range');
        },
      }),
    ).rejects.toThrow('value out of range');
    expect(memory.writes).toBe(0);
    expect(machine.paused).toBe(false);
    expect(readAudit(log.path).entries).toEqual([]);
  });

  it('refuses unmapped addresses, overlaps and empty plans before writing', async () => {
    const { kernel, memory, machine } = setup();
    const attempt = (writes: { va: bigint; bytes: Uint8Array }[]): Promise<unknown> => runTransaction(kernel, { command: 'w', auditPath: log.path, plan: () => writes });
    await expect(attempt([{ va: VAR, bytes: Uint8Array.of(1) }, { va: TEXT + 0x20000n, bytes: Uint8Array.of(1) }])).rejects.toThrow(/not present/);
    await expect(attempt([{ va: VAR, bytes: Uint8Array.of(1, 2) }, { va: VAR + 1n, bytes: Uint8Array.of(1) }])).rejects.toThrow(/overlap/);
    await expect(attempt([])).rejects.toThrow(UsageError);
    expect(memory.writes).toBe(0);
    expect([machine.pauses, machine.resumes]).toEqual([3, 3]);
  });

  it('refuses to write to a dump, before pausing anything', async () => {
    const { kernel, memory, machine } = setup(false);
    await expect(runTransaction(kernel, { command: 'w', auditPath: log.path, plan: () => [{ va: VAR, bytes: Uint8Array.of(9) }] })).rejects.toThrow(ReadOnlyError);
    await expect(runTransaction(kernel, { command: 'w', auditPath: log.path, plan: () => [{ va: VAR, bytes: Uint8Array.of(9) }] })).rejects.toThrow(
      'dumps are read-only',
    );
    expect(memory.writes).toBe(0);
    expect(machine.pauses).toBe(0);
  });

  it('undo reverts the newest write, then the one before, and refuses when nothing is left', async () => {
    const { kernel, memory } = setup();
    await runTransaction(kernel, { command: 'first', auditPath: log.path, plan: () => [{ va: VAR, bytes: Uint8Array.of(0x11) }] });
    await runTransaction(kernel, { command: 'second', auditPath: log.path, plan: () => [{ va: VAR + 1n, bytes: Uint8Array.of(0x22, 0x33) }] });
    expect(bytesAt(memory, VAR, 3)).toEqual([0x11, 0x22, 0x33]);
    expect(lastUndoableWrite(kernel, log.path).command).toBe('second');
    const dry = await undoLast(kernel, { auditPath: log.path, dryRun: true });
    expect(dry.undone.command).toBe('second');
    expect(bytesAt(memory, VAR, 3)).toEqual([0x11, 0x22, 0x33]);
    const u1 = await undoLast(kernel, { auditPath: log.path });
    expect(u1.undone.command).toBe('second');
    expect(bytesAt(memory, VAR, 3)).toEqual([0x11, 2, 3]);
    const u2 = await undoLast(kernel, { auditPath: log.path });
    expect(u2.undone.command).toBe('first');
    expect(bytesAt(memory, VAR, 3)).toEqual([1, 2, 3]);
    await expect(undoLast(kernel, { auditPath: log.path })).rejects.toThrow(/nothing to undo for synthetic/);
    const kinds = readAuditHistory(log.path).entries.map((e) => `${e.kind}:${e.result}`);
    expect(kinds).toEqual(['write:ok', 'write:ok', 'undo:ok', 'undo:ok']);
  });

  it('undo refuses when the bytes are no longer the ones written, and changes nothing', async () => {
    const { kernel, memory } = setup();
    await runTransaction(kernel, { command: 'w', auditPath: log.path, plan: () => [{ va: VAR, bytes: Uint8Array.of(0x11, 0x12) }] });
    memory.setBytes(DATA_PA + 0x1001, Uint8Array.of(0x99)); // the guest changed it since
    const before = readFileSync(log.path, 'utf8');
    await expect(undoLast(kernel, { auditPath: log.path })).rejects.toThrow(/cannot undo 'w'.*now holds 1199, not the 1112 expected/);
    expect(bytesAt(memory, VAR, 2)).toEqual([0x11, 0x99]);
    expect(readFileSync(log.path, 'utf8')).toBe(before);
  });

  it('undo ignores writes made in another boot of the guest', async () => {
    const { kernel } = setup();
    await runTransaction(kernel, { command: 'w', auditPath: log.path, plan: () => [{ va: VAR, bytes: Uint8Array.of(0x11) }] });
    const rebooted = new Kernel({ ...kernel, layout: { ...kernel.layout, textBase: TEXT + 0x200000n } });
    expect(() => lastUndoableWrite(rebooted, log.path)).toThrow(/before it rebooted/);
  });
});
