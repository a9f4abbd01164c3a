/**
 * Guest data is hostile: the forensic walks over structures made by hand (with the real 6.1
 * layouts from BTF) — well-formed first, then corrupted — must give the right answer, or end
 * with a warning and what they could read: never hang, never throw past their edge.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { cgroupHierarchies, formatCgroupLine, taskCgroups } from '../../src/analyses/cgroups.ts';
import { formatCapSet, taskCreds } from '../../src/analyses/creds.ts';
import { readCmdline } from '../../src/analyses/proc-memory.ts';
import { formatMapLine, type MapRow } from '../../src/analyses/maps.ts';
import { dPath, dentryPath, forEachFile, prependPath } from '../../src/kernel/helpers/fs.ts';
import { hlistNullsForEach } from '../../src/kernel/helpers/list-nulls.ts';
import { MAPLE, mtForEach } from '../../src/kernel/helpers/maple-tree.ts';
import { accessRemoteVm, forEachVma, mmAddressSpace } from '../../src/kernel/helpers/mm.ts';
import { formatAddress } from '../../src/kernel/helpers/net.ts';
import { rbtreeInorderForEachEntry } from '../../src/kernel/helpers/rbtree.ts';
import { structReader } from '../../src/kernel/helpers/struct-reader.ts';
import { vaHi, vaLo } from '../../src/mmu/va.ts';
import { PageTableBuilder } from '../support/synthetic-memory.ts';
import { DIRECT_MAP, labBtf, SyntheticKernel, USER_TABLES } from './synthetic-kernel.ts';

const btf = labBtf();
const ULONG_MAX = (1n << 64n) - 1n;

describe.skipIf(!btf)('hostile guest data (real 6.1 layouts, synthetic memory)', () => {
  let s: SyntheticKernel;
  beforeEach(() => {
    s = new SyntheticKernel(btf!);
  });
  const warnings = () => s.kernel.warnings.items.map((w) => `${w.where}: ${w.message}`);

  // ---- maple tree ------------------------------------------------------------------------------

  const pivotOff = (arange: boolean) => s.off('maple_node', arange ? 'ma64.pivot' : 'mr64.pivot');
  const slotOff = (arange: boolean) => s.off('maple_node', arange ? 'ma64.slot' : 'mr64.slot');
  const metaOff = (arange: boolean) => s.off('maple_node', arange ? 'ma64.meta' : 'mr64.meta');

  /** A node whose slots end at the given pivots (the last slot runs to the node's max). */
  function node(type: number, slots: { pivot?: bigint; entry: bigint }[]): bigint {
    const arange = type === MAPLE.MAPLE_ARANGE_64;
    const n = s.alloc(256, 256);
    slots.forEach((sl, i) => {
      if (sl.pivot !== undefined) s.write(n + BigInt(pivotOff(arange) + i * 8), 8, sl.pivot);
      s.write(n + BigInt(slotOff(arange) + i * 8), 8, sl.entry);
    });
    s.write(n + BigInt(metaOff(arange)), 1, slots.length - 1);
    return n;
  }
  const enc = (n: bigint, type: number) => MAPLE.encode(n, type);
  function tree(rootNode: bigint, type: number): ReturnType<SyntheticKernel['kernel']['object']> {
    const mt = s.allocStruct('maple_tree');
    s.set(mt, 'maple_tree', 'ma_root', MAPLE.encode(rootNode, type, true));
    return s.kernel.object('struct maple_tree', mt);
  }
  const E = (i: number) => DIRECT_MAP + 0x100000n + BigInt(i) * 0x100n; // distinct fake entries

  it('maple tree: walks a two-level tree in index order, skipping NULL and zero entries', () => {
    const left = node(MAPLE.MAPLE_LEAF_64, [
      { pivot: 0xfffn, entry: 0n },
      { pivot: 0x1fffn, entry: E(1) },
      { pivot: 0x2fffn, entry: BigInt(MAPLE.XA_ZERO_ENTRY) },
      { entry: E(2) },
    ]);
    const right = node(MAPLE.MAPLE_LEAF_64, [{ pivot: 0x7fffn, entry: E(3) }, { entry: 0n }]);
    const root = node(MAPLE.MAPLE_ARANGE_64, [{ pivot: 0x4fffn, entry: enc(left, MAPLE.MAPLE_LEAF_64) }, { entry: enc(right, MAPLE.MAPLE_LEAF_64) }]);
    const got = [...mtForEach(tree(root, MAPLE.MAPLE_ARANGE_64))];
    expect(got).toEqual([
      { first: 0x1000n, last: 0x1fffn, entry: E(1) },
      { first: 0x3000n, last: 0x4fffn, entry: E(2) },
      { first: 0x5000n, last: 0x7fffn, entry: E(3) },
    ]);
    expect(warnings()).toEqual([]);
  });

  it('maple tree: a single entry kept in ma_root is index 0', () => {
    const mt = s.allocStruct('maple_tree');
    s.set(mt, 'maple_tree', 'ma_root', E(7));
    expect([...mtForEach(s.kernel.object('struct maple_tree', mt))]).toEqual([{ first: 0n, last: 0n, entry: E(7) }]);
  });

  it('maple tree: a child pointing back at its parent (a cycle) ends that branch with a warning', () => {
    const leaf = node(MAPLE.MAPLE_LEAF_64, [{ pivot: 0xfffn, entry: E(1) }, { entry: E(2) }]);
    const root = s.alloc(256, 256);
    // slot 0 → leaf, slot 1 → the root itself.
    s.write(root + BigInt(pivotOff(true)), 8, 0x1fffn);
    s.write(root + BigInt(slotOff(true)), 8, enc(leaf, MAPLE.MAPLE_LEAF_64));
    s.write(root + BigInt(slotOff(true) + 8), 8, enc(root, MAPLE.MAPLE_ARANGE_64));
    s.write(root + BigInt(metaOff(true)), 1, 1);
    const got = [...mtForEach(tree(root, MAPLE.MAPLE_ARANGE_64))];
    expect(got.map((e) => e.entry)).toEqual([E(1), E(2)]);
    expect(warnings().some((w) => w.includes('reached twice'))).toBe(true);
  });

  it('maple tree: a descending pivot, an unmapped child, an unknown type and a bad end are each skipped with a warning', () => {
    const descending = node(MAPLE.MAPLE_LEAF_64, [{ pivot: 0x5000n, entry: E(1) }, { pivot: 0x4000n, entry: E(2) }, { entry: E(3) }]);
    const unmapped = 0xffff_c900_0000_0000n; // nothing maps it
    const badType = node(MAPLE.MAPLE_LEAF_64, [{ entry: E(9) }]);
    const badEnd = node(MAPLE.MAPLE_LEAF_64, [{ entry: E(10) }]);
    s.write(badEnd + BigInt(metaOff(false)), 1, 200);
    const good = node(MAPLE.MAPLE_LEAF_64, [{ entry: E(4) }]);
    const root = node(MAPLE.MAPLE_ARANGE_64, [
      { pivot: 0xffffn, entry: enc(descending, MAPLE.MAPLE_LEAF_64) },
      { pivot: 0x1ffffn, entry: enc(unmapped, MAPLE.MAPLE_LEAF_64) },
      { pivot: 0x2ffffn, entry: enc(badType, 7) },
      { pivot: 0x3ffffn, entry: enc(badEnd, MAPLE.MAPLE_LEAF_64) },
      { entry: enc(good, MAPLE.MAPLE_LEAF_64) },
    ]);
    const got = [...mtForEach(tree(root, MAPLE.MAPLE_ARANGE_64))];
    // The descending node keeps what came before the bad pivot; the good leaf is still reached.
    expect(got).toEqual([
      { first: 0n, last: 0x5000n, entry: E(1) },
      { first: 0x40000n, last: ULONG_MAX, entry: E(4) },
    ]);
    const w = warnings().join('\n');
    expect(w).toMatch(/pivot 0x4000 outside/);
    expect(w).toMatch(/cannot be read/);
    expect(w).toMatch(/unknown type 7/);
    expect(w).toMatch(/claims 201 slots/);
  });

  it('maple tree: a chain deeper than the kernel ever builds stops at MAPLE_HEIGHT_MAX', () => {
    let child = node(MAPLE.MAPLE_LEAF_64, [{ entry: E(1) }]);
    let type: number = MAPLE.MAPLE_LEAF_64;
    for (let i = 0; i < 40; i++) {
      child = node(MAPLE.MAPLE_ARANGE_64, [{ entry: enc(child, type) }]);
      type = MAPLE.MAPLE_ARANGE_64;
    }
    expect([...mtForEach(tree(child, MAPLE.MAPLE_ARANGE_64))]).toEqual([]);
    expect(warnings().some((w) => w.includes('deeper than 31'))).toBe(true);
  });

  it('maple tree: the node budget bounds a wide hostile tree', () => {
    const leaf = node(MAPLE.MAPLE_LEAF_64, [{ entry: E(1) }]);
    // Ten distinct parents all pointing at distinct copies would be fine; a budget of 3 nodes is not.
    const root = node(MAPLE.MAPLE_ARANGE_64, [
      { pivot: 0xfn, entry: enc(node(MAPLE.MAPLE_LEAF_64, [{ entry: E(1) }]), MAPLE.MAPLE_LEAF_64) },
      { pivot: 0x1fn, entry: enc(node(MAPLE.MAPLE_LEAF_64, [{ entry: E(2) }]), MAPLE.MAPLE_LEAF_64) },
      { pivot: 0x2fn, entry: enc(node(MAPLE.MAPLE_LEAF_64, [{ entry: E(3) }]), MAPLE.MAPLE_LEAF_64) },
      { entry: enc(leaf, MAPLE.MAPLE_LEAF_64) },
    ]);
    const got = [...mtForEach(tree(root, MAPLE.MAPLE_ARANGE_64), { maxNodes: 3 })];
    expect(got.map((e) => e.entry)).toEqual([E(1), E(2)]);
    expect(warnings().some((w) => w.includes('more than 3 nodes'))).toBe(true);
  });

  it('forEachVma: a VMA whose bounds disagree with the tree is reported and still listed', () => {
    const vma1 = s.allocStruct('vm_area_struct');
    s.set(vma1, 'vm_area_struct', 'vm_start', 0x1000);
    s.set(vma1, 'vm_area_struct', 'vm_end', 0x2000);
    const vma2 = s.allocStruct('vm_area_struct');
    s.set(vma2, 'vm_area_struct', 'vm_start', 0x5000);
    s.set(vma2, 'vm_area_struct', 'vm_end', 0x9000); // the tree says 0x5000-0x6000
    const leaf = node(MAPLE.MAPLE_LEAF_64, [
      { pivot: 0xfffn, entry: 0n },
      { pivot: 0x1fffn, entry: vma1 },
      { pivot: 0x4fffn, entry: 0n },
      { pivot: 0x5fffn, entry: vma2 },
      { entry: 0n },
    ]);
    const mm = s.allocStruct('mm_struct');
    s.set(mm, 'mm_struct', 'mm_mt.ma_root', MAPLE.encode(leaf, MAPLE.MAPLE_LEAF_64, true));
    const vmas = [...forEachVma(s.kernel.object('struct mm_struct', mm))].map((v) => v.address);
    expect(vmas).toEqual([vma1, vma2]);
    expect(warnings().some((w) => w.includes('spans 0x5000-0x9000'))).toBe(true);
  });

  // ---- paths -----------------------------------------------------------------------------------

  interface Fs {
    mount: bigint;
    vfs: bigint;
    root: bigint;
  }
  /** A mount whose root dentry is its own parent, attached at `at` (or the top of a namespace). */
  function mkMount(parent?: { fs: Fs; at: bigint }): Fs {
    const mount = s.allocStruct('mount');
    const vfs = mount + BigInt(s.off('mount', 'mnt'));
    const root = mkDentry('/', undefined);
    s.set(vfs, 'vfsmount', 'mnt_root', root);
    s.set(mount, 'mount', 'mnt_parent', parent ? parent.fs.mount : mount);
    s.set(mount, 'mount', 'mnt_mountpoint', parent ? parent.at : root);
    const ns = s.allocStruct('mnt_namespace');
    s.set(ns, 'mnt_namespace', 'seq', 1);
    s.set(mount, 'mount', 'mnt_ns', ns);
    return { mount, vfs, root };
  }
  function mkDentry(name: string, parent: bigint | undefined, hashed = true): bigint {
    const d = s.allocStruct('dentry');
    s.set(d, 'dentry', 'd_parent', parent ?? d);
    const str = s.string(name);
    s.set(d, 'dentry', 'd_name.name', str);
    s.set(d, 'dentry', 'd_name.len', new TextEncoder().encode(name).length);
    if (hashed) s.set(d, 'dentry', 'd_hash.pprev', d); // any non-NULL pprev: hashed
    return d;
  }

  it('d_path: crosses mount points to the root, and marks unlinked files', () => {
    const rootFs = mkMount();
    const tmp = mkDentry('tmp', rootFs.root);
    const tmpFs = mkMount({ fs: rootFs, at: tmp });
    const dir = mkDentry('dir', tmpFs.root);
    const file = mkDentry('file.txt', dir);
    const gone = mkDentry('gone', dir, false);
    const root = { mnt: rootFs.vfs, dentry: rootFs.root };
    expect(dPath(s.kernel, { mnt: tmpFs.vfs, dentry: file }, root)).toBe('/tmp/dir/file.txt');
    expect(dPath(s.kernel, { mnt: tmpFs.vfs, dentry: gone }, root)).toBe('/tmp/dir/gone (deleted)');
    expect(dPath(s.kernel, { mnt: rootFs.vfs, dentry: rootFs.root }, root)).toBe('/');
    expect(dentryPath(s.kernel, file)).toBe('/dir/file.txt');
    // Seen from /tmp as the root (a chroot), the same file is /dir/file.txt.
    expect(dPath(s.kernel, { mnt: tmpFs.vfs, dentry: file }, { mnt: tmpFs.vfs, dentry: tmpFs.root })).toBe('/dir/file.txt');
    expect(warnings()).toEqual([]);
  });

  it('d_path: a dentry loop and a mount loop end with a warning, not a hang', () => {
    const fs = mkMount();
    const a = mkDentry('a', fs.root);
    const b = mkDentry('b', a);
    s.set(a, 'dentry', 'd_parent', b); // a ↔ b
    const r = prependPath(s.kernel, { mnt: fs.vfs, dentry: b }, { mnt: fs.vfs, dentry: fs.root });
    expect(r.end).toBe('too-long');
    // Two mounts each mounted on the other's root.
    const m1 = mkMount();
    const m2 = mkMount({ fs: m1, at: m1.root });
    s.set(m1.mount, 'mount', 'mnt_parent', m2.mount);
    s.set(m1.mount, 'mount', 'mnt_mountpoint', m2.root);
    const loop = prependPath(s.kernel, { mnt: m2.vfs, dentry: m2.root }, null);
    expect(loop.end).toBe('too-long');
    expect(warnings().filter((w) => w.startsWith('d_path')).length).toBe(2);
  });

  it('d_path: a name claiming gigabytes is cut with a warning', () => {
    const fs = mkMount();
    const d = mkDentry('x', fs.root);
    s.set(d, 'dentry', 'd_name.len', 0xffff_ffff);
    const p = dPath(s.kernel, { mnt: fs.vfs, dentry: d }, { mnt: fs.vfs, dentry: fs.root });
    expect(p.length).toBeLessThanOrEqual(1025);
    expect(warnings().some((w) => w.includes('claims a 4294967295-byte name'))).toBe(true);
  });

  it('d_path: pseudo files are named by their d_dname, recognised by symbol', () => {
    const fs = mkMount();
    const named = (fn: string, name: string, ino: number) => {
      const ops = s.allocStruct('dentry_operations');
      s.set(ops, 'dentry_operations', 'd_dname', s.symbols.lookup(fn) ?? s.symbol(fn));
      const d = mkDentry(name, fs.root);
      s.set(d, 'dentry', 'd_op', ops);
      const inode = s.allocStruct('inode');
      s.set(inode, 'inode', 'i_ino', ino);
      s.set(d, 'dentry', 'd_inode', inode);
      return dPath(s.kernel, { mnt: fs.vfs, dentry: d }, { mnt: fs.vfs, dentry: fs.root });
    };
    expect(named('sockfs_dname', '', 1234)).toBe('socket:[1234]');
    expect(named('pipefs_dname', '', 99)).toBe('pipe:[99]');
    expect(named('anon_inodefs_dname', '[eventpoll]', 1)).toBe('anon_inode:[eventpoll]');
    expect(named('simple_dname', 'memfd:x', 5)).toBe('/memfd:x (deleted)');
    expect(warnings()).toEqual([]);
    expect(named('some_unknown_dname', 'plain', 5)).toBe('/plain');
    expect(warnings().some((w) => w.includes('unknown d_dname (some_unknown_dname)'))).toBe(true);
  });

  // ---- file tables, hash chains, rbtrees ----------------------------------------------------------

  it('file table: a hostile max_fds is capped, an unmapped fd array stops with a warning', () => {
    const files = s.allocStruct('files_struct');
    const fdt = s.allocStruct('fdtable');
    s.set(files, 'files_struct', 'fdt', fdt);
    const arr = s.alloc(8 * 4, 8);
    s.write(arr + 8n, 8, 0xffff_8880_00aa_0000n);
    s.set(fdt, 'fdtable', 'fd', arr);
    s.set(fdt, 'fdtable', 'max_fds', 4);
    expect([...forEachFile(s.kernel, files)].map((f) => f.fd)).toEqual([1]);
    s.set(fdt, 'fdtable', 'max_fds', 0xffff_ffff);
    s.set(fdt, 'fdtable', 'fd', 0xffff_c900_0000_0000n);
    expect([...forEachFile(s.kernel, files)]).toEqual([]);
    const w = warnings().join('\n');
    expect(w).toMatch(/claims 4294967295 descriptors/);
    expect(w).toMatch(/fd array of files/);
  });

  it('nulls hash chain: a cycle is cut, the entries before it kept', () => {
    const nodes = [s.alloc(16, 16), s.alloc(16, 16), s.alloc(16, 16)];
    s.write(nodes[0]!, 8, nodes[1]!);
    s.write(nodes[1]!, 8, nodes[2]!);
    s.write(nodes[2]!, 8, nodes[0]!); // back to the first
    const seen: bigint[] = [];
    const n = hlistNullsForEach(s.kernel.space, s.kernel.warnings, 'chain', vaHi(nodes[0]!), vaLo(nodes[0]!), 0, (hi, lo) => seen.push((BigInt(hi) << 32n) | BigInt(lo)));
    expect(seen.slice(0, 3)).toEqual(nodes);
    expect(n).toBeLessThan(10);
    expect(warnings().some((w) => w.includes('cycle'))).toBe(true);
    // A proper nulls end (odd marker) ends quietly.
    s.kernel.warnings.clear();
    s.write(nodes[2]!, 8, 0x11n);
    expect(hlistNullsForEach(s.kernel.space, s.kernel.warnings, 'chain', vaHi(nodes[0]!), vaLo(nodes[0]!), 0, () => undefined)).toBe(3);
    expect(warnings()).toEqual([]);
  });

  it('rbtree: in-order from the root; a child pointing at an ancestor ends with a warning', () => {
    // Nodes are bare rb_nodes inside `struct mount`-sized holders would do; rb_node alone suffices
    // with a type whose member is at offset 0: struct rb_node itself.
    const mk = () => s.allocStruct('rb_node', 8);
    const [n1, n2, n3] = [mk(), mk(), mk()];
    s.set(n2, 'rb_node', 'rb_left', n1);
    s.set(n2, 'rb_node', 'rb_right', n3);
    const root = s.allocStruct('rb_root', 8);
    s.set(root, 'rb_root', 'rb_node', n2);
    const walk = () => [...rbtreeInorderForEachEntry(s.kernel.object('struct rb_root', root), 'struct rb_node', '__rb_parent_color')].map((o) => o.address);
    expect(walk()).toEqual([n1, n2, n3]);
    s.set(n3, 'rb_node', 'rb_left', n2);
    expect(walk()).toEqual([n1, n2]);
    expect(warnings().some((w) => w.includes('reached twice'))).toBe(true);
  });

  // ---- user memory ---------------------------------------------------------------------------------

  it('cmdline: a page that is not present gives the bytes before it and a warning', () => {
    const user = new PageTableBuilder(s.memory, { levels: 4, tableArea: USER_TABLES });
    const page = s.alloc(4096, 4096);
    user.map(0x7fff_0000_0000n, s.pa(page), 4096, { user: true });
    // argv "sh\0-c\0" at the end of the mapped page continues onto an unmapped one.
    const argStart = 0x7fff_0000_0ffan;
    s.writeBytes(page + 0xffan, new TextEncoder().encode('sh\0-c\0'));
    const mm = s.allocStruct('mm_struct');
    s.set(mm, 'mm_struct', 'pgd', DIRECT_MAP + BigInt(user.root));
    s.set(mm, 'mm_struct', 'arg_start', argStart);
    s.set(mm, 'mm_struct', 'arg_end', argStart + 12n);
    s.set(mm, 'mm_struct', 'env_start', argStart + 12n);
    s.set(mm, 'mm_struct', 'env_end', argStart + 20n);
    const task = s.allocStruct('task_struct');
    s.set(task, 'task_struct', 'mm', mm);
    const got = readCmdline(s.kernel, { task, pid: 42, comm: 'sh' });
    expect(got.complete).toBe(false);
    expect(new TextDecoder().decode(got.bytes)).toBe('sh\0-c\0');
    expect(warnings().some((w) => w.includes('pid 42') && w.includes('not present'))).toBe(true);

    const space = mmAddressSpace(s.kernel.object('struct mm_struct', mm));
    const r = accessRemoteVm(space, 0x7fff_0000_0ff0n, 0x30);
    expect(r.contiguous).toBe(0x10);
    expect(r.missing).toEqual([{ offset: 0x10, length: 0x20 }]);
  });

  it('mmAddressSpace: a NULL or unmapped pgd is a clear error', () => {
    const mm = s.allocStruct('mm_struct');
    expect(() => mmAddressSpace(s.kernel.object('struct mm_struct', mm))).toThrow(/pgd is NULL/);
    s.set(mm, 'mm_struct', 'pgd', 0xffff_c900_0000_0000n);
    expect(() => mmAddressSpace(s.kernel.object('struct mm_struct', mm))).toThrow(/not mapped/);
  });

  // ---- cgroups ---------------------------------------------------------------------------------

  /** A kernfs node named `name` under `parent` (0n: a hierarchy's root node). */
  function kn(name: string, parent: bigint): bigint {
    const n = s.allocStruct('kernfs_node');
    s.set(n, 'kernfs_node', 'name', s.string(name));
    s.set(n, 'kernfs_node', 'parent', parent);
    return n;
  }
  function cgroup(root: bigint, node: bigint, online = true): bigint {
    const c = s.allocStruct('cgroup');
    s.set(c, 'cgroup', 'root', root);
    s.set(c, 'cgroup', 'kn', node);
    s.write(c + BigInt(s.off('cgroup', 'self.flags')), 4, online ? 2 : 0);
    return c;
  }
  /** Link list_head nodes into a circle through `head`. */
  function circle(head: bigint, nodes: bigint[]): void {
    const all = [head, ...nodes];
    all.forEach((n, i) => {
      s.set(n, 'list_head', 'next', all[(i + 1) % all.length]!);
      s.set(n, 'list_head', 'prev', all[(i + all.length - 1) % all.length]!);
    });
  }
  /**
   * A v2 hierarchy and one v1 hierarchy (id 3, controllers 1 and 2, name "sys"); a task whose
   * css_set is in /outer/inner on v2 and in /box on v1.
   */
  function cgroupWorld() {
    const count = Number(btf!.enumValue('cgroup_subsys_id', 'CGROUP_SUBSYS_COUNT'));
    const table = s.symbol('cgroup_subsys', s.alloc(8 * count, 8));
    for (let i = 0; i < count; i++) {
      const ss = s.allocStruct('cgroup_subsys');
      s.set(ss, 'cgroup_subsys', 'legacy_name', s.string(`c${i}`));
      s.write(table + BigInt(8 * i), 8, ss);
    }
    const visible = s.symbol('cgrp_dfl_visible', s.alloc(8, 8));
    s.write(visible, 1, 1);
    s.symbol('init_css_set', s.allocStruct('css_set'));
    const head = s.symbol('cgroup_roots', s.alloc(16, 16));
    const dfl = s.symbol('cgrp_dfl_root', s.allocStruct('cgroup_root'));
    const v1 = s.allocStruct('cgroup_root');
    s.set(v1, 'cgroup_root', 'hierarchy_id', 3);
    s.set(v1, 'cgroup_root', 'subsys_mask', 0b110);
    s.writeBytes(v1 + BigInt(s.off('cgroup_root', 'name')), new TextEncoder().encode('sys\0'));
    const rootList = (r: bigint) => r + BigInt(s.off('cgroup_root', 'root_list'));
    circle(head, [rootList(v1), rootList(dfl)]); // newest first
    const v2Top = kn('', 0n);
    const inner = cgroup(dfl, kn('inner', kn('outer', v2Top)));
    const box = cgroup(v1, kn('box', kn('', 0n)));
    const cset = s.allocStruct('css_set');
    s.set(cset, 'css_set', 'dfl_cgrp', inner);
    const link = s.allocStruct('cgrp_cset_link');
    s.set(link, 'cgrp_cset_link', 'cgrp', box);
    const links = cset + BigInt(s.off('css_set', 'cgrp_links'));
    const linkNode = link + BigInt(s.off('cgrp_cset_link', 'cgrp_link'));
    circle(links, [linkNode]);
    const task = s.allocStruct('task_struct');
    s.set(task, 'task_struct', 'cgroups', cset);
    return { head, v1, dfl, inner, box, task, links, linkNode, rootList };
  }
  const r = () => structReader(s.kernel);
  const lines = (task: bigint) => taskCgroups(s.kernel, r(), task, cgroupHierarchies(s.kernel, r())).map(formatCgroupLine);

  it('cgroup: one line per hierarchy, v1 first with its controllers and name, v2 last', () => {
    const w = cgroupWorld();
    expect(lines(w.task)).toEqual(['3:c1,c2,name=sys:/box', '0::/outer/inner']);
    // An exiting task is in the v1 root; a removed v2 cgroup is marked.
    s.set(w.task, 'task_struct', 'flags', 0x4);
    s.write(w.inner + BigInt(s.off('cgroup', 'self.flags')), 4, 0);
    expect(lines(w.task)).toEqual(['3:c1,c2,name=sys:/', '0::/outer/inner (deleted)']);
    // Until cgroup2 is mounted the kernel prints no v2 line.
    s.write(s.symbols.byName.get('cgrp_dfl_visible')!, 1, 0);
    expect(lines(w.task)).toEqual(['3:c1,c2,name=sys:/']);
    expect(warnings()).toEqual([]);
  });

  it('cgroup: a hierarchy list, a link list and a kernfs chain that loop end with warnings', () => {
    const w = cgroupWorld();
    // The v1 root's list node points at itself: the walk stops there, the v2 root is not reached.
    s.set(w.rootList(w.v1), 'list_head', 'next', w.rootList(w.v1));
    // The v1 cgroup's kernfs node is its own parent.
    const node = s.kernel.space.readU64Big(w.box + BigInt(s.off('cgroup', 'kn')));
    s.set(node, 'kernfs_node', 'parent', node);
    const got = lines(w.task);
    expect(got).toHaveLength(1);
    expect(got[0]).toMatch(/^3:c1,c2,name=sys:\/(box\/)+box$/);
    expect(warnings().some((x) => x.startsWith('cgroup hierarchies'))).toBe(true);
    expect(warnings().some((x) => x.startsWith('cgroup:') && x.includes('a loop?'))).toBe(true);
    // A looping link list whose one link is on another hierarchy: no line for v1, a warning.
    s.set(w.linkNode, 'list_head', 'next', w.linkNode);
    s.set(w.linkNode - BigInt(s.off('cgrp_cset_link', 'cgrp_link')), 'cgrp_cset_link', 'cgrp', w.inner);
    expect(lines(w.task)).toEqual([]);
    expect(warnings().some((x) => x.startsWith('css_set links'))).toBe(true);
  });

  // ---- credentials ------------------------------------------------------------------------------

  it('creds: the tracer is the parent of a ptraced task; a group count beyond NGROUPS_MAX reads no groups, with a warning', () => {
    const cred = s.allocStruct('cred');
    for (const [m, v] of [['uid', 1000], ['euid', 0], ['suid', 0], ['fsuid', 0], ['gid', 1000], ['egid', 1000], ['sgid', 1000], ['fsgid', 1000]] as const) {
      s.write(cred + BigInt(s.off('cred', `${m}.val`)), 4, v);
    }
    s.write(cred + BigInt(s.off('cred', 'cap_effective')), 8, 0x1ff_ffff_ffffn);
    const groups = s.alloc(s.btf.sizeof('struct group_info') + 8, 8);
    s.set(groups, 'group_info', 'ngroups', 2);
    s.write(groups + BigInt(s.off('group_info', 'gid')), 4, 27);
    s.write(groups + BigInt(s.off('group_info', 'gid')) + 4n, 4, 1000);
    s.set(cred, 'cred', 'group_info', groups);
    const tracer = s.allocStruct('task_struct');
    s.set(tracer, 'task_struct', 'pid', 77);
    const task = s.allocStruct('task_struct');
    s.set(task, 'task_struct', 'real_cred', cred);
    s.set(task, 'task_struct', 'ptrace', 1);
    s.set(task, 'task_struct', 'parent', tracer);
    const row = taskCreds(s.kernel, structReader(s.kernel), { task, pid: 5, comm: 'x' });
    expect(row).toMatchObject({ uids: [1000, 0, 0, 0], gids: [1000, 1000, 1000, 1000], groups: [27, 1000], tracerPid: 77 });
    expect(formatCapSet(row.caps.effective)).toBe('000001ffffffffff');
    s.set(groups, 'group_info', 'ngroups', 0x7fff_ffff);
    expect(taskCreds(s.kernel, structReader(s.kernel), { task, pid: 5, comm: 'x' }).groups).toEqual([]);
    expect(warnings().some((w) => w.startsWith('creds:') && w.includes('2147483647 groups'))).toBe(true);
    s.set(task, 'task_struct', 'real_cred', 0);
    expect(() => taskCreds(s.kernel, structReader(s.kernel), { task, pid: 5, comm: 'x' })).toThrow(/real_cred is NULL/);
  });
});

describe('formatting', () => {
  it('IPv6 addresses in RFC 5952 form, IPv4-mapped ones with a dotted tail', () => {
    const v6 = (hex: string) => Uint8Array.from(hex.match(/../g)!.map((h) => parseInt(h, 16)));
    expect(formatAddress(new Uint8Array([127, 0, 0, 1]))).toBe('127.0.0.1');
    expect(formatAddress(new Uint8Array(16))).toBe('::');
    expect(formatAddress(v6('00000000000000000000000000000001'))).toBe('::1');
    expect(formatAddress(v6('00000000000000000000ffff7f000001'))).toBe('::ffff:127.0.0.1');
    expect(formatAddress(v6('20010db8000000000001000000000001'))).toBe('2001:db8::1:0:0:1');
    expect(formatAddress(v6('20010db8000100000000000000000000'))).toBe('2001:db8:1::');
    expect(formatAddress(v6('fe800000000000000000000000000001'))).toBe('fe80::1');
    expect(formatAddress(v6('20010db8000100010001000100010001'))).toBe('2001:db8:1:1:1:1:1:1');
  });

  it('maps lines are laid out as the kernel pads them', () => {
    const row = (path: string, fileBacked: boolean): MapRow => ({
      pid: 1, comm: 'x', vma: 0n, start: 0x400000n, end: 0x401000n, perms: 'r-xp', vmFlags: 5n, offset: 0x1000n, major: 8, minor: 1, inode: 1234, path, fileBacked,
    });
    // seq_pad(): the name starts at column 73 (25 + 6 * sizeof(void *) - 1, then one space).
    expect(formatMapLine(row('/bin/x', true))).toBe(`${'00400000-00401000 r-xp 00001000 08:01 1234'.padEnd(73)}/bin/x`);
    expect(formatMapLine(row('', false))).toBe('00400000-00401000 r-xp 00001000 08:01 1234 ');
    expect(formatMapLine(row('/a\nb', true)).endsWith('/a\\012b')).toBe(true);
  });
});
