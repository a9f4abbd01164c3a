/**
 * kernel-text: the kernel's code and read-only data in memory, compared byte for byte with its
 * image on disk (`--vmlinux`: a bzImage or vmlinux; see vmlinux-image.ts).
 *
 * The image is first relocated to this boot's KASLR offset exactly as the decompressor did.
 * What still differs legitimately is code the kernel rewrites at boot (and some at run time);
 * every such place is listed by the image itself, in tables the kernel patches from:
 * alternatives (.altinstructions), paravirt sites (.parainstructions), jump labels
 * (__jump_table), static calls (their call sites and trampolines), ftrace's call sites
 * (__mcount_loc), retpoline and return-thunk sites, LOCK prefixes turned off on one CPU
 * (.smp_locks), ENDBR sealing, call-depth sites and runtime constants on kernels that have
 * them. Those bytes
 * are reported as information (how many sites the kernel patched); any other difference is
 * a finding, named by the function it is in.
 *
 * Read-only data (`__start_rodata` … `__end_rodata`) is compared too, except the
 * `__ro_after_init` data that x86 places inside it (written during boot, then sealed): the
 * rest is never written. It holds sys_call_table, many operation tables and strings.
 */
import type { Kernel } from '../../kernel/kernel.ts';
import { UsageError } from '../../util/errors.ts';
import { imageBytes, imageExtent, loadKernelImage, relocatedBytes, type KernelImage } from './vmlinux-image.ts';
import { CheckReport, guestDataError, type Check, type CheckContext, type CheckResult } from './types.ts';

const NAME = 'kernel-text';
/** Differences closer than this are one run. */
const MERGE_GAP = 16;
/** Runs reported one by one; the rest are counted in a last finding. */
const MAX_RUNS = 64;
/** Bytes of each side shown in a finding. */
const SHOW_BYTES = 24;
const CHUNK = 4 << 20;

export const kernelText: Check = {
  name: NAME,
  description: 'kernel code and read-only data in memory that differ from the kernel image on disk (--vmlinux), beyond what the kernel patches at boot',
  run: (ctx: CheckContext): CheckResult => {
    const report = new CheckReport(NAME);
    const path = ctx.options.vmlinux;
    if (path === undefined) return report.skipped('give the kernel\'s image with --vmlinux FILE (its bzImage or vmlinux)');
    const image = ctx.options.image ?? ctx.shared(`kernel image ${path}`, () => loadKernelImage(path));
    return compareWithImage(ctx.kernel, image, report);
  },
};

/**
 * A link-time kernel address as a signed number: the kernel links in the top 2 GiB, so
 * addresses are sign-extended 32-bit values and exact as numbers (no bigint per site).
 */
type LinkAddress = number;

function linkNumber(va: bigint): LinkAddress {
  return Number(BigInt.asIntN(64, va));
}

function linkBig(a: LinkAddress): bigint {
  return BigInt.asUintN(64, BigInt(a));
}

interface Site {
  readonly start: LinkAddress;
  readonly len: number;
}

/** A kind of boot-time patch site and the table that lists them. */
interface SiteKind {
  readonly name: string;
  readonly sites: Site[];
}

export function compareWithImage(k: Kernel, image: KernelImage, report: CheckReport): CheckResult {
  const delta = k.layout.kaslrOffset;
  report.count('image', `${image.format}${image.relocations ? '' : ', no relocation table: relocated fields inferred'}`);

  const mismatch = sameKernel(k, image, delta);
  if (mismatch) return report.skipped(mismatch);

  // ---- text ----
  const textStart = k.symbols.lookup('_text') ?? k.symbol('_stext');
  const textEnd = k.symbol('_etext');
  const kinds = patchSites(k, image, delta);
  const textLen = Number(textEnd - textStart);
  const mask = new Uint8Array(textLen);
  const linkStart = linkNumber(textStart - delta);
  let siteCount = 0;
  for (const kind of kinds) {
    for (const s of kind.sites) {
      const from = s.start - linkStart;
      if (from < 0 || from + s.len > textLen) continue;
      mask.fill(1, from, from + s.len);
      siteCount++;
    }
  }
  const text = diffRegion(k, image, textStart, textLen, delta, mask);
  report.count('text bytes', textLen);
  report.count('patch sites', siteCount);

  const patched: Record<string, number> = {};
  let patchedTotal = 0;
  for (const kind of kinds) {
    let n = 0;
    for (const s of kind.sites) {
      const from = s.start - linkStart;
      if (from < 0 || from + s.len > textLen) continue;
      for (let i = from; i < from + s.len; i++) {
        if (text.differs[i]) {
          n++;
          break;
        }
      }
    }
    if (n > 0) patched[kind.name] = n;
    patchedTotal += n;
  }
  reportRuns(k, report, 'kernel text', text, textStart, delta);
  if (patchedTotal > 0) {
    report.add('info', `${patchedTotal} of ${siteCount} patch sites differ from the image, as the kernel patches them at boot and run time`, {
      ...Object.fromEntries(Object.entries(patched).map(([kind, n]) => [kind, `${n} of ${kinds.find((x) => x.name === kind)!.sites.length}`])),
    });
  }

  // ---- read-only data ----
  const roStart = k.symbols.lookup('__start_rodata');
  const roEnd = k.symbols.lookup('__end_rodata');
  if (roStart !== undefined && roEnd !== undefined && roEnd > roStart) {
    // The section ends page-aligned in memory; the file holds its bytes up to the last one.
    const roLen = Math.min(Number(roEnd - roStart), imageExtent(image, roStart - delta));
    // Data marked __ro_after_init is written during boot and lies inside this range on x86.
    const roMask = new Uint8Array(roLen);
    const afterStart = k.symbols.lookup('__start_ro_after_init');
    const afterEnd = k.symbols.lookup('__end_ro_after_init');
    if (afterStart !== undefined && afterEnd !== undefined && afterEnd > afterStart) {
      const from = Math.max(0, Number(afterStart - roStart));
      const to = Math.min(roLen, Number(afterEnd - roStart));
      if (to > from) roMask.fill(1, from, to);
    }
    const ro = diffRegion(k, image, roStart, roLen, delta, roMask);
    report.count('rodata bytes', roLen);
    reportRuns(k, report, 'kernel read-only data', ro, roStart, delta);
  }
  return report.result();
}

/** Undefined if `image` is the running kernel; else why not (the banners differ). */
function sameKernel(k: Kernel, image: KernelImage, delta: bigint): string | undefined {
  const banner = k.symbols.lookup('linux_banner');
  if (banner === undefined) return undefined;
  const len = 256;
  const inMemory = cString(k.space.readBytes(banner, len));
  let inImage: string;
  try {
    inImage = cString(imageBytes(image, banner - delta, len));
  } catch (e) {
    guestDataError(e);
    return 'the image does not cover this kernel\'s linux_banner: it is not this kernel';
  }
  return inMemory === inImage ? undefined : `the image is a different kernel: it says "${inImage.trim()}", memory says "${inMemory.trim()}"`;
}

function cString(b: Uint8Array): string {
  const nul = b.indexOf(0);
  return new TextDecoder('latin1').decode(nul < 0 ? b : b.subarray(0, nul));
}

interface RegionDiff {
  /** 1 where memory differs from the image (masked bytes included). */
  readonly differs: Uint8Array;
  /** The image's bytes of the region, relocated when the image has its table. */
  readonly image: Uint8Array;
  readonly relocated: boolean;
  /** Unmasked differing runs, as [offset, length]. */
  readonly runs: [number, number][];
}

/** Compare [start, start+len) in memory with the relocated image; masked bytes are not runs. */
function diffRegion(k: Kernel, image: KernelImage, start: bigint, len: number, delta: bigint, mask: Uint8Array): RegionDiff {
  const { bytes: file, relocated } = relocatedBytes(image, start - delta, len, delta);
  const differs = new Uint8Array(len);
  const mem = new Uint8Array(Math.min(CHUNK, len));
  const memWords = new Uint32Array(mem.buffer, 0, mem.length >>> 2);
  // `file` is a fresh copy (offset 0) and CHUNK a multiple of 4: word views line up.
  const fileWords = new Uint32Array(file.buffer, file.byteOffset, file.length >>> 2);
  for (let off = 0; off < len; off += CHUNK) {
    const n = Math.min(CHUNK, len - off);
    const chunk = mem.subarray(0, n);
    try {
      k.space.read(start + BigInt(off), chunk);
    } catch (e) {
      k.warnings.warn(NAME, `0x${(start + BigInt(off)).toString(16)}+${n}: ${guestDataError(e).message}; not compared`);
      continue;
    }
    // Four bytes at a time; the bytes of a differing word one by one.
    const words = n >>> 2;
    const base = off >>> 2;
    for (let w = 0; w < words; w++) {
      if (memWords[w] === fileWords[base + w]) continue;
      for (let b = w * 4; b < w * 4 + 4; b++) if (chunk[b] !== file[off + b]) differs[off + b] = 1;
    }
    for (let b = words * 4; b < n; b++) if (chunk[b] !== file[off + b]) differs[off + b] = 1;
    if (!relocated) excuseRelocations(chunk, file.subarray(off, off + n), differs.subarray(off, off + n), delta);
  }
  const runs: [number, number][] = [];
  let runStart = -1;
  let last = -MERGE_GAP - 1;
  for (let i = differs.indexOf(1); i >= 0; i = differs.indexOf(1, i + 1)) {
    if (mask[i]) continue;
    if (i - last > MERGE_GAP) {
      if (runStart >= 0) runs.push([runStart, last - runStart + 1]);
      runStart = i;
    }
    last = i;
  }
  if (runStart >= 0) runs.push([runStart, last - runStart + 1]);
  return { differs, runs, image: file, relocated };
}

/**
 * Without the image's relocation table: a differing byte is excused when an aligned 4- or
 * 8-byte field around it differs by exactly the KASLR offset (what a relocation does).
 * Weaker than the table — a changed field that happens to differ by that offset is missed.
 */
function excuseRelocations(mem: Uint8Array, file: Uint8Array, differs: Uint8Array, delta: bigint): void {
  const m = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
  const f = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const d32 = Number(BigInt.asUintN(32, delta));
  for (let i = 0; i < differs.length; i++) {
    if (!differs[i]) continue;
    for (let j = Math.max(0, i - 7); j <= i; j++) {
      if (j + 8 <= mem.length && m.getBigUint64(j, true) === BigInt.asUintN(64, f.getBigUint64(j, true) + delta)) {
        differs.fill(0, j, j + 8);
        break;
      }
      if (j >= i - 3 && j + 4 <= mem.length) {
        const mv = m.getUint32(j, true);
        const fv = f.getUint32(j, true);
        if (mv === ((fv + d32) >>> 0) || mv === ((fv - d32) >>> 0)) {
          differs.fill(0, j, j + 4);
          break;
        }
      }
    }
  }
}

function reportRuns(k: Kernel, report: CheckReport, what: string, diff: RegionDiff, start: bigint, delta: bigint): void {
  const runs = diff.runs;
  for (const [off, len] of runs.slice(0, MAX_RUNS)) {
    const at = start + BigInt(off);
    const sym = k.symbolize(at) ?? `0x${at.toString(16)}`;
    let memHex = '';
    try {
      memHex = hexBytes(k.space.readBytes(at, Math.min(len, SHOW_BYTES)));
    } catch (e) {
      guestDataError(e);
      memHex = '(unreadable)';
    }
    report.add('high', `${what} differs from the image at ${sym} (${len} byte${len === 1 ? '' : 's'})`, {
      address: at,
      'link address': at - delta,
      function: sym,
      length: len,
      memory: memHex,
      [diff.relocated ? 'image' : 'image (unrelocated)']: hexBytes(diff.image.subarray(off, off + Math.min(len, SHOW_BYTES))),
    });
  }
  if (runs.length > MAX_RUNS) {
    const bytes = runs.slice(MAX_RUNS).reduce((s, [, l]) => s + l, 0);
    report.add('high', `${what} differs from the image in ${runs.length - MAX_RUNS} more places (${bytes} bytes)`, { places: runs.length - MAX_RUNS, bytes });
  }
}

function hexBytes(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(' ');
}

// ---- the image's patch-site tables ----------------------------------------------------------

/**
 * Every place the kernel may rewrite in its own text, from the tables in the image (link-time
 * addresses). The tables' bounds come from the running kernel's symbols; their entries are
 * read from the image, not from memory, where a rootkit could edit them (and where the ones
 * in init data are gone).
 */
function patchSites(k: Kernel, image: KernelImage, delta: bigint): SiteKind[] {
  const kinds: SiteKind[] = [];
  interface Table {
    readonly start: LinkAddress;
    readonly bytes: Uint8Array;
    readonly dv: DataView;
  }
  const table = (startSym: string, endSym: string): Table | undefined => {
    const s = k.symbols.lookup(startSym);
    const e = k.symbols.lookup(endSym);
    if (s === undefined || e === undefined || e < s || e - s > 64n << 20n) return undefined;
    try {
      const bytes = imageBytes(image, s - delta, Number(e - s));
      return { start: linkNumber(s - delta), bytes, dv: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
    } catch (err) {
      k.warnings.warn(NAME, `${startSym}: ${guestDataError(err).message}`);
      return undefined;
    }
  };
  const add = (name: string, sites: Site[]): void => {
    if (sites.length > 0) kinds.push({ name, sites });
  };
  /** Entries of `size` bytes holding an s32 offset (relative to the field) at `field`. */
  const relative = (t: Table, size: number, field: number, len: (site: LinkAddress, entry: number) => number): Site[] => {
    const out: Site[] = [];
    for (let p = 0; p + size <= t.bytes.length; p += size) {
      const site = t.start + p + field + t.dv.getInt32(p + field, true);
      out.push({ start: site, len: len(site, p) });
    }
    return out;
  };
  /** An absolute pointer in a table (a 64-bit field holding a link-time address). */
  const pointer = (t: Table, p: number): LinkAddress => t.dv.getInt32(p + 4, true) * 4294967296 + t.dv.getUint32(p, true);
  const btfSize = (type: string, fallback: number): number => (k.btf.findType(type) ? k.btf.sizeof(type) : fallback);
  const btfOff = (type: string, member: string, fallback: number): number => (k.hasMember(type, member) ? k.offsetOf(type, member) : fallback);
  /** Length of the call/jmp/jcc at a retpoline or return-thunk site, from the image's own bytes. */
  const branchLen = (site: LinkAddress): number => {
    try {
      const b = imageBytes(image, linkBig(site), 2);
      if (b[0] === 0xe8 || b[0] === 0xe9) return 5;
      if (b[0] === 0x0f && (b[1]! & 0xf0) === 0x80) return 6;
    } catch (e) {
      guestDataError(e);
      /* outside the image: the longest */
    }
    return 6;
  };

  const alt = table('__alt_instructions', '__alt_instructions_end');
  if (alt) {
    const lenOff = btfOff('alt_instr', 'instrlen', 10);
    add('alternatives', relative(alt, btfSize('struct alt_instr', 12), btfOff('alt_instr', 'instr_offset', 0), (_s, p) => alt.bytes[p + lenOff]!));
  }
  const para = table('__parainstructions', '__parainstructions_end');
  if (para) {
    const size = btfSize('struct paravirt_patch_site', 16);
    const lenOff = btfOff('paravirt_patch_site', 'len', 9);
    const instrOff = btfOff('paravirt_patch_site', 'instr', 0);
    const sites: Site[] = [];
    for (let p = 0; p + size <= para.bytes.length; p += size) sites.push({ start: pointer(para, p + instrOff), len: para.bytes[p + lenOff]! });
    add('paravirt', sites);
  }
  const jump = table('__start___jump_table', '__stop___jump_table');
  // A jump label is a 2- or 5-byte NOP or JMP.
  if (jump) add('jump labels', relative(jump, btfSize('struct jump_entry', 16), btfOff('jump_entry', 'code', 0), () => 5));
  const calls = table('__start_static_call_sites', '__stop_static_call_sites');
  if (calls) add('static calls', relative(calls, btfSize('struct static_call_site', 8), btfOff('static_call_site', 'addr', 0), () => 5));
  const trampStart = k.symbols.lookup('__static_call_text_start');
  const trampEnd = k.symbols.lookup('__static_call_text_end');
  if (trampStart !== undefined && trampEnd !== undefined && trampEnd > trampStart) {
    add('static call trampolines', [{ start: linkNumber(trampStart - delta), len: Number(trampEnd - trampStart) }]);
  }
  const mcount = table('__start_mcount_loc', '__stop_mcount_loc');
  if (mcount) {
    const sites: Site[] = [];
    for (let p = 0; p + 8 <= mcount.bytes.length; p += 8) sites.push({ start: pointer(mcount, p), len: 5 });
    add('ftrace call sites', sites);
  }
  const retpolines = table('__retpoline_sites', '__retpoline_sites_end');
  if (retpolines) add('retpoline sites', relative(retpolines, 4, 0, branchLen));
  const returns = table('__return_sites', '__return_sites_end');
  if (returns) add('return thunk sites', relative(returns, 4, 0, branchLen));
  const callSites = table('__call_sites', '__call_sites_end');
  if (callSites) add('call depth sites', relative(callSites, 4, 0, () => 5));
  const seal = table('__ibt_endbr_seal', '__ibt_endbr_seal_end');
  if (seal) add('ENDBR seals', relative(seal, 4, 0, () => 4));
  const locks = table('__smp_locks', '__smp_locks_end');
  if (locks) add('LOCK prefixes', relative(locks, 4, 0, () => 1));
  // Runtime constants (6.11+, asm/runtime-const.h): immediates the kernel fills in at boot,
  // a pointer (8 bytes) or a shift count (1 byte), listed in one section per constant.
  const constants: Site[] = [];
  for (const sec of image.sections) {
    const kind = /^runtime_(ptr|shift)_/.exec(sec.name)?.[1];
    if (!kind || sec.nobits || sec.size > 1 << 20) continue;
    const t: Table = { start: linkNumber(sec.vaddr), bytes: image.elf.subarray(sec.offset, sec.offset + sec.size), dv: new DataView(image.elf.buffer, image.elf.byteOffset + sec.offset, sec.size) };
    constants.push(...relative(t, 4, 0, () => (kind === 'ptr' ? 8 : 1)));
  }
  add('runtime constants', constants);
  if (kinds.length === 0) throw new UsageError('this kernel names none of its patch-site tables (__alt_instructions…): its text cannot be compared');
  return kinds;
}
