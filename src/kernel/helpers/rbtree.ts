/**
 * Red-black trees (include/linux/rbtree.h, lib/rbtree.c).
 *
 *   rb_first() / rb_next() over a tree  →  rbtreeInorderForEachEntry(root, 'struct T', 'member')
 *                                          struct rb_root → struct T, in key order
 *
 * The walk descends from the root with an explicit stack and ignores the parent pointers (the
 * guest could forge them): the stack depth is bounded (a red-black tree of n nodes is at most
 * 2·log2(n+1) deep), nodes are counted, and a node met twice ends the walk with a warning.
 */
import { vaAddHi, vaAddLo, vaFromParts } from '../../mmu/va.ts';
import { hex, KObject, typeIdOf } from '../object.ts';
import { DEFAULT_WALK_LIMIT, type WalkLimits } from './list.ts';

/** Deeper than any red-black tree that fits in a 64-bit address space. */
const MAX_DEPTH = 128;

/** `struct rb_node`: rb_right at 8, rb_left at 16 (after __rb_parent_color). */
const RB_RIGHT = 8;
const RB_LEFT = 16;

/**
 * The structs of `type` whose `member` rb_node is in the tree at `root` (a `struct rb_root`,
 * a `struct rb_root_cached`, or a pointer to either), in order.
 */
export function* rbtreeInorderForEachEntry(root: KObject, type: string, member: string, limits: WalkLimits = {}): Generator<KObject> {
  const ctx = root.ctx;
  const space = ctx.space;
  const id = typeIdOf(ctx.btf, type);
  const off = ctx.btf.memberOffset(id, member);
  const what = limits.what ?? 'rbtree';
  const limit = limits.limit ?? DEFAULT_WALK_LIMIT;
  const r = root.kind === 2 /* PTR */ ? root.deref() : root;
  // rb_root_cached embeds rb_root first; rb_root's only member rb_node is at offset 0.
  let lo = space.readU64(r.hi, r.lo);
  let hi = space.hi;
  const stackHi: number[] = [];
  const stackLo: number[] = [];
  const seen = new Set<bigint>();
  let count = 0;
  for (;;) {
    // Descend left as far as possible, remembering the way.
    while (hi !== 0 || lo !== 0) {
      if (stackHi.length >= MAX_DEPTH) {
        ctx.warnings.warn(what, `deeper than ${MAX_DEPTH} levels at ${hex(hi, lo)}; stopped`);
        return;
      }
      const key = vaFromParts(hi, lo);
      if (seen.has(key)) {
        ctx.warnings.warn(what, `node ${hex(hi, lo)} reached twice (a cycle); stopped`);
        return;
      }
      seen.add(key);
      if (space.translate(hi, lo) < 0) {
        ctx.warnings.warn(what, `node ${hex(hi, lo)} is not mapped; stopped`);
        return;
      }
      stackHi.push(hi);
      stackLo.push(lo);
      const l = space.readU64(vaAddHi(hi, lo, RB_LEFT), vaAddLo(lo, RB_LEFT));
      hi = space.hi;
      lo = l;
    }
    if (stackHi.length === 0) return;
    const nh = stackHi.pop()!;
    const nl = stackLo.pop()!;
    if (++count > limit) {
      ctx.warnings.warn(what, `more than ${limit} nodes; stopped`);
      return;
    }
    yield new KObject(ctx, id, vaAddHi(nh, nl, -off), vaAddLo(nl, -off));
    const rl = space.readU64(vaAddHi(nh, nl, RB_RIGHT), vaAddLo(nl, RB_RIGHT));
    hi = space.hi;
    lo = rl;
  }
}
