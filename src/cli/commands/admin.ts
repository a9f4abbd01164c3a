/**
 * Administration commands that change a live guest: sysctl, hostname, restore, undo — each write
 * a transaction (src/actions/transaction.ts) recorded in the audit log — and `audit` to read it.
 */
import type { Command } from 'commander';
import { listSysctls, readSysctlValues, type SysctlValue } from '../../analyses/sysctl.ts';
import { auditLogPath, readAuditHistory, toHex, type AuditEntry } from '../../actions/audit.ts';
import { getHostname, setHostname } from '../../actions/hostname.ts';
import { evaluateAddress, restorePointer } from '../../actions/restore.ts';
import { setSysctl, type SysctlWriteResult } from '../../actions/sysctl.ts';
import { assertWritable, describe, undoLast, type TransactionResult, type WriteChange } from '../../actions/transaction.ts';
import { UsageError } from '../../util/errors.ts';
import { emit, globalOptions, parseCount, withKernel } from '../context.ts';
import { renderTable, type Column } from '../render.ts';

interface DryRunOption {
  readonly dryRun?: boolean;
}

export function register(program: Command): void {
  program
    .command('sysctl')
    .description('read kernel parameters from the guest\'s sysctl tables, or set them (NAME=VALUE)')
    .argument('[settings...]', 'NAME to show one, NAME=VALUE to set it (net.ipv4.ip_forward or net/ipv4/ip_forward)')
    .option('-a, --all', 'every sysctl (under NAME, when given)')
    .option('--dry-run', 'show what a NAME=VALUE would change; write nothing')
    .action(async (settings: string[], o: DryRunOption & { all?: boolean }, cmd: Command) => {
      const writes = settings.filter((s) => s.includes('='));
      const reads = settings.filter((s) => !s.includes('='));
      if (writes.length > 0 && (reads.length > 0 || o.all)) throw new UsageError('give either names to show or NAME=VALUE settings, not both');
      if (settings.length === 0 && !o.all) throw new UsageError('give a sysctl NAME, NAME=VALUE, or -a for all');
      if (o.dryRun && writes.length === 0) throw new UsageError('--dry-run applies to NAME=VALUE settings');
      await withKernel(cmd, async (k, opts) => {
        if (writes.length === 0) {
          // A directory's name lists what is under it, as sysctl(8) does; -a alone lists everything.
          const entries = reads.length === 0 ? listSysctls(k) : reads.flatMap((p) => listSysctls(k, { prefix: p }));
          const values = readSysctlValues(k, entries);
          emit(opts, () => values.map(sysctlJson), () => values.map((v) => `${v.name} = ${v.value ?? '?'}`).join('\n'));
          return;
        }
        assertWritable(k, o.dryRun);
        const results: SysctlWriteResult[] = [];
        for (const w of writes) {
          const at = w.indexOf('=');
          const name = w.slice(0, at).trim();
          const value = w.slice(at + 1);
          results.push(await setSysctl(k, name, value, { dryRun: o.dryRun }));
        }
        emit(
          opts,
          () => results.map((r) => ({ name: r.name, old: r.oldValue, new: r.newValue, ...transactionJson(r) })),
          () => results.map((r) => `${r.name} = ${r.newValue}${r.dryRun ? '' : r.unchanged ? ' (unchanged)' : ` (was ${r.oldValue})`}${changeLines(r)}`).join('\n'),
        );
      });
    });

  program
    .command('hostname')
    .description('the guest\'s hostname (init uts namespace), or set it')
    .argument('[name]', 'new hostname (at most 64 bytes)')
    .option('--dry-run', 'show what setting it would change; write nothing')
    .action(async (name: string | undefined, o: DryRunOption, cmd: Command) => {
      if (name === undefined && o.dryRun) throw new UsageError('--dry-run applies to setting a hostname');
      await withKernel(cmd, async (k, opts) => {
        if (name === undefined) {
          const h = getHostname(k);
          emit(opts, () => ({ hostname: h }), () => h);
          return;
        }
        assertWritable(k, o.dryRun);
        const r = await setHostname(k, name, { dryRun: o.dryRun });
        emit(
          opts,
          () => ({ old: r.oldName, new: r.newName, ...transactionJson(r) }),
          () => `${r.newName}${r.dryRun ? '' : r.unchanged ? ' (unchanged)' : ` (was ${r.oldName})`}${changeLines(r)}`,
        );
      });
    });

  program
    .command('restore')
    .description('put a hooked kernel pointer back to a function in the kernel\'s text (e.g. a syscall-table entry)')
    .argument('<address>', 'the pointer slot: an address or expression, e.g. sys_call_table+8*62')
    .option('--to <value>', 'the value to put back (address or expression)')
    .option('--symbol <name>', 'the kernel function to point to')
    .option('--dry-run', 'show what would change; write nothing')
    .action(async (address: string, o: DryRunOption & { to?: string; symbol?: string }, cmd: Command) => {
      if ((o.to === undefined) === (o.symbol === undefined)) throw new UsageError('give exactly one of --to VALUE and --symbol NAME');
      await withKernel(cmd, async (k, opts) => {
        assertWritable(k, o.dryRun);
        const slot = evaluateAddress(k, address);
        const value = o.symbol !== undefined ? o.symbol : evaluateAddress(k, o.to!);
        const r = await restorePointer(k, slot, value, { dryRun: o.dryRun, command: `restore ${address} ${o.symbol !== undefined ? `--symbol ${o.symbol}` : `--to ${o.to}`}` });
        const was = r.oldSymbol ?? `0x${r.oldValue.toString(16)}`;
        emit(
          opts,
          () => ({ address: r.address, old: r.oldValue, oldSymbol: r.oldSymbol ?? null, new: r.newValue, newSymbol: r.newSymbol, ...transactionJson(r) }),
          () => `${k.symbolize(r.address) ?? `0x${r.address.toString(16)}`} = ${r.newSymbol}${r.dryRun ? '' : r.unchanged ? ' (unchanged)' : ` (was ${was})`}${changeLines(r)}`,
        );
      });
    });

  program
    .command('undo')
    .description('revert the last data write vmlens made to this guest (if its bytes are still the ones written)')
    .option('--dry-run', 'show what would be reverted; write nothing')
    .action(async (o: DryRunOption, cmd: Command) => {
      await withKernel(cmd, async (k, opts) => {
        const r = await undoLast(k, { dryRun: o.dryRun });
        emit(
          opts,
          () => ({ undone: { id: r.undone.id, time: r.undone.time, command: r.undone.command }, ...transactionJson(r) }),
          () => `${r.dryRun ? 'would undo' : 'undone'}: ${r.undone.command} (${r.undone.time})${changeLines(r)}`,
        );
      });
    });

  program
    .command('audit')
    .description('the audit log of every change vmlens made to guests')
    .option('-n, --last <count>', 'only the newest COUNT changes')
    .option('--guest <name>', 'only changes to this guest (lab name or QMP socket)')
    .action((o: { last?: string; guest?: string }, cmd: Command) => {
      const opts = globalOptions(cmd);
      const path = auditLogPath();
      const { entries, skipped } = readAuditHistory(path);
      const undone = new Set(entries.filter((e) => e.kind === 'undo' && e.result === 'ok' && e.undoes !== undefined).map((e) => e.undoes!));
      let rows = o.guest === undefined ? entries : entries.filter((e) => e.target.guest === o.guest || e.target.qmp === o.guest);
      if (o.last !== undefined) rows = rows.slice(Math.max(0, rows.length - parseCount(o.last, 'count')));
      if (skipped > 0) process.stderr.write(`vmlens: warning: ${path}: ${skipped} unreadable lines skipped\n`);
      emit(
        opts,
        () => rows.map((e) => ({ ...e, undone: undone.has(e.id) })),
        () => (rows.length === 0 ? `no changes recorded in ${path}` : renderTable(auditColumns(undone), rows)),
      );
    });
}

function auditColumns(undone: ReadonlySet<string>): Column<AuditEntry>[] {
  return [
    { header: 'TIME', value: (e) => e.time },
    { header: 'GUEST', value: (e) => e.target.guest },
    { header: 'KIND', value: (e) => e.kind },
    { header: 'RESULT', value: (e) => (undone.has(e.id) ? `${e.result}, undone` : e.result) },
    { header: 'COMMAND', value: (e) => e.command },
    { header: 'CHANGES', value: (e) => e.writes.map((w) => `${w.symbol ?? w.va}: ${bytesChange(w.old, w.new)}`).join('; ') },
  ];
}

function sysctlJson(v: SysctlValue): Record<string, unknown> {
  return {
    name: v.name,
    value: v.value ?? null,
    ...(v.error !== undefined ? { error: v.error } : {}),
    handler: v.handlerName ?? v.handler,
    mode: `0${v.mode.toString(8)}`,
    writable: v.spec?.writable === true && (v.mode & 0o200) !== 0,
    data: v.data,
    maxlen: v.maxlen,
    table: v.table,
  };
}

function transactionJson(r: TransactionResult): Record<string, unknown> {
  return {
    dryRun: r.dryRun,
    unchanged: r.unchanged,
    auditId: r.id ?? null,
    changes: r.changes.map((c) => ({ va: c.va, pa: c.pa, symbol: c.symbol ?? null, old: toHex(c.old), new: toHex(c.new) })),
  };
}

/** For dry runs: one line per byte range, `address (symbol)  phys  old → new`. */
function changeLines(r: TransactionResult): string {
  if (!r.dryRun) return '';
  const lines = r.changes.map((c: WriteChange) => `  ${describe(c)}  phys 0x${c.pa.toString(16)}  ${bytesChange(toHex(c.old), toHex(c.new))}`);
  return `\n${r.unchanged ? 'dry run: already so, nothing would change' : 'dry run: nothing written'}\n${lines.join('\n')}`;
}

/** `old → new` in hex, without the tail both share (a NUL-padded name is mostly zeros). */
function bytesChange(oldHex: string, newHex: string): string {
  let same = 0;
  while (same < oldHex.length && same < newHex.length && oldHex[oldHex.length - 1 - same] === newHex[newHex.length - 1 - same]) same++;
  const bytes = Math.floor(same / 2);
  if (bytes < 16 || bytes * 2 === oldHex.length) return `${oldHex} → ${newHex}`;
  const cut = bytes * 2;
  return `${oldHex.slice(0, oldHex.length - cut)} → ${newHex.slice(0, newHex.length - cut)} (then ${bytes} bytes unchanged)`;
}
