import { GuestDataError, isVmlensError, UsageError } from '../../util/errors.ts';
import type { Warnings } from '../../util/warnings.ts';
import { findAddresses, type DecodedAddresses } from './addresses.ts';
import { Kallsyms } from './kallsyms.ts';
import { decodeNames, findNames, type DecodedNames, type NamesTable } from './names.ts';
import { hex, ImageWindow, PAGE_SIZE, readTolerant, vaFromHalves, type KernelImageReader, type VaRange } from './reader.ts';
import { findTokenTables, type TokenTable } from './tokens.ts';

export interface LoadKallsymsOptions {
  /** Where to record what was odd but survivable (a count inferred, names cut short). */
  readonly warnings?: Warnings;
}

const WHERE = 'kallsyms';
/** The kernel text mapping is at most 1 GiB (KERNEL_IMAGE_SIZE): a larger range is a mistake. */
const MAX_RANGE = 1n << 30n;
/**
 * Window sizes, each side of the token table, tried in turn. All kallsyms tables are emitted
 * together from one generated file, so they lie next to each other; a kernel with 150 000
 * symbols needs about 3 MiB in all.
 */
const WINDOWS = [4 << 20, 16 << 20, 64 << 20];
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
  for (const tokens of findTokenTables(reader, range)) {
    if (++anchors > MAX_ANCHORS) break;
    const found = decodeAround(reader, range, tokens, opts.warnings);
    if (found) return found;
    opts.warnings?.warn(WHERE, `a token table at ${hex(tokens.tableVa)} has no symbol table around it`);
  }
  throw new GuestDataError(`kallsyms: no symbol table found in ${hex(range.start)}-${hex(range.end)}`);
}

/** Read windows of growing size around the token table until every table is found in one. */
function decodeAround(reader: KernelImageReader, range: VaRange, tokens: TokenTable, warnings: Warnings | undefined): Kallsyms | undefined {
  let lastSize = -1;
  for (const side of WINDOWS) {
    const win = readWindow(reader, range, tokens.indexVa, side);
    if (win.length === lastSize) break; // the window already covers the whole range
    lastSize = win.length;
    const names = findNames(win, tokens);
    if (!names) continue;
    const decoded = decodeNames(win, names, tokens);
    const banner = decoded.names.indexOf('linux_banner');
    const found = findAddresses(tableNeighbourhood(win, names, tokens), names.count, range, (a) => banner < 0 || bannerAt(reader, a, banner));
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
  const offsets = [win.offsetOf(names.namesVa), win.offsetOf(tokens.tableVa), win.offsetOf(tokens.indexVa)];
  if (names.markersVa !== undefined) offsets.push(win.offsetOf(names.markersVa));
  const low = Math.min(...offsets);
  const high = Math.max(win.offsetOf(names.namesVa) + names.namesSize, win.offsetOf(tokens.indexVa) + 512, ...offsets);
  const reach = names.count * (8 + 4) + 2 * PAGE_SIZE;
  return win.slice(low - reach, high + reach);
}

/** [anchor - side, anchor + side] clipped to the range, page-aligned. */
function readWindow(reader: KernelImageReader, range: VaRange, anchor: bigint, side: number): ImageWindow {
  const page = BigInt(PAGE_SIZE);
  let start = anchor - BigInt(side);
  if (start < range.start) start = range.start;
  start -= start % page;
  let end = anchor + BigInt(side);
  if (end > range.end) end = range.end;
  const bytes = new Uint8Array(Number(end - start));
  const missing = readTolerant(reader, start, bytes);
  return new ImageWindow(start, bytes, missing);
}

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
  for (const t of decoded.types) if (!KNOWN_TYPES.has(t)) odd++;
  if (odd > 0) warnings?.warn(WHERE, `${odd} symbols have a type letter nm does not use`);
}

/** nm's type letters (binutils nm(1)). */
const KNOWN_TYPES = new Set(Array.from('AaBbCcDdGgiINnpRrSsTtUuVvWw', (c) => c.charCodeAt(0)));
