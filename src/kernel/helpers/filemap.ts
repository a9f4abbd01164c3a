/**
 * The page cache (mm/filemap.c, include/linux/pagemap.h): a file's cached pages, found by index
 * in its address_space's `i_pages` XArray.
 *
 *   filemap_get_folio(mapping, index) + folio_page()  →  filemapPagePhys(k, mapping, index)
 *   page_to_pfn(page) (SPARSEMEM_VMEMMAP)             →  pageToPfn(k, page)
 *
 * What a process would read from a file-backed page it has not touched yet is that page of the
 * page cache, when it is cached: so an outside reader can fill pages the process's page tables
 * do not (yet) map. Only up-to-date folios that name this mapping as theirs are used.
 */
import type { Kernel } from '../kernel.ts';
import { structReader } from './struct-reader.ts';
import { xaIsValue, xaLoad } from './xarray.ts';

/** Pages in one folio, at most (MAX_PAGECACHE_ORDER is far below this). */
const MAX_FOLIO_PAGES = 1 << 18;

/** page_to_pfn(): the page's index in the vmemmap array; undefined when it is not inside it. */
export function pageToPfn(k: Kernel, page: bigint): number | undefined {
  const base = k.layout.vmemmapBase;
  if (base === undefined || page < base) return undefined;
  const size = BigInt(structReader(k).sizeof('page'));
  const delta = page - base;
  if (delta % size !== 0n) return undefined;
  const pfn = delta / size;
  return pfn < 1n << 40n ? Number(pfn) : undefined;
}

/**
 * Guest-physical address of page `index` of the file whose `struct address_space *` is
 * `mapping`, when the page cache holds it up to date; undefined otherwise (not cached, evicted
 * — a shadow value entry —, or a folio that does not belong to this mapping).
 */
export function filemapPagePhys(k: Kernel, mapping: bigint, index: number): number | undefined {
  const r = structReader(k);
  const entry = xaLoad(k.object('struct xarray', r.at(mapping, 'address_space', 'i_pages')), index, 'page cache');
  if (entry === 0n || xaIsValue(entry)) return undefined;
  const folio = entry;
  // Page-cache entries are folios from 5.16; a struct page (same leading fields) before.
  const F = r.has('folio', 'mapping') ? 'folio' : 'page';
  if (r.ptr(folio, F, 'mapping') !== mapping) {
    k.warnings.warn('page cache', `folio 0x${folio.toString(16)} at index ${index} belongs to another mapping`);
    return undefined;
  }
  const uptodate = k.btf.enumValue('pageflags', 'PG_uptodate');
  if (uptodate !== undefined && ((r.u64(folio, F, 'flags') >> uptodate) & 1n) === 0n) return undefined;
  const first = r.num64(folio, F, 'index');
  const within = index - first;
  if (within < 0 || within >= MAX_FOLIO_PAGES) {
    k.warnings.warn('page cache', `folio 0x${folio.toString(16)} starts at index ${first}, not near ${index}`);
    return undefined;
  }
  const pfn = pageToPfn(k, folio);
  if (pfn === undefined) {
    k.warnings.warn('page cache', `folio 0x${folio.toString(16)} is not in the vmemmap`);
    return undefined;
  }
  const pa = (pfn + within) * 4096;
  return k.space.reader.isRam(pa, 4096) ? pa : undefined;
}
