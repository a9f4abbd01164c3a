/**
 * Maple trees (include/linux/maple_tree.h, lib/maple_tree.c): the B-tree of ranges that holds a
 * process's VMAs from Linux 6.1 (`mm->mm_mt`) and other range maps.
 *
 *   mt_for_each(mt, entry, index, max)  →  mtForEach(tree)  (every entry with its range)
 *
 * An encoded node pointer (`struct maple_enode *`) carries the node type in bits 3..6 and is
 * marked as an xarray "internal" value (low bits 10). Internal nodes route by pivots; leaves
 * hold the entries. The walk is depth-first in index order with an explicit stack, and
 * defends against hostile nodes: depth at most MAPLE_HEIGHT_MAX, a node budget, nodes seen
 * twice (cycles), pivots outside their parent's range or not ascending, and unmapped nodes all
 * end that part of the walk with a warning, keeping every entry read so far.
 */
import { vaFromParts } from '../../mmu/va.ts';
import { hex, type KObject } from '../object.ts';
import type { WalkLimits } from './list.ts';

/** One stored range: indices first..last (inclusive) map to the pointer `entry`. */
export interface MapleEntry {
  readonly first: bigint;
  readonly last: bigint;
  /** The stored pointer (for mm_mt: a `struct vm_area_struct *`). */
  readonly entry: bigint;
}

export interface MapleWalkLimits extends WalkLimits {
  /** Most nodes read before the walk is declared runaway (default 1,000,000). */
  readonly maxNodes?: number;
}

/** enum maple_type. */
const MAPLE_DENSE = 0;
const MAPLE_LEAF_64 = 1;
const MAPLE_RANGE_64 = 2;
const MAPLE_ARANGE_64 = 3;
const MAPLE_NODE_MASK = 0xff;
const MAPLE_NODE_TYPE_SHIFT = 3;
const MAPLE_NODE_TYPE_MASK = 0x0f;
/** Deepest tree the kernel builds. */
const MAPLE_HEIGHT_MAX = 31;
/** xa_mk_internal(257): a reserved "zero" entry that reads as NULL through the normal API. */
const XA_ZERO_ENTRY = 0x406;
const ULONG_MAX = (1n << 64n) - 1n;

/** Node geometry, from BTF so the walk follows the guest's own definition. */
interface NodeLayout {
  readonly size: number;
  /** maple_range_64 (and leaf_64): offsets of pivot[], slot[], meta. */
  readonly r64Pivot: number;
  readonly r64Slot: number;
  readonly r64Slots: number;
  readonly r64Meta: number;
  /** maple_arange_64. */
  readonly a64Pivot: number;
  readonly a64Slot: number;
  readonly a64Slots: number;
  readonly a64Meta: number;
  /** Offset of `parent` (a dead node's parent points to the node itself). */
  readonly parent: number;
  /** maple_dense: slot[] of the plain node view. */
  readonly denseSlot: number;
  readonly denseSlots: number;
}

const layouts = new WeakMap<object, NodeLayout>();

function nodeLayout(tree: KObject): NodeLayout {
  const btf = tree.ctx.btf;
  let l = layouts.get(btf);
  if (l) return l;
  const lenOf = (struct: string, member: string): number => {
    const m = btf.member(struct, member);
    const t = m ? btf.resolved(m.typeId) : undefined;
    return t && t.kind === 'array' ? t.nelems : 0;
  };
  l = {
    size: btf.sizeof('struct maple_node'),
    r64Pivot: btf.memberOffset('struct maple_node', 'mr64.pivot'),
    r64Slot: btf.memberOffset('struct maple_node', 'mr64.slot'),
    r64Slots: lenOf('struct maple_range_64', 'slot'),
    r64Meta: btf.memberOffset('struct maple_node', 'mr64.meta'),
    a64Pivot: btf.memberOffset('struct maple_node', 'ma64.pivot'),
    a64Slot: btf.memberOffset('struct maple_node', 'ma64.slot'),
    a64Slots: lenOf('struct maple_arange_64', 'slot'),
    a64Meta: btf.memberOffset('struct maple_node', 'ma64.meta'),
    parent: btf.memberOffset('struct maple_node', 'parent'),
    denseSlot: btf.memberOffset('struct maple_node', 'slot'),
    denseSlots: lenOf('struct maple_node', 'slot'),
  };
  layouts.set(btf, l);
  return l;
}

/** xa_is_node(): how ma_root marks a node (mte_mk_root sets the low bits to 10). */
function isNode(lo: number, hi: number): boolean {
  return (lo & 3) === 2 && (hi !== 0 || lo > 4096);
}

/**
 * A child slot of an internal node holds a plain encoded node (mt_mk_node): the node address
 * with the type in bits 3..6 and bit 2 as a "has NULLs" hint, low two bits clear.
 */
function isChild(lo: number, hi: number): boolean {
  return (lo & 3) === 0 && (hi !== 0 || (lo & ~MAPLE_NODE_MASK) !== 0);
}

/** Entries the normal API never returns: NULL, XA_ZERO_ENTRY and other reserved internal values. */
function isVisible(lo: number, hi: number): boolean {
  if (hi !== 0) return true;
  if (lo === 0 || lo === XA_ZERO_ENTRY) return false;
  return !((lo & 3) === 2 && lo < 4096);
}

interface Pending {
  readonly hi: number;
  readonly lo: number;
  readonly min: bigint;
  readonly max: bigint;
  readonly depth: number;
}

/**
 * Every entry of a maple tree with its index range, in ascending index order.
 * `tree` is a `struct maple_tree` (or a pointer to one). NULL and reserved entries are skipped,
 * as mt_for_each() does.
 */
export function* mtForEach(tree: KObject, limits: MapleWalkLimits = {}): Generator<MapleEntry> {
  const mt = tree.kind === 2 /* PTR */ ? tree.deref() : tree;
  const ctx = mt.ctx;
  const space = ctx.space;
  const what = limits.what ?? 'maple tree';
  const warn = (msg: string): void => ctx.warnings.warn(what, msg);
  const maxEntries = limits.limit ?? 1_000_000;
  const maxNodes = limits.maxNodes ?? 1_000_000;

  const root = mt.member('ma_root');
  const rootLo = space.readU64(root.hi, root.lo);
  const rootHi = space.hi;
  if (!isNode(rootLo, rootHi)) {
    // A tree of one entry at index 0 keeps it in ma_root itself.
    if (isVisible(rootLo, rootHi)) yield { first: 0n, last: 0n, entry: vaFromParts(rootHi, rootLo) };
    return;
  }

  const L = nodeLayout(mt);
  const buf = new Uint8Array(L.size);
  const dv = new DataView(buf.buffer);
  const u64 = (off: number): bigint => dv.getBigUint64(off, true);
  const seen = new Set<number>();
  // Children are pushed in reverse so that the lowest range is popped first.
  const stack: Pending[] = [{ hi: rootHi, lo: rootLo, min: 0n, max: ULONG_MAX, depth: 1 }];
  let nodes = 0;
  let entries = 0;
  const children: Pending[] = [];

  while (stack.length > 0) {
    const p = stack.pop()!;
    const nodeLo = (p.lo & ~MAPLE_NODE_MASK) >>> 0;
    const type = (p.lo >>> MAPLE_NODE_TYPE_SHIFT) & MAPLE_NODE_TYPE_MASK;
    const at = hex(p.hi, nodeLo);
    if (++nodes > maxNodes) {
      warn(`more than ${maxNodes} nodes; stopped`);
      return;
    }
    if (p.depth > MAPLE_HEIGHT_MAX) {
      warn(`node ${at} is deeper than ${MAPLE_HEIGHT_MAX} levels; skipped`);
      continue;
    }
    // Nodes are 256-byte aligned kernel addresses: 25 high bits + 24 low bits fit in a number.
    const key = (p.hi & 0x1ff_ffff) * 16777216 + (nodeLo >>> 8);
    if (seen.has(key)) {
      warn(`node ${at} reached twice (a cycle); skipped`);
      continue;
    }
    seen.add(key);
    try {
      space.read(vaFromParts(p.hi, nodeLo), buf);
    } catch (e) {
      warn(`node ${at} cannot be read: ${(e as Error).message}`);
      continue;
    }
    // ma_dead_node(): a node being freed has its parent pointing to itself.
    if (((dv.getUint32(L.parent, true) & ~MAPLE_NODE_MASK) >>> 0) === nodeLo && dv.getUint32(L.parent + 4, true) === p.hi) {
      warn(`node ${at} is dead (freed while the tree changed); skipped`);
      continue;
    }

    let pivotOff: number;
    let slotOff: number;
    let slots: number;
    let end: number;
    if (type === MAPLE_ARANGE_64) {
      pivotOff = L.a64Pivot;
      slotOff = L.a64Slot;
      slots = L.a64Slots;
      end = buf[L.a64Meta]!;
    } else if (type === MAPLE_RANGE_64 || type === MAPLE_LEAF_64) {
      pivotOff = L.r64Pivot;
      slotOff = L.r64Slot;
      slots = L.r64Slots;
      // ma_data_end(): the last pivot tells whether the node is full; otherwise the metadata.
      const lastPivot = u64(pivotOff + (slots - 2) * 8);
      end = lastPivot === 0n ? buf[L.r64Meta]! : lastPivot === p.max ? slots - 2 : slots - 1;
    } else if (type === MAPLE_DENSE) {
      yield* denseEntries(p, dv, L, warn);
      continue;
    } else {
      warn(`node ${at} has unknown type ${type}; skipped`);
      continue;
    }
    if (end >= slots) {
      warn(`node ${at} claims ${end + 1} slots of ${slots}; skipped`);
      continue;
    }

    const leaf = type < MAPLE_RANGE_64;
    let prev = p.min;
    children.length = 0;
    for (let i = 0; i <= end; i++) {
      const pivot = i < end ? u64(pivotOff + i * 8) : p.max;
      if (pivot < prev || pivot > p.max) {
        warn(`node ${at} slot ${i}: pivot 0x${pivot.toString(16)} outside 0x${prev.toString(16)}..0x${p.max.toString(16)}; rest of node skipped`);
        break;
      }
      const sLo = dv.getUint32(slotOff + i * 8, true);
      const sHi = dv.getUint32(slotOff + i * 8 + 4, true);
      if (leaf) {
        if (isVisible(sLo, sHi)) {
          if (++entries > maxEntries) {
            warn(`more than ${maxEntries} entries; stopped`);
            return;
          }
          yield { first: prev, last: pivot, entry: vaFromParts(sHi, sLo) };
        }
      } else if (isChild(sLo, sHi)) {
        children.push({ hi: sHi, lo: sLo, min: prev, max: pivot, depth: p.depth + 1 });
      } else if (sLo !== 0 || sHi !== 0) {
        warn(`node ${at} slot ${i}: child 0x${vaFromParts(sHi, sLo).toString(16)} is not a node; skipped`);
      }
      if (pivot === p.max) break;
      prev = pivot + 1n;
    }
    for (let i = children.length - 1; i >= 0; i--) stack.push(children[i]!);
  }
}

/** maple_dense: slot i holds index min + i. Not built by current kernels; read for completeness. */
function* denseEntries(p: Pending, dv: DataView, L: NodeLayout, warn: (m: string) => void): Generator<MapleEntry> {
  const span = p.max - p.min + 1n;
  const n = span < BigInt(L.denseSlots) ? Number(span) : L.denseSlots;
  if (span > BigInt(L.denseSlots)) warn(`dense node at ${hex(p.hi, p.lo & ~MAPLE_NODE_MASK)} spans more indices than slots`);
  for (let i = 0; i < n; i++) {
    const lo = dv.getUint32(L.denseSlot + i * 8, true);
    const hi = dv.getUint32(L.denseSlot + i * 8 + 4, true);
    if (isVisible(lo, hi)) yield { first: p.min + BigInt(i), last: p.min + BigInt(i), entry: vaFromParts(hi, lo) };
  }
}

/** The encoded-node helpers, for tests that build trees. */
export const MAPLE = { MAPLE_DENSE, MAPLE_LEAF_64, MAPLE_RANGE_64, MAPLE_ARANGE_64, XA_ZERO_ENTRY, encode: mteEncode };

/** mt_mk_node() (and mte_mk_root() with `root`): the encoded pointer of a node of `type` at `node`. */
function mteEncode(node: bigint, type: number, root = false): bigint {
  return node | (BigInt(type) << BigInt(MAPLE_NODE_TYPE_SHIFT)) | 4n | (root ? 2n : 0n);
}
