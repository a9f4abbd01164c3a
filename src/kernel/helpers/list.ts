/**
 * Doubly linked lists (include/linux/list.h) and hash lists, walked the way the kernel's macros
 * do — but bounded and cycle-checked, because a guest can corrupt or forge any of it.
 *
 *   list_for_each_entry(pos, head, member)   →  listForEachEntry(head, 'struct T', 'member')
 *   hlist_for_each_entry(pos, head, member)  →  hlistForEachEntry(head, 'struct T', 'member')
 */
import type { AddressSpace } from '../../mmu/address-space.ts';
import { vaAddHi, vaAddLo } from '../../mmu/va.ts';
import type { Warnings } from '../../util/warnings.ts';
import { hex, KObject, typeIdOf } from '../object.ts';

export interface WalkLimits {
  /** Most entries visited before the walk is declared runaway (default 1,000,000). */
  readonly limit?: number;
  /** Name used in warnings, e.g. 'task list'. */
  readonly what?: string;
}

export const DEFAULT_WALK_LIMIT = 1_000_000;

/** What WalkGuard.step() says of a node: go on, too many nodes, or a node seen before. */
export const WALK_OK = 0;
export const WALK_TOO_LONG = 1;
export const WALK_CYCLE = 2;

/**
 * The bound and the cycle check every walk over a guest's linked structure needs: at most
 * `limit` nodes, and Brent's algorithm (constant memory: a tortoise that jumps to the hare at
 * powers of two) to notice a node seen before. `step(hi, lo)` is called with each node before
 * it is used. The start node is the first tortoise: a circular list's head, or a value no node
 * can have.
 */
export class WalkGuard {
  count = 0;
  private tortoiseHi: number;
  private tortoiseLo: number;
  private power = 1;
  private lambda = 0;

  constructor(
    readonly limit: number,
    startHi = 0,
    startLo = 0,
  ) {
    this.tortoiseHi = startHi;
    this.tortoiseLo = startLo;
  }

  step(hi: number, lo: number): number {
    if (++this.count > this.limit) return WALK_TOO_LONG;
    if (hi === this.tortoiseHi && lo === this.tortoiseLo) return WALK_CYCLE;
    if (++this.lambda === this.power) {
      this.tortoiseHi = hi;
      this.tortoiseLo = lo;
      this.power *= 2;
      this.lambda = 0;
    }
    return WALK_OK;
  }
}

/**
 * A cursor over a circular list of list_head nodes starting after `head`. `next()` moves to the
 * next node and returns false at the end of the list or when the walk must stop: a node that
 * does not translate, a cycle that does not pass through the head (Brent's algorithm: constant
 * memory), or more nodes than the limit. Each stop other than the normal end records a warning.
 * No allocation per step: the position is in `hi`/`lo`.
 */
export class ListCursor {
  hi: number;
  lo: number;
  /** Set when the walk stopped early (the list is corrupt, or changed under a live walk). */
  broken = false;
  private readonly guard: WalkGuard;
  private readonly what: string;

  constructor(
    private readonly space: AddressSpace,
    private readonly warnings: Warnings,
    private readonly headHi: number,
    private readonly headLo: number,
    limits: WalkLimits = {},
    /** Offset of the pointer to follow inside a node: 0 = next (forward), 8 = prev. */
    private readonly linkOffset = 0,
  ) {
    this.hi = headHi;
    this.lo = headLo;
    this.guard = new WalkGuard(limits.limit ?? DEFAULT_WALK_LIMIT, headHi, headLo);
    this.what = limits.what ?? 'list';
  }

  /** Nodes visited so far. */
  get count(): number {
    return this.guard.count;
  }

  next(): boolean {
    if (this.broken) return false;
    const space = this.space;
    const ph = vaAddHi(this.hi, this.lo, this.linkOffset);
    const pl = vaAddLo(this.lo, this.linkOffset);
    const pa = space.translate(ph, pl);
    if (pa < 0) return this.stop(`node at ${hex(this.hi, this.lo)} is not mapped`);
    // Translated once: the link is read at its physical address unless it straddles a page.
    let lo: number;
    let hi: number;
    if ((pl & 0xfff) <= 4088) {
      const r = space.reader;
      lo = r.u64(pa);
      hi = r.hi;
    } else {
      lo = space.readU64(ph, pl);
      hi = space.hi;
    }
    if (hi === this.headHi && lo === this.headLo) return false;
    if (hi === 0 && lo === 0) return this.stop(`NULL link after ${this.count} entries`);
    const verdict = this.guard.step(hi, lo);
    if (verdict === WALK_TOO_LONG) return this.stop(`more than ${this.guard.limit} entries; stopped`);
    if (verdict === WALK_CYCLE) return this.stop(`cycle not through the head after ${this.count} entries`);
    this.hi = hi;
    this.lo = lo;
    return true;
  }

  private stop(why: string): false {
    this.broken = true;
    this.warnings.warn(this.what, why);
    return false;
  }
}

/** Every list_head after `head` (a `struct list_head` object or a pointer to one). */
export function* listForEach(head: KObject, limits?: WalkLimits): Generator<KObject> {
  const h = head.kind === 2 /* PTR */ ? head.deref() : head;
  const cur = new ListCursor(h.ctx.space, h.ctx.warnings, h.hi, h.lo, limits);
  while (cur.next()) yield new KObject(h.ctx, h.typeId, cur.hi, cur.lo);
}

/** The structs of `type` linked through their `member` list_head on the list at `head`. */
export function* listForEachEntry(head: KObject, type: string, member: string, limits?: WalkLimits): Generator<KObject> {
  const ctx = head.ctx;
  const id = typeIdOf(ctx.btf, type);
  const off = ctx.btf.memberOffset(id, member);
  const h = head.kind === 2 ? head.deref() : head;
  const cur = new ListCursor(ctx.space, ctx.warnings, h.hi, h.lo, limits);
  while (cur.next()) yield new KObject(ctx, id, vaAddHi(cur.hi, cur.lo, -off), vaAddLo(cur.lo, -off));
}

/**
 * hlist: a NULL-terminated singly linked list from `struct hlist_head { first }` through
 * `struct hlist_node { next, pprev }`. Bounded and cycle-checked like the circular lists.
 */
export function* hlistForEachEntry(head: KObject, type: string, member: string, limits?: WalkLimits): Generator<KObject> {
  const ctx = head.ctx;
  const space = ctx.space;
  const id = typeIdOf(ctx.btf, type);
  const off = ctx.btf.memberOffset(id, member);
  const h = head.kind === 2 ? head.deref() : head;
  // Treat `first` like a node's `next`: start from the head itself with link offset 0, and end
  // on NULL (a fake head address that can never match).
  let lo = space.readU64(h.hi, h.lo);
  let hi = space.hi;
  const guard = new WalkGuard(limits?.limit ?? DEFAULT_WALK_LIMIT);
  const what = limits?.what ?? 'hlist';
  while (hi !== 0 || lo !== 0) {
    const verdict = guard.step(hi, lo);
    if (verdict === WALK_TOO_LONG) {
      ctx.warnings.warn(what, `more than ${guard.limit} entries; stopped`);
      return;
    }
    if (verdict === WALK_CYCLE) {
      ctx.warnings.warn(what, `cycle after ${guard.count} entries`);
      return;
    }
    if (space.translate(hi, lo) < 0) {
      ctx.warnings.warn(what, `node at ${hex(hi, lo)} is not mapped`);
      return;
    }
    yield new KObject(ctx, id, vaAddHi(hi, lo, -off), vaAddLo(lo, -off));
    const nlo = space.readU64(hi, lo);
    hi = space.hi;
    lo = nlo;
  }
}
