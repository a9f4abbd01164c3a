/**
 * Choosing the processes a per-process analysis looks at, and the point of view it renders
 * paths from. Shared by maps, lsof, cmdline/environ, namespaces and dump-proc.
 */
import type { PathRef } from '../kernel/helpers/fs.ts';
import { taskRoot } from '../kernel/helpers/fs.ts';
import type { Kernel } from '../kernel/kernel.ts';
import { UsageError } from '../util/errors.ts';
import { listTasks, type TaskRow } from './ps.ts';

/**
 * Processes (thread-group leaders) from the task list, optionally only the given pids. A pid
 * asked for but absent is a UsageError naming it — a typo should not look like an empty result.
 */
export function selectProcesses(k: Kernel, pids?: ReadonlySet<number>): TaskRow[] {
  const rows = listTasks(k);
  if (!pids) return rows;
  const chosen = rows.filter((r) => pids.has(r.pid));
  const missing = [...pids].filter((p) => !chosen.some((r) => r.pid === p));
  if (missing.length > 0) throw new UsageError(`no process with pid ${missing.join(', ')} in the guest`);
  return chosen;
}

/**
 * The root directory paths are rendered against: that of pid 1 (a reader in the guest's initial
 * namespaces, such as a root shell, sees the same), else init_task's.
 */
export function readerRoot(k: Kernel, tasks?: readonly TaskRow[]): PathRef | null {
  const init = tasks?.find((t) => t.pid === 1) ?? listTasks(k).find((t) => t.pid === 1);
  if (init) {
    try {
      const root = taskRoot(k, init.task);
      if (root) return root;
    } catch (e) {
      k.warnings.warn('root', `pid 1's root cannot be read: ${(e as Error).message}`);
    }
  }
  return taskRoot(k, k.symbol('init_task'));
}

/** Parse "1,2, 30" into pids; a UsageError for anything else. */
export function parsePidList(text: string): Set<number> {
  const out = new Set<number>();
  for (const part of text.split(',')) {
    const t = part.trim();
    if (!/^\d+$/.test(t) || Number(t) > 0x3fffffff) throw new UsageError(`not a pid: '${part}'`);
    out.add(Number(t));
  }
  return out;
}
