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
  let count = 0;
  let tHi = 0;
  let tLo = 1; // never an entry (odd)
  let power = 1;
  let lambda = 0;
  while (!isANulls(lo) && (hi !== 0 || lo !== 0)) {
    if (++count > limit) {
      warnings.warn(what, `more than ${limit} entries; stopped`);
      return count - 1;
    }
    if (hi === tHi && lo === tLo) {
      warnings.warn(what, `cycle after ${count} entries`);
      return count - 1;
    }
    if (++lambda === power) {
      tHi = hi;
      tLo = lo;
      power *= 2;
      lambda = 0;
    }
    if (space.translate(hi, lo) < 0) {
      warnings.warn(what, `node at ${hex(hi, lo)} is not mapped`);
      return count - 1;
    }
    visit(vaAddHi(hi, lo, -memberOffset), vaAddLo(lo, -memberOffset));
    const next = space.readU64(hi, lo);
    hi = space.hi;
    lo = next;
  }
  return count;
}
