/**
 * ID allocators (include/linux/idr.h, lib/idr.c): an IDR maps small integer ids to pointers,
 * stored in the radix tree (an XArray) `idr_rt`, offset by `idr_base`.
 *
 *   idr_for_each_entry(idr, entry, id)  →  idrForEach(idr)      struct idr → (id, pointer)
 *   idr_find(idr, id)                   →  idrFind(idr, id)     struct idr → pointer or 0n
 *
 * Ids allocated but not yet filled hold a reserved "zero" entry (alloc_pid() reserves the
 * number first and stores the pointer last); like the kernel's iterators, these are skipped.
 */
import type { KObject } from '../object.ts';
import { xaForEach, xaLoad, type XaWalkLimits } from './xarray.ts';

export interface IdrEntry {
  readonly id: number;
  /** The stored pointer. */
  readonly entry: bigint;
}

function parts(idr: KObject): { rt: KObject; base: number } {
  const i = idr.kind === 2 /* PTR */ ? idr.deref() : idr;
  const base = i.hasMember('idr_base') ? i.member('idr_base').num() : 0;
  return { rt: i.member('idr_rt'), base };
}

/** Every (id, pointer) of `idr` (a `struct idr` or a pointer to one), in id order. */
export function* idrForEach(idr: KObject, limits: XaWalkLimits = {}): Generator<IdrEntry> {
  const { rt, base } = parts(idr);
  for (const e of xaForEach(rt, { what: 'idr', ...limits })) yield { id: e.index + base, entry: e.entry };
}

/** The pointer stored under `id`, or 0n. */
export function idrFind(idr: KObject, id: number, what = 'idr'): bigint {
  const { rt, base } = parts(idr);
  return id < base ? 0n : xaLoad(rt, id - base, what);
}
