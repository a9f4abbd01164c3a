/** pstree: processes arranged by parent, from ps rows. */
import type { TaskRow } from './ps.ts';

export interface TreeNode {
  readonly row: TaskRow;
  readonly children: TreeNode[];
}

/** Forest of processes: roots are tasks whose parent is not among the rows (pid 1, kthreadd). */
export function buildTree(rows: readonly TaskRow[]): TreeNode[] {
  const byPid = new Map<number, TreeNode>();
  for (const row of rows) byPid.set(row.pid, { row, children: [] });
  const roots: TreeNode[] = [];
  for (const node of byPid.values()) {
    const parent = node.row.ppid !== node.row.pid ? byPid.get(node.row.ppid) : undefined;
    if (parent) parent.children.push(node);
    else roots.push(node);
  }
  for (const node of byPid.values()) node.children.sort((a, b) => a.row.pid - b.row.pid);
  roots.sort((a, b) => a.row.pid - b.row.pid);
  return roots;
}

/** Text tree with box-drawing branches, like `pstree -p`. Depth is bounded by the row count. */
export function renderTree(roots: readonly TreeNode[]): string {
  const lines: string[] = [];
  const visit = (node: TreeNode, prefix: string, last: boolean, top: boolean): void => {
    const label = `${node.row.comm}(${node.row.pid})`;
    lines.push(top ? label : `${prefix}${last ? '└─' : '├─'}${label}`);
    const childPrefix = top ? '' : `${prefix}${last ? '  ' : '│ '}`;
    node.children.forEach((c, i) => visit(c, childPrefix, i === node.children.length - 1, false));
  };
  for (const r of roots) visit(r, '', true, true);
  return lines.join('\n');
}
