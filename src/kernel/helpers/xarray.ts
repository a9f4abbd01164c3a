/**
 * XArrays (include/linux/xarray.h, lib/xarray.c) — also the radix trees of older code
 * (`struct radix_tree_root` is `struct xarray` since 4.20), and so the storage of IDRs.
 *
 *   xa_for_each(xa, index, entry)  →  xaForEach(xa)       struct xarray → (index, entry)
 *   xa_load(xa, index)             →  xaLoad(xa, index)   struct xarray → entry or 0n
 *
 * An entry whose low two bits are 10 is "internal": above 4096 it points to a `struct xa_node`
 * (address + 2), below it marks a sibling slot of a multi-index entry, a retry or a reserved
 * ("zero") slot — none of them are entries of the array. Each node covers `64 << shift`
 * indices; its children have shift - 6, down to 0 at the leaves.
 *
 * The guest can forge any of it. The walk checks that every node has the shift its place in
 * the tree requires (so it descends at most 11 levels), that its `offset` and `parent` agree
 * with where it was found, that no node is reached twice, and it counts nodes; a node that
 * breaks a rule is skipped with a warning and the rest of the tree is still walked.
 */
import { vaAddHi, vaAddLo, vaFromParts } from '../../mmu/va.ts';
import { hex, type KObject, type ObjectContext } from '../object.ts';
import type { WalkLimits } from './list.ts';

export interface XaEntry {
  readonly index: number;
  /** The stored value: a pointer, or a value entry (low bit set; see xaToValue). */
  readonly entry: bigint;
}

export interface XaWalkLimits extends WalkLimits {
  /** Most nodes read before the walk stops (default 1,000,000). */
  readonly maxNodes?: number;
}

/** Geometry of `struct xa_node`, from the guest's BTF. */
export interface XaLayout {
  /** Offset of `xa_head` in `struct xarray`. */
  readonly head: number;
  readonly shift: number;
  readonly offset: number;
  readonly parent: number;
  readonly slots: number;
  /** XA_CHUNK_SIZE: slots per node (64, or 16 with CONFIG_BASE_SMALL). */
  readonly chunkSize: number;
  /** XA_CHUNK_SHIFT. */
  readonly chunkShift: number;
}

const DEFAULT_MAX_NODES = 1_000_000;
/** Indices stay exact as numbers: a node may cover at most 2^53 of them. */
const MAX_SHIFT = 47;

const layouts = new WeakMap<object, XaLayout>();

export function xaLayout(ctx: ObjectContext): XaLayout {
  let l = layouts.get(ctx.btf);
  if (!l) {
    const btf = ctx.btf;
    const slots = btf.member('struct xa_node', 'slots');
    const slotsType = slots ? btf.resolved(slots.typeId) : undefined;
    const chunkSize = slotsType?.kind === 'array' ? slotsType.nelems : 64;
    l = {
      head: btf.memberOffset('struct xarray', 'xa_head'),
      shift: btf.memberOffset('struct xa_node', 'shift'),
      offset: btf.memberOffset('struct xa_node', 'offset'),
      parent: btf.memberOffset('struct xa_node', 'parent'),
      slots: btf.memberOffset('struct xa_node', 'slots'),
      chunkSize,
      chunkShift: Math.round(Math.log2(chunkSize)),
    };
    layouts.set(ctx.btf, l);
  }
  return l;
}

/** xa_is_value(): an integer stored in the array rather than a pointer. */
export function xaIsValue(entry: bigint): boolean {
  return (entry & 1n) === 1n;
}

/** xa_to_value(). */
export function xaToValue(entry: bigint): bigint {
  return entry >> 1n;
}

function isInternal(lo: number): boolean {
  return (lo & 3) === 2;
}

function isNode(hi: number, lo: number): boolean {
  return isInternal(lo) && (hi !== 0 || lo >>> 0 > 4096);
}

/**
 * Every present entry of the array `xa` (a `struct xarray`, a `struct radix_tree_root`, or a
 * pointer to one), in index order.
 */
export function* xaForEach(xa: KObject, limits: XaWalkLimits = {}): Generator<XaEntry> {
  const x = xa.kind === 2 /* PTR */ ? xa.deref() : xa;
  const ctx = x.ctx;
  const space = ctx.space;
  const L = xaLayout(ctx);
  const what = limits.what ?? 'xarray';
  const maxEntries = limits.limit ?? Number.MAX_SAFE_INTEGER;
  const maxNodes = limits.maxNodes ?? DEFAULT_MAX_NODES;
  const warn = (msg: string): void => ctx.warnings.warn(what, msg);

  const headLo = space.readU64(vaAddHi(x.hi, x.lo, L.head), vaAddLo(x.lo, L.head));
  const headHi = space.hi;
  if (headHi === 0 && headLo === 0) return;
  if (!isNode(headHi, headLo)) {
    // A lone entry at index 0 lives in the head itself.
    if (!isInternal(headLo)) yield { index: 0, entry: vaFromParts(headHi, headLo) };
    return;
  }

  // Depth-first; a node's slots are pushed in reverse, so entries come out in index order.
  // A frame is a node still to read, or an entry (shift ENTRY) read and waiting its turn.
  interface Frame {
    readonly hi: number;
    readonly lo: number;
    readonly base: number;
    /** Shift the node must have; ROOT for the root (any valid shift), ENTRY for an entry. */
    readonly shift: number;
    readonly parentHi: number;
    readonly parentLo: number;
    readonly offset: number;
  }
  const ROOT = -1;
  const ENTRY = -2;
  const stack: Frame[] = [{ hi: headHi, lo: (headLo - 2) >>> 0, base: 0, shift: ROOT, parentHi: 0, parentLo: 0, offset: 0 }];
  const seen = new Set<bigint>();
  let nodes = 0;
  let entries = 0;
  while (stack.length > 0) {
    const f = stack.pop()!;
    if (f.shift === ENTRY) {
      if (++entries > maxEntries) {
        warn(`more than ${maxEntries} entries; stopped`);
        return;
      }
      yield { index: f.base, entry: vaFromParts(f.hi, f.lo) };
      continue;
    }
    const at = hex(f.hi, f.lo);
    if (++nodes > maxNodes) {
      warn(`more than ${maxNodes} nodes; stopped`);
      return;
    }
    const key = vaFromParts(f.hi, f.lo);
    if (seen.has(key)) {
      warn(`node ${at} reached twice; skipped`);
      continue;
    }
    seen.add(key);
    const lastSlot = L.slots + L.chunkSize * 8 - 1;
    if (space.translate(f.hi, f.lo) < 0 || space.translate(vaAddHi(f.hi, f.lo, lastSlot), vaAddLo(f.lo, lastSlot)) < 0) {
      warn(`node ${at} is not mapped; skipped`);
      continue;
    }
    const shift = space.readU8(vaAddHi(f.hi, f.lo, L.shift), vaAddLo(f.lo, L.shift));
    if (f.shift === ROOT ? shift % L.chunkShift !== 0 || shift > MAX_SHIFT : shift !== f.shift) {
      warn(`node ${at} has shift ${shift}${f.shift === ROOT ? '' : ` where ${f.shift} belongs`}; skipped`);
      continue;
    }
    if (f.shift !== ROOT) {
      const offset = space.readU8(vaAddHi(f.hi, f.lo, L.offset), vaAddLo(f.lo, L.offset));
      const plo = space.readU64(vaAddHi(f.hi, f.lo, L.parent), vaAddLo(f.lo, L.parent));
      const phi = space.hi;
      if (offset !== f.offset || phi !== f.parentHi || plo !== f.parentLo) {
        warn(`node ${at} claims slot ${offset} of ${hex(phi, plo)} but hangs in slot ${f.offset} of ${hex(f.parentHi, f.parentLo)}; skipped`);
        continue;
      }
    }
    const span = 2 ** shift;
    for (let i = L.chunkSize - 1; i >= 0; i--) {
      const so = L.slots + i * 8;
      const slo = space.readU64(vaAddHi(f.hi, f.lo, so), vaAddLo(f.lo, so));
      const shi = space.hi;
      if (shi === 0 && slo === 0) continue;
      const index = f.base + i * span;
      if (isNode(shi, slo)) {
        if (shift === 0) {
          warn(`leaf node ${at} slot ${i} points to another node; skipped`);
          continue;
        }
        stack.push({ hi: shi, lo: (slo - 2) >>> 0, base: index, shift: shift - L.chunkShift, parentHi: f.hi, parentLo: f.lo, offset: i });
      } else if (!isInternal(slo)) {
        // Above the leaves, an entry covers the whole span of its slot (a multi-index entry):
        // it is reported once, at its first index, as xa_for_each does.
        stack.push({ hi: shi, lo: slo, base: index, shift: ENTRY, parentHi: 0, parentLo: 0, offset: i });
      }
      // Other internal entries (siblings of a multi-index entry, retry, zero) hold nothing.
    }
  }
}

/**
 * The entry at `index` of `xa`, or 0n when there is none. Descends at most one node per
 * level, checking each node's shift like xaForEach; a node that breaks the rules ends the
 * lookup with a warning (and 0n).
 */
export function xaLoad(xa: KObject, index: number, what = 'xarray'): bigint {
  const x = xa.kind === 2 /* PTR */ ? xa.deref() : xa;
  const ctx = x.ctx;
  const space = ctx.space;
  const L = xaLayout(ctx);
  if (!Number.isSafeInteger(index) || index < 0) return 0n;
  let lo = space.readU64(vaAddHi(x.hi, x.lo, L.head), vaAddLo(x.lo, L.head));
  let hi = space.hi;
  if (!isNode(hi, lo)) return index === 0 && !isInternal(lo) ? vaFromParts(hi, lo) : 0n;
  let expect = -1;
  for (let depth = 0; depth <= Math.ceil(64 / L.chunkShift); depth++) {
    const nhi = hi;
    const nlo = (lo - 2) >>> 0;
    if (space.translate(nhi, nlo) < 0) {
      ctx.warnings.warn(what, `node ${hex(nhi, nlo)} is not mapped`);
      return 0n;
    }
    const shift = space.readU8(vaAddHi(nhi, nlo, L.shift), vaAddLo(nlo, L.shift));
    if (expect < 0 ? shift % L.chunkShift !== 0 || shift > MAX_SHIFT : shift !== expect) {
      ctx.warnings.warn(what, `node ${hex(nhi, nlo)} has shift ${shift}`);
      return 0n;
    }
    const slotIndex = Math.floor(index / 2 ** shift);
    if (expect < 0 && slotIndex >= L.chunkSize) return 0n;
    let offset = slotIndex % L.chunkSize;
    const read = (o: number): void => {
      const so = L.slots + o * 8;
      lo = space.readU64(vaAddHi(nhi, nlo, so), vaAddLo(nlo, so));
      hi = space.hi;
    };
    read(offset);
    // A sibling entry names the slot that holds a multi-index entry.
    if (hi === 0 && isInternal(lo) && lo >>> 2 < L.chunkSize - 1) {
      offset = lo >>> 2;
      read(offset);
    }
    if (isNode(hi, lo)) {
      if (shift === 0) return 0n;
      expect = shift - L.chunkShift;
      continue;
    }
    return isInternal(lo) ? 0n : vaFromParts(hi, lo);
  }
  ctx.warnings.warn(what, `lookup of index ${index} descended too deep`);
  return 0n;
}
