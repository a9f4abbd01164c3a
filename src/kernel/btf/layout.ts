/**
 * Struct layout in the manner of pahole, for `vmlens type STRUCT`: every member with its
 * offset and size, bitfields with their bit positions, holes, tail padding and cacheline
 * boundaries. `structLayout` gives a JSON-able description; `formatLayout` renders it as lines.
 * Anonymous structs and unions (and members of anonymous struct/union type) are expanded in
 * place, as the kernel source reads.
 */
import { UsageError, isVmlensError } from '../../util/errors.ts';
import type { Btf } from './index.ts';

export const CACHELINE_SIZE = 64;
/** Deepest nesting expanded and most entries listed: bounds the work on hostile BTF. */
const MAX_DEPTH = 16;
const MAX_ENTRIES = 1 << 14;

export interface LayoutMember {
  readonly entry: 'member';
  /** '' for an anonymous struct/union member. */
  readonly name: string;
  readonly typeId: number;
  /** The C type, e.g. `struct list_head *`. */
  readonly type: string;
  /** The C declaration, e.g. `char comm[16]` or `unsigned int flags:1`. */
  readonly declaration: string;
  /** Offset from the start of the outermost struct, in bits. */
  readonly bitOffset: number;
  /** For bitfields: width in bits (0 otherwise). */
  readonly bitfieldSize: number;
  /**
   * Byte offset from the start of the outermost struct; for a bitfield, the offset of its
   * storage unit (an aligned unit of the field's type size), as pahole shows it.
   */
  readonly offset: number;
  /** For bitfields: the first bit inside the storage unit. */
  readonly bitInUnit?: number;
  /** Size in bytes (a bitfield: its storage unit); 0 when the type has no size. */
  readonly size: number;
  /** The expanded definition when the member's type is an anonymous struct or union. */
  readonly nested?: NestedLayout;
}

/** Unused space before the next member (or, at the end, tail padding is reported separately). */
export interface LayoutHole {
  readonly entry: 'hole';
  /** Absolute bit offset where the hole starts. */
  readonly bitOffset: number;
  readonly bits: number;
}

export type LayoutEntry = LayoutMember | LayoutHole;

export interface NestedLayout {
  readonly kind: 'struct' | 'union';
  readonly size: number;
  readonly entries: readonly LayoutEntry[];
}

export interface StructLayout extends NestedLayout {
  readonly id: number;
  /** Type name without tag; '' for an anonymous type. */
  readonly name: string;
  readonly cachelines: number;
  /** Direct members of the outer type. */
  readonly members: number;
  readonly holes: number;
  /** Sum of all holes (bits), nested ones included. */
  readonly holeBits: number;
  /** Unused bits between the end of the last member and the end of the type. */
  readonly paddingBits: number;
  /** Set when the layout was cut short (hostile nesting); entries are then incomplete. */
  readonly truncated: boolean;
}

interface Walk {
  entries: number;
  holes: number;
  holeBits: number;
  truncated: boolean;
}

/** The layout of a struct or union given by id (typedefs resolved) or name (`struct x`, `x`). */
export function structLayout(btf: Btf, type: number | string): StructLayout {
  let id: number | undefined = typeof type === 'number' ? type : btf.findTypeId(type);
  if (id === undefined) throw new UsageError(`no type '${type}' in BTF`);
  id = btf.resolve(id);
  const t = btf.typeById(id);
  if (t.kind !== 'struct' && t.kind !== 'union') throw new UsageError(`${btf.typeName(id)} is not a struct or union`);
  const walk: Walk = { entries: 0, holes: 0, holeBits: 0, truncated: false };
  const { entries, endBits } = layoutOf(btf, id, 0, 0, walk);
  return {
    id,
    kind: t.kind,
    name: t.name,
    size: t.size,
    cachelines: Math.ceil(t.size / CACHELINE_SIZE),
    members: t.members.length,
    entries,
    holes: walk.holes,
    holeBits: walk.holeBits,
    paddingBits: Math.max(0, t.size * 8 - endBits),
    truncated: walk.truncated,
  };
}

function sizeOrZero(btf: Btf, typeId: number): number {
  try {
    return btf.sizeof(typeId);
  } catch (e) {
    if (isVmlensError(e)) return 0;
    throw e;
  }
}

/** Entries of one struct/union level; `endBits` is the relative end of its furthest member. */
function layoutOf(btf: Btf, id: number, baseBits: number, depth: number, walk: Walk): { entries: LayoutEntry[]; endBits: number } {
  const t = btf.typeById(id);
  if (t.kind !== 'struct' && t.kind !== 'union') return { entries: [], endBits: 0 };
  const isUnion = t.kind === 'union';
  const entries: LayoutEntry[] = [];
  let endBits = 0;
  for (const m of t.members) {
    if (++walk.entries > MAX_ENTRIES) {
      walk.truncated = true;
      break;
    }
    const size = sizeOrZero(btf, m.typeId);
    if (!isUnion && m.bitOffset > endBits) {
      entries.push({ entry: 'hole', bitOffset: baseBits + endBits, bits: m.bitOffset - endBits });
      walk.holes++;
      walk.holeBits += m.bitOffset - endBits;
    }
    const abs = baseBits + m.bitOffset;
    let offset = Math.floor(abs / 8);
    let bitInUnit: number | undefined;
    if (m.bitfieldSize !== 0 && size > 0) {
      const unitBits = size * 8;
      offset = Math.floor(abs / unitBits) * size;
      bitInUnit = abs - offset * 8;
    }
    const inner = btf.resolved(m.typeId);
    let nested: NestedLayout | undefined;
    if ((inner.kind === 'struct' || inner.kind === 'union') && inner.name === '') {
      if (depth + 1 >= MAX_DEPTH) walk.truncated = true;
      else nested = { kind: inner.kind, size: inner.size, entries: layoutOf(btf, inner.id, abs, depth + 1, walk).entries };
    }
    const declared = nested ? `${nested.kind} {...} ${m.name}`.trimEnd() : btf.declare(m.typeId, m.name);
    entries.push({
      entry: 'member',
      name: m.name,
      typeId: m.typeId,
      type: btf.typeName(m.typeId),
      declaration: m.bitfieldSize ? `${declared}:${m.bitfieldSize}` : declared,
      bitOffset: abs,
      bitfieldSize: m.bitfieldSize,
      offset,
      ...(bitInUnit === undefined ? {} : { bitInUnit }),
      size,
      ...(nested ? { nested } : {}),
    });
    const end = m.bitOffset + (m.bitfieldSize || size * 8);
    if (end > endBits) endBits = end;
  }
  return { entries, endBits };
}

// ---- text ------------------------------------------------------------------------------------

/** Visual column where the offset/size comments start, tabs counted as 8 columns. */
const COMMENT_COLUMN = 56;

function bitsText(bits: number): string {
  const bytes = Math.floor(bits / 8);
  const rest = bits % 8;
  if (rest === 0) return `${bytes} byte${bytes === 1 ? '' : 's'}`;
  if (bytes === 0) return `${rest} bit${rest === 1 ? '' : 's'}`;
  return `${bytes} byte${bytes === 1 ? '' : 's'} ${rest} bit${rest === 1 ? '' : 's'}`;
}

function visualWidth(text: string): number {
  let tabs = 0;
  while (text.charCodeAt(tabs) === 9) tabs++;
  return text.length + tabs * 7;
}

function withComment(text: string, comment: string): string {
  const width = visualWidth(text);
  const pad = width < COMMENT_COLUMN ? ' '.repeat(COMMENT_COLUMN - width) : ' ';
  return `${text}${pad}/* ${comment} */`;
}

function place(m: LayoutMember): string {
  const off = String(m.offset).padStart(5);
  const size = String(m.size).padStart(5);
  return m.bitInUnit === undefined ? `${off} ${size}` : `${off}:${String(m.bitInUnit).padStart(2)} ${size}`;
}

/** pahole-like text: one string per line, tabs for indentation. */
export function formatLayout(layout: StructLayout): string[] {
  const lines: string[] = [];
  const head = layout.name ? `${layout.kind} ${layout.name}` : layout.kind;
  lines.push(`${head} {`);
  let nextBoundary = CACHELINE_SIZE;
  const boundary = (offset: number, indent: string): void => {
    if (offset < nextBoundary) return;
    const line = Math.floor(offset / CACHELINE_SIZE);
    lines.push(`${indent}/* --- cacheline ${line} boundary (${line * CACHELINE_SIZE} bytes) --- */`);
    nextBoundary = (line + 1) * CACHELINE_SIZE;
  };
  const emit = (entries: readonly LayoutEntry[], indent: string): void => {
    for (const e of entries) {
      if (e.entry === 'hole') {
        lines.push(`${indent}/* XXX ${bitsText(e.bits)} hole, try to pack */`);
        continue;
      }
      boundary(e.offset, indent);
      if (e.nested) {
        lines.push(`${indent}${e.nested.kind} {`);
        emit(e.nested.entries, `${indent}\t`);
        lines.push(withComment(`${indent}}${e.name ? ` ${e.name}` : ''};`, place(e)));
      } else {
        lines.push(withComment(`${indent}${e.declaration};`, place(e)));
      }
    }
  };
  emit(layout.entries, '\t');
  if (layout.truncated) lines.push('\t/* ... (layout truncated: nesting too deep or too many members) */');
  lines.push('');
  lines.push(`\t/* size: ${layout.size}, cachelines: ${layout.cachelines}, members: ${layout.members} */`);
  if (layout.holes > 0) lines.push(`\t/* holes: ${layout.holes}, sum holes: ${bitsText(layout.holeBits)} */`);
  if (layout.paddingBits > 0) lines.push(`\t/* padding: ${bitsText(layout.paddingBits)} */`);
  const last = layout.size % CACHELINE_SIZE;
  if (last !== 0 && layout.size > 0) lines.push(`\t/* last cacheline: ${last} bytes */`);
  lines.push('};');
  return lines;
}
