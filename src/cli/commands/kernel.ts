import type { Command } from 'commander';
import { formatLayout, structLayout } from '../../kernel/btf/index.ts';
import { readLog, formatRecord } from '../../analyses/dmesg.ts';
import { listModules, type ModuleRow } from '../../analyses/lsmod.ts';
import { parsePidList } from '../../analyses/processes.ts';
import { listTasks, type TaskRow } from '../../analyses/ps.ts';
import { buildTree, renderTree, type TreeNode } from '../../analyses/pstree.ts';
import { uname } from '../../analyses/uname.ts';
import { UsageError } from '../../util/errors.ts';
import { emit, parseAddress, parseCount, setExitCode, withKernel } from '../context.ts';
import { followLog } from './follow.ts';
import { runWatch, WATCH_OPTIONS, type WatchFlags } from './watch.ts';
import { renderFields, renderTable, type Column } from '../render.ts';

const psColumns: Column<TaskRow>[] = [
  { header: 'PID', value: (r) => r.pid, align: 'right' },
  { header: 'TGID', value: (r) => r.tgid, align: 'right' },
  { header: 'PPID', value: (r) => r.ppid, align: 'right' },
  { header: 'UID', value: (r) => r.uid, align: 'right' },
  { header: 'GID', value: (r) => r.gid, align: 'right' },
  { header: 'S', value: (r) => r.state },
  { header: 'THR', value: (r) => r.threads, align: 'right' },
  { header: 'START', value: (r) => (r.startTimeNs / 1e9).toFixed(2), align: 'right' },
  { header: 'TASK', value: (r) => r.task, hex: true },
  { header: 'COMM', value: (r) => (r.kthread ? `[${r.comm}]` : r.comm) },
];

const lsmodColumns: Column<ModuleRow>[] = [
  { header: 'NAME', value: (r) => r.name },
  { header: 'SIZE', value: (r) => r.size, align: 'right' },
  { header: 'REFS', value: (r) => r.refcount, align: 'right' },
  { header: 'STATE', value: (r) => r.state },
  { header: 'BASE', value: (r) => r.base, hex: true },
  { header: 'USED BY', value: (r) => r.usedBy.join(',') },
];

function treeJson(n: TreeNode): unknown {
  return { pid: n.row.pid, comm: n.row.comm, children: n.children.map(treeJson) };
}

export function register(program: Command): void {
  program
    .command('uname')
    .description('the guest kernel\'s identity and hostname (its uts namespace)')
    .action(async (_o: unknown, cmd: Command) => {
      await withKernel(cmd, (k, opts) => {
        const u = uname(k);
        emit(opts, () => u, () => `${u.sysname} ${u.nodename} ${u.release} ${u.version} ${u.machine}`);
      });
    });

  program
    .command('ps')
    .description('processes from the kernel\'s task list (kernel threads in [brackets])')
    .option('--threads', 'every thread, not only processes')
    .option('-p, --pid <pids>', 'only these pids (comma-separated)')
    .option(...WATCH_OPTIONS.watch)
    .option(...WATCH_OPTIONS.duration)
    .option(...WATCH_OPTIONS.interval)
    .action(async (o: { threads?: boolean; pid?: string } & WatchFlags, cmd: Command) => {
      const pids = o.pid === undefined ? undefined : parsePidList(o.pid);
      if (o.watch) return runWatch(cmd, o, pids);
      await withKernel(cmd, (k, opts) => {
        let rows = listTasks(k, { threads: o.threads });
        if (pids) rows = rows.filter((r) => pids.has(r.pid) || pids.has(r.tgid));
        emit(opts, () => rows, () => renderTable(psColumns, rows));
        // As ps(1) does: asked for processes and none of them is there.
        if (pids && rows.length === 0) setExitCode(1);
      });
    });

  program
    .command('pstree')
    .description('processes as a tree of parents and children')
    .action(async (_o: unknown, cmd: Command) => {
      await withKernel(cmd, (k, opts) => {
        const roots = buildTree(listTasks(k));
        emit(opts, () => roots.map(treeJson), () => renderTree(roots));
      });
    });

  program
    .command('lsmod')
    .description('loaded kernel modules')
    .action(async (_o: unknown, cmd: Command) => {
      await withKernel(cmd, (k, opts) => {
        const rows = listModules(k);
        emit(opts, () => rows, () => renderTable(lsmodColumns, rows));
      });
    });

  program
    .command('dmesg')
    .description('the kernel log (printk ring buffer)')
    .option('-l, --level <n>', 'only records at this level or more urgent (0-7)')
    .option('-w, --follow', 'wait for new records and print them as they come, like dmesg -w (Ctrl-C ends)')
    .option('--interval <ms>', 'with --follow: how often the log is read (default 200)')
    .action(async (o: { level?: string; follow?: boolean; interval?: string }, cmd: Command) => {
      const level = o.level === undefined ? 7 : Number(o.level);
      if (!Number.isInteger(level) || level < 0 || level > 7) throw new UsageError(`level must be 0-7, not '${o.level}'`);
      if (o.interval !== undefined && !o.follow) throw new UsageError('--interval goes with --follow');
      if (o.follow) return followLog(cmd, level, o.interval === undefined ? 200 : Math.max(1, parseCount(o.interval, 'interval (ms)', 3_600_000)));
      await withKernel(cmd, (k, opts) => {
        const records = readLog(k).filter((r) => r.level <= level);
        emit(opts, () => records, () => records.map(formatRecord).join('\n'));
      });
    });

  program
    .command('sym')
    .description('a kernel symbol\'s address, or the symbol at an address')
    .argument('<name-or-address>', 'symbol name, or 0x… address')
    .action(async (what: string, _o: unknown, cmd: Command) => {
      await withKernel(cmd, (k, opts) => {
        if (/^(0x)?[0-9a-f]+$/i.test(what) && !k.hasSymbol(what)) {
          const addr = parseAddress(what);
          const s = k.symbols.symbolize(addr);
          if (!s) throw new UsageError(`no symbol at or below 0x${addr.toString(16)}`);
          emit(opts, () => ({ address: addr, name: s.name, offset: s.offset }), () => `0x${addr.toString(16)} = ${k.symbolize(addr)}`);
          return;
        }
        const addr = k.symbol(what);
        emit(opts, () => ({ name: what, address: addr }), () => `${addr.toString(16).padStart(16, '0')} ${what}`);
      });
    });

  program
    .command('type')
    .description('a kernel type\'s layout from BTF: members, offsets, sizes (like pahole)')
    .argument('<type>', 'e.g. task_struct, "struct list_head", pid_t')
    .action(async (name: string, _o: unknown, cmd: Command) => {
      await withKernel(cmd, (k, opts) => {
        const candidates = [name, `struct ${name}`, `union ${name}`];
        let btf = k.btf;
        let id = candidates.map((c) => btf.findTypeId(c)).find((x) => x !== undefined);
        // Types of modules live in each module's own (split) BTF.
        for (const c of id === undefined ? candidates : []) {
          const found = k.findModuleType(c);
          if (found) {
            btf = found.btf;
            id = btf.findTypeId(c);
            break;
          }
        }
        if (id === undefined) throw new UsageError(`no type '${name}' in the kernel's or its modules' BTF`);
        const layout = structLayout(btf, id);
        emit(opts, () => layout, () => formatLayout(layout).join('\n'));
      });
    });

  program
    .command('overview')
    .description('what vmlens sees in the guest: kernel, paging, memory, processes, modules')
    .action(async (_o: unknown, cmd: Command) => {
      await withKernel(cmd, (k, opts) => {
        const u = uname(k);
        const tasks = listTasks(k);
        const mods = listModules(k);
        const L = k.layout;
        const user = tasks.filter((t) => !t.kthread);
        emit(
          opts,
          () => ({ uname: u, layout: L, symbols: k.symbols.count, processes: tasks, modules: mods }),
          () =>
            [
              renderFields([
                ['kernel', `${u.sysname} ${u.release} ${u.version}`],
                ['hostname', u.nodename],
                ['paging', `${L.levels}-level, page tables at 0x${L.root.toString(16)}`],
                ['kernel text', `0x${L.textBase.toString(16)} (KASLR offset 0x${L.kaslrOffset.toString(16)}), physical 0x${L.physBase.toString(16)}`],
                ['direct map', L.pageOffsetBase === undefined ? '-' : `0x${L.pageOffsetBase.toString(16)}`],
                ['symbols', `${k.symbols.count} (kallsyms, from guest memory)`],
                ['processes', `${tasks.length} (${user.length} user, ${tasks.length - user.length} kernel threads)`],
                ['modules', `${mods.length}`],
              ]),
              '',
              renderTable(psColumns, user),
              '',
              renderTable(lsmodColumns, mods),
            ].join('\n'),
        );
      });
    });
}
