/**
 * Process address spaces (include/linux/mm_types.h, mm/mmap.c, mm/memory.c).
 *
 *   for_each_vma(vmi, vma)          →  forEachVma(mm)           struct mm_struct → struct vm_area_struct
 *   mm->pgd                         →  mmAddressSpace(mm)       the process's page tables as an AddressSpace
 *   access_remote_vm(mm, addr, …)   →  accessRemoteVm(space, addr, len)
 *
 * VMAs live in a maple tree (`mm->mm_mt`, 6.1+) or, before that, on the `mm->mmap` list linked
 * by `vm_next`; which one is asked of BTF.
 */
import { AddressSpace } from '../../mmu/address-space.ts';
import { vaHi, vaLo } from '../../mmu/va.ts';
import { GuestDataError } from '../../util/errors.ts';
import { KObject } from '../object.ts';
import { WalkGuard, WALK_CYCLE, WALK_TOO_LONG, type WalkLimits } from './list.ts';
import { mtForEach } from './maple-tree.ts';

/** Stops runaway walks only: the kernel caps VMAs per process at vm.max_map_count (65530 by default, settable higher). */
export const DEFAULT_VMA_LIMIT = 1_000_000;

/**
 * Every VMA of `mm` (a `struct mm_struct` or a pointer to one), in address order.
 * A VMA whose bounds disagree with the maple tree's range for it is still returned (it is what
 * the guest holds) and recorded in the warnings.
 */
export function* forEachVma(mm: KObject, limits: WalkLimits = {}): Generator<KObject> {
  const m = mm.kind === 2 /* PTR */ ? mm.deref() : mm;
  const ctx = m.ctx;
  const what = limits.what ?? 'vma list';
  const limit = limits.limit ?? DEFAULT_VMA_LIMIT;
  const vmaType = ctx.btf.findTypeId('struct vm_area_struct');
  if (vmaType === undefined) throw new GuestDataError('the kernel\'s BTF has no struct vm_area_struct');
  const startOff = ctx.btf.memberOffset(vmaType, 'vm_start');
  const endOff = ctx.btf.memberOffset(vmaType, 'vm_end');
  const space = ctx.space;

  if (m.hasMember('mm_mt')) {
    for (const e of mtForEach(m.member('mm_mt'), { what, limit })) {
      const obj = objectAtVa(m, vmaType, e.entry);
      try {
        const start = space.readU64Big(e.entry + BigInt(startOff));
        const end = space.readU64Big(e.entry + BigInt(endOff));
        if (start !== e.first || end - 1n !== e.last) {
          ctx.warnings.warn(what, `vma at 0x${e.entry.toString(16)} spans 0x${start.toString(16)}-0x${end.toString(16)} but the tree files it under 0x${e.first.toString(16)}-0x${(e.last + 1n).toString(16)}`);
        }
      } catch (err) {
        ctx.warnings.warn(what, `vma at 0x${e.entry.toString(16)} cannot be read: ${(err as Error).message}`);
        continue;
      }
      yield obj;
    }
    return;
  }

  // Before 6.1: a NULL-terminated list sorted by address, through vm_next.
  const nextOff = ctx.btf.memberOffset(vmaType, 'vm_next');
  let cur = m.member('mmap').ptr();
  let lastEnd = 0n;
  const guard = new WalkGuard(limit);
  while (cur !== 0n) {
    const verdict = guard.step(vaHi(cur), vaLo(cur));
    if (verdict === WALK_TOO_LONG) {
      ctx.warnings.warn(what, `more than ${limit} vmas; stopped`);
      return;
    }
    if (verdict === WALK_CYCLE) {
      ctx.warnings.warn(what, `cycle after ${guard.count} vmas`);
      return;
    }
    let start: bigint;
    let next: bigint;
    try {
      start = space.readU64Big(cur + BigInt(startOff));
      next = space.readU64Big(cur + BigInt(nextOff));
      if (start < lastEnd) {
        ctx.warnings.warn(what, `vma at 0x${cur.toString(16)} starts below the previous one's end; stopped`);
        return;
      }
      lastEnd = space.readU64Big(cur + BigInt(endOff));
    } catch (err) {
      ctx.warnings.warn(what, `vma at 0x${cur.toString(16)} cannot be read: ${(err as Error).message}`);
      return;
    }
    yield objectAtVa(m, vmaType, cur);
    cur = next;
  }
}

function objectAtVa(like: KObject, typeId: number, va: bigint): KObject {
  return new KObject(like.ctx, typeId, vaHi(va), vaLo(va));
}

export interface MmSpaceOptions {
  /** Translation-cache entries for the new space (default 1024; small reads need few). */
  readonly tlbEntries?: number;
}

/**
 * The address space of a process: `mm->pgd` is a kernel (direct-map) address of its top-level
 * table; translated through the kernel's own tables, it is the root of an AddressSpace with the
 * kernel's paging levels, over the same physical reader. With page-table isolation the kernel
 * copy of the tables maps all of user space too (it is the one `mm->pgd` points at).
 */
export function mmAddressSpace(mm: KObject, options: MmSpaceOptions = {}): AddressSpace {
  const m = mm.kind === 2 ? mm.deref() : mm;
  const space = m.ctx.space;
  const pgd = m.member('pgd').ptr();
  if (pgd === 0n) throw new GuestDataError(`mm at 0x${m.address.toString(16)} has no page tables (pgd is NULL)`);
  if ((pgd & 0xfffn) !== 0n) throw new GuestDataError(`mm at 0x${m.address.toString(16)}: pgd 0x${pgd.toString(16)} is not page-aligned`);
  const root = space.tryTranslate(pgd);
  if (root === null) throw new GuestDataError(`mm at 0x${m.address.toString(16)}: pgd 0x${pgd.toString(16)} is not mapped`);
  return new AddressSpace(space.reader, root, space.levels, { tlbEntries: options.tlbEntries ?? 1024 });
}

/** A stretch of a read that could not be served: its pages are not present in the page tables. */
export interface MissingRange {
  /** Byte offset into the read. */
  readonly offset: number;
  readonly length: number;
}

export interface RemoteRead {
  /** `len` bytes; zeros where a page is missing. */
  readonly bytes: Uint8Array;
  readonly missing: readonly MissingRange[];
  /** Bytes before the first missing page: what the kernel's access_remote_vm would return. */
  readonly contiguous: number;
}

/**
 * Read user memory page by page, as access_remote_vm() does — except that a page not present
 * (never touched, swapped out, or file data not yet faulted in) cannot be brought in from
 * outside the guest: it reads as zeros and is listed in `missing`.
 */
export function accessRemoteVm(space: AddressSpace, addr: bigint, len: number): RemoteRead {
  const bytes = new Uint8Array(len);
  const missing: MissingRange[] = [];
  let contiguous = -1;
  let done = 0;
  while (done < len) {
    const va = addr + BigInt(done);
    const hi = vaHi(va);
    const lo = vaLo(va);
    const chunk = Math.min(len - done, 4096 - (lo & 0xfff));
    const pa = space.translate(hi, lo);
    if (pa < 0) {
      if (contiguous < 0) contiguous = done;
      const last = missing[missing.length - 1];
      if (last && last.offset + last.length === done) missing[missing.length - 1] = { offset: last.offset, length: last.length + chunk };
      else missing.push({ offset: done, length: chunk });
    } else {
      try {
        space.reader.read(pa, bytes.subarray(done, done + chunk));
      } catch {
        // A page table pointing outside RAM: as good as missing.
        if (contiguous < 0) contiguous = done;
        missing.push({ offset: done, length: chunk });
      }
    }
    done += chunk;
  }
  return { bytes, missing, contiguous: contiguous < 0 ? len : contiguous };
}
