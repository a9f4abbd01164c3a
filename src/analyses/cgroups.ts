/**
 * /proc/PID/cgroup rebuilt from memory: one line per mounted hierarchy, as proc_cgroup_show()
 * (kernel/cgroup/cgroup.c) prints them — "ID:CONTROLLERS:PATH", the cgroup v1 hierarchies
 * newest first (cgroup_setup_root() adds each at the head of cgroup_roots) and the v2 line
 * ("0::/path") last, once cgroup2 is mounted anywhere.
 *
 * Paths are as a process in the initial cgroup namespace sees them (from each hierarchy's root).
 */
import { listForEachEntry } from '../kernel/helpers/list.ts';
import type { StructReader } from '../kernel/helpers/struct-reader.ts';
import type { Kernel } from '../kernel/kernel.ts';
import { PF_EXITING } from '../kernel/task-flags.ts';

/** One line of /proc/PID/cgroup. */
export interface CgroupLine {
  /** The hierarchy id: 0 for the v2 hierarchy. */
  readonly hierarchy: number;
  /** The v1 hierarchy's controllers and name ("cpu,cpuacct", "name=systemd"); '' on v2. */
  readonly controllers: string;
  /** The cgroup's path from the hierarchy's root (" (deleted)" on v2 once removed). */
  readonly path: string;
}

/** A mounted hierarchy: a `struct cgroup_root`. */
export interface CgroupHierarchy {
  readonly root: bigint;
  readonly id: number;
  readonly controllers: string;
  /** The v2 (default) hierarchy, cgrp_dfl_root. */
  readonly unified: boolean;
  /** `&root->cgrp`: the hierarchy's top cgroup. */
  readonly topCgroup: bigint;
}

/** The kernel's own limit on hierarchies is 2^16 ids; real systems mount a dozen. */
const MAX_HIERARCHIES = 1024;
/** CGROUP_SUBSYS_COUNT has been below 16 for every kernel; subsys_mask is a u16. */
const MAX_SUBSYS = 16;
const MAX_CGROUP_ROOT_NAMELEN = 64;
const CSS_ONLINE = 1 << 1;
const MAX_CGROUP_DEPTH = 1024;

export function formatCgroupLine(l: CgroupLine): string {
  return `${l.hierarchy}:${l.controllers}:${l.path}`;
}

/**
 * Every hierarchy /proc/PID/cgroup has a line for, in its order. The v2 hierarchy is left out
 * until cgroup2 has been mounted (cgrp_dfl_visible), as the kernel leaves its line out.
 */
export function cgroupHierarchies(k: Kernel, r: StructReader): CgroupHierarchy[] {
  const roots = k.symbols.lookup('cgroup_roots');
  if (roots === undefined) return [];
  const dfl = k.symbols.lookup('cgrp_dfl_root');
  const visible = cgroupV2Visible(k);
  const names = controllerNames(k, r);
  const out: CgroupHierarchy[] = [];
  const head = k.object('struct list_head', roots);
  for (const root of listForEachEntry(head, 'struct cgroup_root', 'root_list', { what: 'cgroup hierarchies', limit: MAX_HIERARCHIES })) {
    const a = root.address;
    const unified = a === dfl;
    if (unified && !visible) continue;
    let controllers = '';
    if (!unified) {
      const mask = r.u16(a, 'cgroup_root', 'subsys_mask');
      const parts = names.filter((_, i) => mask & (1 << i));
      const name = r.cstrAt(r.at(a, 'cgroup_root', 'name'), MAX_CGROUP_ROOT_NAMELEN);
      if (name) parts.push(`name=${name}`);
      controllers = parts.join(',');
    }
    out.push({ root: a, id: r.i32(a, 'cgroup_root', 'hierarchy_id'), controllers, unified, topCgroup: r.at(a, 'cgroup_root', 'cgrp') });
  }
  return out;
}

/** The lines of /proc/PID/cgroup for a `struct task_struct *`. */
export function taskCgroups(k: Kernel, r: StructReader, task: bigint, hierarchies: readonly CgroupHierarchy[]): CgroupLine[] {
  const cset = r.ptr(task, 'task_struct', 'cgroups');
  if (cset === 0n) return [];
  const initCset = k.symbols.lookup('init_css_set');
  const exiting = (r.u32(task, 'task_struct', 'flags') & PF_EXITING) !== 0;
  const lines: CgroupLine[] = [];
  for (const h of hierarchies) {
    const cgrp = cgroupIn(k, r, cset, cset === initCset, h);
    if (cgrp === 0n) continue;
    // On v1 an exiting task shows as in the root cgroup.
    const path = h.unified ? unifiedPath(k, r, cgrp) : exiting ? '/' : kernfsPath(k, r, r.ptr(cgrp, 'cgroup', 'kn'));
    lines.push({ hierarchy: h.id, controllers: h.controllers, path });
  }
  return lines;
}

/** task->cgroups->dfl_cgrp as a path on the v2 hierarchy, whether or not cgroup2 is mounted. */
export function taskV2CgroupPath(k: Kernel, r: StructReader, task: bigint): string | null {
  const cset = r.ptr(task, 'task_struct', 'cgroups');
  if (cset === 0n) return null;
  const cgrp = r.ptr(cset, 'css_set', 'dfl_cgrp');
  return cgrp === 0n ? null : unifiedPath(k, r, cgrp);
}

/** A v2 cgroup's path, with " (deleted)" once it has been removed (its css no longer online). */
function unifiedPath(k: Kernel, r: StructReader, cgrp: bigint): string {
  const path = kernfsPath(k, r, r.ptr(cgrp, 'cgroup', 'kn'));
  return (r.u32(cgrp, 'cgroup', 'self.flags') & CSS_ONLINE) === 0 ? `${path} (deleted)` : path;
}

/** task's cgroup on hierarchy `h`: cset_cgroup_from_root(). 0n when the css_set has none there. */
function cgroupIn(k: Kernel, r: StructReader, cset: bigint, isInitCset: boolean, h: CgroupHierarchy): bigint {
  if (isInitCset) return h.topCgroup;
  if (h.unified) return r.ptr(cset, 'css_set', 'dfl_cgrp');
  const links = k.object('struct list_head', r.at(cset, 'css_set', 'cgrp_links'));
  for (const link of listForEachEntry(links, 'struct cgrp_cset_link', 'cgrp_link', { what: 'css_set links', limit: MAX_HIERARCHIES })) {
    const c = r.ptr(link.address, 'cgrp_cset_link', 'cgrp');
    if (c !== 0n && r.ptr(c, 'cgroup', 'root') === h.root) return c;
  }
  return 0n;
}

/** kernfs_path(): names from the node up to its root (the node whose parent is NULL). */
function kernfsPath(k: Kernel, r: StructReader, kn: bigint): string {
  const parentField = r.has('kernfs_node', 'parent') ? 'parent' : '__parent';
  const parts: string[] = [];
  let node = kn;
  for (let depth = 0; ; depth++) {
    if (node === 0n) break;
    const parent = r.ptr(node, 'kernfs_node', parentField);
    if (parent === 0n) break; // the root's own name is not part of paths
    if (depth >= MAX_CGROUP_DEPTH) {
      k.warnings.warn('cgroup', `kernfs chain at 0x${kn.toString(16)} deeper than ${MAX_CGROUP_DEPTH} (a loop?); cut`);
      break;
    }
    parts.push(r.cstr(node, 'kernfs_node', 'name', 256));
    node = parent;
  }
  return `/${parts.reverse().join('/')}`;
}

/** cgrp_dfl_visible: set once cgroup2 is mounted; before that /proc/PID/cgroup has no v2 line. */
export function cgroupV2Visible(k: Kernel): boolean {
  const a = k.symbols.lookup('cgrp_dfl_visible');
  if (a === undefined) return true;
  try {
    return k.space.readU8(Number(a >> 32n) >>> 0, Number(a & 0xffff_ffffn)) !== 0;
  } catch {
    return true;
  }
}

/** Each controller's legacy_name, by subsystem id: cgroup_subsys[] up to CGROUP_SUBSYS_COUNT. */
function controllerNames(k: Kernel, r: StructReader): string[] {
  const table = k.symbols.lookup('cgroup_subsys');
  const count = Number(k.btf.enumValue('cgroup_subsys_id', 'CGROUP_SUBSYS_COUNT') ?? 0n);
  if (table === undefined || count <= 0 || count > MAX_SUBSYS) {
    if (count > MAX_SUBSYS) k.warnings.warn('cgroup', `CGROUP_SUBSYS_COUNT is ${count}; controllers not named`);
    return [];
  }
  const names: string[] = [];
  for (let i = 0; i < count; i++) {
    const ss = k.space.readU64Big(table + BigInt(8 * i));
    names.push(ss === 0n ? `#${i}` : r.cstr(ss, 'cgroup_subsys', 'legacy_name', 64));
  }
  return names;
}
