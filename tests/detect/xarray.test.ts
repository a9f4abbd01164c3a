/**
 * XArray and IDR walks over synthetic memory laid out with the real kernel's types: correct
 * entries in index order for well-formed trees, and for hostile ones (cycles, shared nodes,
 * wrong shifts, unmapped nodes, runaway sizes) a warning and the rest of the tree — never a
 * hang or an exception.
 */
import { beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { idrFind, idrForEach } from '../../src/kernel/helpers/idr.ts';
import { xaForEach, xaLoad } from '../../src/kernel/helpers/xarray.ts';
import type { Btf } from '../../src/kernel/btf/index.ts';
import { labBtf, SyntheticKernel } from './support/synthetic-kernel.ts';

let btf: Btf;
beforeAll(async () => {
  btf = await labBtf();
});

/** Builds trees of `struct xa_node`s as lib/xarray.c does. */
class TreeBuilder {
  readonly xa: bigint;
  constructor(readonly s: SyntheticKernel) {
    this.xa = s.allocType('struct xarray');
  }

  node(shift: number, parent: bigint, offset: number): bigint {
    const n = this.s.allocType('struct xa_node');
    this.s.u8(this.s.field(n, 'struct xa_node', 'shift'), shift);
    this.s.u8(this.s.field(n, 'struct xa_node', 'offset'), offset);
    this.s.u64(this.s.field(n, 'struct xa_node', 'parent'), parent);
    this.s.u64(this.s.field(n, 'struct xa_node', 'array'), this.xa);
    return n;
  }

  /** Slot `i` of `node` holds `value` (a node is stored as its address + 2). */
  slot(node: bigint, i: number, value: bigint): void {
    this.s.u64(this.s.field(node, 'struct xa_node', 'slots') + BigInt(i * 8), value);
  }

  link(parent: bigint, i: number, child: bigint): void {
    this.slot(parent, i, child + 2n);
  }

  head(value: bigint): void {
    this.s.u64(this.s.field(this.xa, 'struct xarray', 'xa_head'), value);
  }
}

/** A pointer-like entry (8-byte aligned) that names its index. */
const entry = (i: number): bigint => 0xffff_8880_1234_0000n + BigInt(i) * 64n;

describe('xaForEach and xaLoad', () => {
  let s: SyntheticKernel;
  let t: TreeBuilder;
  let root: bigint;
  let leaf0: bigint;
  let leaf1: bigint;

  beforeEach(() => {
    s = new SyntheticKernel(btf);
    t = new TreeBuilder(s);
    // Two levels: indices 0..4095. Entries at 0, 5, 64, 4095.
    root = t.node(6, 0n, 0);
    t.head(root + 2n);
    leaf0 = t.node(0, root, 0);
    leaf1 = t.node(0, root, 1);
    const leaf63 = t.node(0, root, 63);
    t.link(root, 0, leaf0);
    t.link(root, 1, leaf1);
    t.link(root, 63, leaf63);
    t.slot(leaf0, 0, entry(0));
    t.slot(leaf0, 5, entry(5));
    t.slot(leaf1, 0, entry(64));
    t.slot(leaf63, 63, entry(4095));
  });

  const walk = () => [...xaForEach(s.kernel.object('struct xarray', t.xa))].map((e) => [e.index, e.entry]);

  it('yields every entry with its index, in index order', () => {
    expect(walk()).toEqual([
      [0, entry(0)],
      [5, entry(5)],
      [64, entry(64)],
      [4095, entry(4095)],
    ]);
    expect(s.kernel.warnings.items).toEqual([]);
  });

  it('loads single entries by index, and nothing where there is none', () => {
    const xa = s.kernel.object('struct xarray', t.xa);
    for (const i of [0, 5, 64, 4095]) expect(xaLoad(xa, i)).toBe(entry(i));
    for (const i of [1, 63, 65, 4094, 4096, 1 << 30]) expect(xaLoad(xa, i)).toBe(0n);
  });

  it('skips internal entries (retry, zero, sibling) as the kernel does', () => {
    t.slot(leaf0, 1, (256n << 2n) | 2n);
    t.slot(leaf0, 2, (257n << 2n) | 2n);
    t.slot(leaf0, 6, (5n << 2n) | 2n); // sibling of slot 5
    expect(walk().map(([i]) => i)).toEqual([0, 5, 64, 4095]);
    expect(xaLoad(s.kernel.object('struct xarray', t.xa), 6)).toBe(entry(5));
  });

  it('a lone entry lives in the head, at index 0', () => {
    t.head(entry(0));
    expect(walk()).toEqual([[0, entry(0)]]);
  });

  it('a leaf that points back to the root: warned, the rest walked', () => {
    t.link(leaf0, 7, root);
    expect(walk().map(([i]) => i)).toEqual([0, 5, 64, 4095]);
    expect(s.kernel.warnings.items.map((w) => w.message).join('\n')).toMatch(/points to another node/);
  });

  it('a node hung in two slots is read once and warned about', () => {
    t.link(root, 2, leaf1);
    expect(walk().map(([i]) => i)).toEqual([0, 5, 64, 4095]);
    expect(s.kernel.warnings.items.map((w) => w.message).join('\n')).toMatch(/claims slot 1 .* but hangs in slot 2|reached twice/);
  });

  it('a child whose shift is wrong (a loop to its own level) is skipped with a warning', () => {
    const bad = t.node(6, root, 4);
    t.link(root, 4, bad);
    t.link(bad, 0, bad);
    expect(walk().map(([i]) => i)).toEqual([0, 5, 64, 4095]);
    expect(s.kernel.warnings.items.map((w) => w.message).join('\n')).toMatch(/has shift 6 where 0 belongs/);
    expect(xaLoad(s.kernel.object('struct xarray', t.xa), 4 * 64)).toBe(0n);
  });

  it('a node in unmapped memory is skipped with a warning', () => {
    t.slot(root, 9, 0xffff_9999_0000_0000n + 2n);
    expect(walk().map(([i]) => i)).toEqual([0, 5, 64, 4095]);
    expect(s.kernel.warnings.items.map((w) => w.message).join('\n')).toMatch(/not mapped/);
  });

  it('a root with an impossible shift ends the walk with a warning', () => {
    s.u8(s.field(root, 'struct xa_node', 'shift'), 7);
    expect(walk()).toEqual([]);
    expect(s.kernel.warnings.items).toHaveLength(1);
    expect(xaLoad(s.kernel.object('struct xarray', t.xa), 0)).toBe(0n);
  });

  it('a node budget bounds the walk', () => {
    const got = [...xaForEach(s.kernel.object('struct xarray', t.xa), { maxNodes: 2 })];
    expect(got.length).toBeLessThan(4);
    expect(s.kernel.warnings.items.map((w) => w.message).join('\n')).toMatch(/more than 2 nodes/);
  });

  it('a fully shared tree (every slot the same node) stays linear, not exponential', () => {
    // 3 levels where each level's 64 slots all name one node: 64^3 paths, 3 nodes.
    const top = t.node(12, 0n, 0);
    const mid = t.node(6, top, 0);
    const low = t.node(0, mid, 0);
    t.head(top + 2n);
    for (let i = 0; i < 64; i++) {
      t.link(top, i, mid);
      t.link(mid, i, low);
      t.slot(low, i, entry(i));
    }
    const got = [...xaForEach(s.kernel.object('struct xarray', t.xa))];
    expect(got.map((e) => e.index)).toEqual(Array.from({ length: 64 }, (_, i) => i));
    expect(s.kernel.warnings.items.length).toBeGreaterThan(0);
  });
});

describe('idrForEach and idrFind', () => {
  it('numbers entries from idr_base', () => {
    const s = new SyntheticKernel(btf);
    const idr = s.allocType('struct idr');
    const rt = s.field(idr, 'struct idr', 'idr_rt');
    s.u32(s.field(idr, 'struct idr', 'idr_base'), 1);
    const node = s.allocType('struct xa_node');
    s.u64(s.field(node, 'struct xa_node', 'array'), rt);
    s.u64(rt + s.offset('struct xarray', 'xa_head'), node + 2n);
    s.u64(s.field(node, 'struct xa_node', 'slots'), entry(1));
    s.u64(s.field(node, 'struct xa_node', 'slots') + 8n * 9n, entry(10));
    const o = s.kernel.object('struct idr', idr);
    expect([...idrForEach(o)].map((e) => [e.id, e.entry])).toEqual([
      [1, entry(1)],
      [10, entry(10)],
    ]);
    expect(idrFind(o, 10)).toBe(entry(10));
    expect(idrFind(o, 0)).toBe(0n);
    expect(idrFind(o, 9)).toBe(0n);
  });
});
