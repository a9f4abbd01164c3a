import { GuestDataError, isVmlensError, UsageError } from '../../util/errors.ts';
import type { Warnings } from '../../util/warnings.ts';
import { findAddresses, type DecodedAddresses, type Neighbours } from './addresses.ts';
import { Kallsyms } from './kallsyms.ts';
import { decodeNames, findNames, type DecodedNames, type NamesTable } from './names.ts';
import { DEFAULT_WORK_BUDGET, hex, ImageWindow, PAGE_SIZE, TABLE_ALIGN, vaFromHalves, WorkBudget, type KernelImageReader, type VaRange } from './reader.ts';
import { findTokenTables, type TokenTable } from './tokens.ts';

export interface LoadKallsymsOptions {
  /** Where to record what was odd but survivable (names cut short, unusual type letters). */
  readonly warnings?: Warnings;
  /** Search steps allowed before giving up (see WorkBudget); the default suits any real kernel. */
  readonly workBudget?: number;
}

const WHERE = 'kallsyms';
/** The kernel text mapping is at most 1 GiB (KERNEL_IMAGE_SIZE): a larger range is a mistake. */
const MAX_RANGE = 1n << 30n;
/**
 * Window sizes, each side of the token table, tried in turn. All kallsyms tables are emitted
 * together from one generated file, so they lie next to each other: Debian's 6.12 kernel, with
 * 163 000 symbols, has them within 2.2 MiB below its token table and 1.2 MiB above.
 */
const WINDOWS = [3 << 20, 12 << 20, 48 << 20];
/** Token tables to try before giving up: real kernels have one. */
const MAX_ANCHORS = 8;
const BANNER_PREFIX = 'Linux version ';

/**
 * Find and decode the kernel's symbol table in `range` (the kernel image: text and rodata at
 * least). Nothing is assumed about the order of the tables in memory; each is found by its own
 * structure and checked against the others. Throws GuestDataError when no consistent table is
 * found; never reads outside `range`.
 */
export function loadKallsyms(reader: KernelImageReader, range: VaRange, opts: LoadKallsymsOptions = {}): Kallsyms {
  if (range.end <= range.start) throw new UsageError(`empty kernel image range ${hex(range.start)}-${hex(range.end)}`);
  if (range.end - range.start > MAX_RANGE) {
    throw new UsageError(`kernel image range ${hex(range.start)}-${hex(range.end)} is larger than the 1 GiB kernel mapping`);
  }
  let anchors = 0;
  const budget = new WorkBudget(opts.workBudget ?? DEFAULT_WORK_BUDGET);
  for (const tokens of findTokenTables(reader, range, budget)) {
    if (++anchors > MAX_ANCHORS) break;
    const found = decodeAround(reader, range, tokens, budget, opts.warnings);
    if (found) return found;
    opts.warnings?.warn(WHERE, `a token table at ${hex(tokens.tableVa)} has no symbol table around it`);
  }
  throw new GuestDataError(`kallsyms: no symbol table found in ${hex(range.start)}-${hex(range.end)}`);
}

/** Read windows of growing size around the token table until every table is found in one. */
function decodeAround(
  reader: KernelImageReader,
  range: VaRange,
  tokens: TokenTable,
  budget: WorkBudget,
  warnings: Warnings | undefined,
): Kallsyms | undefined {
  let lastSize = -1;
  for (const side of WINDOWS) {
    const win = readWindow(reader, range, tokens.indexVa, side);
    if (win.length === lastSize) break; // the window already covers the whole range
    lastSize = win.length;
    const names = findNames(win, tokens, budget);
    if (!names) continue;
    const decoded = decodeNames(win, names, tokens);
    const near = tableNeighbourhood(win, names, tokens);
    const found = findAddresses(near, names.count, range, plausibleAddresses(reader, range, decoded.names), budget, neighbours(near, names, tokens));
    if (!found) continue;
    if (decoded.truncated > 0) warnings?.warn(WHERE, `${decoded.truncated} symbol names longer than the kernel allows were cut`);
    checkTypes(decoded, warnings);
    return new Kallsyms(decoded.names, decoded.types, found.addrs.hi, found.addrs.lo, {
      tokenTableVa: tokens.tableVa,
      tokenIndexVa: tokens.indexVa,
      namesVa: names.namesVa,
      namesSize: names.namesSize,
      numSymsVa: names.numSymsVa,
      markersVa: names.markersVa,
      markerWidth: names.markerWidth,
      bigLengths: names.bigLengths,
      addresses: found.table,
    });
  }
  return undefined;
}

/**
 * Where the address table can be, once the names and tokens are known: all kallsyms tables
 * come from one generated assembly file, so they sit in one contiguous block. The block spans
 * the tables found so far plus, at most, the address table (8 bytes a symbol at most) and
 * kallsyms_seqs_of_names (3 bytes a symbol, 4 in the newest kernels) on either side.
 */
function tableNeighbourhood(win: ImageWindow, names: NamesTable, tokens: TokenTable): ImageWindow {
  const offsets = [win.offsetOf(names.namesVa), win.offsetOf(tokens.tableVa), win.offsetOf(tokens.indexVa), win.offsetOf(names.markersVa)];
  const low = Math.min(...offsets);
  const high = Math.max(win.offsetOf(names.namesVa) + names.namesSize, win.offsetOf(tokens.indexVa) + 512, ...offsets);
  const reach = names.count * (8 + 4) + 2 * PAGE_SIZE;
  return win.slice(low - reach, high + reach);
}

/** Where the tables found so far start and end, as offsets in `win`. */
function neighbours(win: ImageWindow, names: NamesTable, tokens: TokenTable): Neighbours {
  const at = (va: bigint) => Number(va - win.base);
  const starts = [at(names.namesVa), at(names.numSymsVa), at(names.markersVa), at(tokens.tableVa), at(tokens.indexVa)];
  const ends = [
    at(names.namesVa) + names.namesSize,
    at(names.numSymsVa) + 4,
    at(names.markersVa) + Math.ceil(names.count / 256) * names.markerWidth,
    at(tokens.tableVa) + tokens.size,
    at(tokens.indexVa) + 2 * 256,
  ];
  return { starts, ends };
}

/** [anchor - side, anchor + side] clipped to the range, its start 8-aligned (as the tables are). */
function readWindow(reader: KernelImageReader, range: VaRange, anchor: bigint, side: number): ImageWindow {
  const align = BigInt(TABLE_ALIGN);
  let start = anchor - BigInt(side);
  if (start < range.start) start = range.start;
  start -= start % align;
  if (start < range.start) start += align;
  let end = anchor + BigInt(side);
  if (end > range.end) end = range.end;
  return ImageWindow.read(reader, start, Number(end - start));
}

/**
 * What an address table must satisfy beyond its shape, for the names it goes with: _text lies
 * in the image, on a 2 MiB boundary (on x86-64 CONFIG_PHYSICAL_ALIGN is a multiple of 2 MiB,
 * and KASLR moves the kernel in such steps), and linux_banner, when there is one, is the banner.
 */
function plausibleAddresses(reader: KernelImageReader, range: VaRange, names: readonly string[]): (a: DecodedAddresses) => boolean {
  const text = names.indexOf('_text');
  const banner = names.indexOf('linux_banner');
  return (a) => {
    if (text >= 0) {
      const va = vaFromHalves(a.hi[text]!, a.lo[text]!);
      if (va < range.start || va >= range.end || (a.lo[text]! & (IMAGE_ALIGN - 1)) !== 0) return false;
    }
    return banner < 0 || bannerAt(reader, a, banner);
  };
}

const IMAGE_ALIGN = 2 << 20;

/** Whether linux_banner, decoded with this address table, points at the banner. */
function bannerAt(reader: KernelImageReader, a: DecodedAddresses, i: number): boolean {
  const buf = new Uint8Array(BANNER_PREFIX.length);
  try {
    reader.read(vaFromHalves(a.hi[i]!, a.lo[i]!), buf);
  } catch (e) {
    if (isVmlensError(e)) return false;
    throw e;
  }
  return Buffer.from(buf).toString('latin1') === BANNER_PREFIX;
}

/** Type letters are letters by construction of the walk; count the ones nm never prints. */
function checkTypes(decoded: DecodedNames, warnings: Warnings | undefined): void {
  let odd = 0;
  const types = decoded.types;
  for (let i = 0; i < types.length; i++) odd += 1 - KNOWN_TYPES[types[i]!]!;
  if (odd > 0) warnings?.warn(WHERE, `${odd} symbols have a type letter nm does not use`);
}

/** nm's type letters (binutils nm(1)), as a lookup table by character code. */
const KNOWN_TYPES = new Uint8Array(256);
for (const c of 'AaBbCcDdGgiINnpRrSsTtUuVvWw') KNOWN_TYPES[c.charCodeAt(0)] = 1;
