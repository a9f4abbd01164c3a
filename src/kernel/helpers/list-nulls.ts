/**
 * "Nulls" hash lists (include/linux/list_nulls.h): singly linked like hlist, but a list ends in
 * an odd "nulls" value (the bucket number << 1 | 1) instead of NULL, so a lockless reader can
 * tell it ended in the bucket it started in. TCP's established and listening hashes use them.
 *
 *   hlist_nulls_for_each_entry(tpos, pos, head, member)  →  hlistNullsForEach(space, …, first, offset)
 *
 * Bounded and cycle-checked like the other lists.
 */
import type { AddressSpace } from '../../mmu/address-space.ts';
import { vaAddHi, vaAddLo } from '../../mmu/va.ts';
import type { Warnings } from '../../util/warnings.ts';
import { hex } from '../object.ts';
import { WalkGuard, WALK_CYCLE, WALK_TOO_LONG } from './list.ts';

/** is_a_nulls(): the end marker of a nulls list. */
export function isANulls(lo: number): boolean {
  return (lo & 1) === 1;
}

/**
 * Call `visit(hi, lo)` with the address of each entry (the node address minus `memberOffset`) of
 * the nulls list whose first node is (firstHi, firstLo). Returns the number of entries; stops
 * with a warning on an unmapped node, a cycle, or more than `limit` entries. Allocation-free.
 */
export function hlistNullsForEach(
  space: AddressSpace,
  warnings: Warnings,
  what: string,
  firstHi: number,
  firstLo: number,
  memberOffset: number,
  visit: (hi: number, lo: number) => void,
  limit = 1_000_000,
): number {
  let hi = firstHi;
  let lo = firstLo;
  const guard = new WalkGuard(limit, 0, 1); // odd: never an entry
  while (!isANulls(lo) && (hi !== 0 || lo !== 0)) {
    const verdict = guard.step(hi, lo);
    if (verdict === WALK_TOO_LONG) {
      warnings.warn(what, `more than ${limit} entries; stopped`);
      return guard.count - 1;
    }
    if (verdict === WALK_CYCLE) {
      warnings.warn(what, `cycle after ${guard.count} entries`);
      return guard.count - 1;
    }
    if (space.translate(hi, lo) < 0) {
      warnings.warn(what, `node at ${hex(hi, lo)} is not mapped`);
      return guard.count - 1;
    }
    visit(vaAddHi(hi, lo, -memberOffset), vaAddLo(lo, -memberOffset));
    const next = space.readU64(hi, lo);
    hi = space.hi;
    lo = next;
  }
  return guard.count;
}
