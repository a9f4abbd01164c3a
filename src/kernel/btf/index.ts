/**
 * The kernel's own type information, asked the way kernel code is written:
 * `btf.memberOffset('task_struct', 'tasks')`, `btf.sizeof(btf.findType('struct list_head')!.id)`,
 * `btf.findFunc('vfs_read')`. Built on a validated BtfTable (parse.ts); everything beyond the
 * table is computed on first use and cached.
 */
import { GuestDataError, UsageError } from '../../util/errors.ts';
import { declaration } from './declaration.ts';
import { NameGroup, NameIndex } from './names.ts';
import { BtfTable } from './parse.ts';
import {
  BtfKind,
  KIND_NAMES,
  type BtfFuncInfo,
  type BtfKindName,
  type BtfMemberInfo,
  type BtfType,
  type BtfVarInfo,
} from './types.ts';

export * from './types.ts';
export { BtfTable, parseBtf, parseBtfHeader, type BtfHeader } from './parse.ts';
export { extractBtfFromElf, btfBlobFromFile, isElf } from './elf.ts';
export { structLayout, formatLayout, CACHELINE_SIZE, type StructLayout, type NestedLayout, type LayoutEntry, type LayoutMember, type LayoutHole } from './layout.ts';

/** Local alias: inside hot loops a plain property load, where an imported binding may cost a getter call. */
const K = BtfKind;

/** Longest typedef/qualifier chain followed (the kernel's own verifier uses the same depth). */
const MAX_RESOLVE_DEPTH = 32;
/** Deepest nesting of anonymous structs/unions or of arrays that is followed. */
const MAX_NESTING = 32;
/**
 * Most members visited while flattening one struct's anonymous members: far above any real
 * struct (task_struct has a few hundred) and far below what nested hostile vlens could demand.
 */
const MAX_FLATTEN_VISITS = 1 << 16;

/** Bound on the struct-name cache: names come from code, but also from users. */
const NAME_CACHE_LIMIT = 4096;

const LONG_INT = new TextEncoder().encode('long int');
const LONG_UNSIGNED_INT = new TextEncoder().encode('long unsigned int');

/** Prefixes a name may carry, as in C: `struct task_struct`. */
const TAGGED_NAME = /^\s*(struct|union|enum|typedef)\s+(\S+)\s*$/;

/** Kinds a bare name is looked up among, best first: definitions before forward declarations. */
const TYPE_PREFERENCE: readonly BtfKindName[] = ['struct', 'union', 'typedef', 'enum', 'enum64', 'int', 'float', 'fwd'];

interface MemberTable {
  readonly byName: Map<string, BtfMemberInfo>;
  readonly list: readonly BtfMemberInfo[];
}

export class Btf {
  /** Valid type ids are 0 .. typeCount-1 (base ids included for split BTF). */
  readonly typeCount: number;
  /** First id this BTF itself describes (1, or the base's typeCount for split BTF). */
  readonly firstId: number;

  private readonly names: NameIndex;
  private readonly memberTables = new Map<number, MemberTable>();
  /** Struct names already looked up by member()/memberOffset(): the typed layer asks the same few often. */
  private readonly compositeByName = new Map<string, number>();
  private enumerators: Map<string, number> | undefined;
  private varPlaces: Map<number, { section: string; offset: number; size: number }> | undefined;
  private pointerSize = 0;

  private constructor(readonly table: BtfTable, readonly base: Btf | undefined) {
    this.typeCount = table.typeCount;
    this.firstId = table.firstId;
    this.names = new NameIndex(table);
  }

  /**
   * Parse a BTF blob. With `base` (the vmlinux Btf), `bytes` is a module's split BTF.
   * Throws GuestDataError if the blob is corrupt.
   */
  static parse(bytes: Uint8Array, base?: Btf): Btf {
    return new Btf(new BtfTable(bytes, base?.table), base);
  }

  // ---- types by id -------------------------------------------------------------------------

  /** The decoded type. Id 0 is `void`. Throws UsageError for an id out of range. */
  typeById(id: number): BtfType {
    return this.table.typeById(id);
  }

  kindOf(id: number): BtfKindName {
    this.table.checkId(id);
    return KIND_NAMES[this.table.kindOf(id)]!;
  }

  /** All type ids of one kind (or all), base ids included, in id order. */
  *ids(kind?: BtfKindName): Generator<number> {
    const want = kind === undefined ? -1 : KIND_NAMES.indexOf(kind);
    for (let id = 1; id < this.typeCount; id++) if (want < 0 || this.table.kindOf(id) === want) yield id;
  }

  // ---- lookup by name ----------------------------------------------------------------------

  /**
   * A type by name: `task_struct`, `struct task_struct`, `union thread_union`, `enum pid_type`,
   * `typedef pid_t` or, with `kind`, any kind (`'func'`, `'var'`…). A bare name prefers a
   * definition (struct, union, typedef, enum, int…) over a forward declaration.
   */
  findType(name: string, kind?: BtfKindName): BtfType | undefined {
    const id = this.findTypeId(name, kind);
    return id === undefined ? undefined : this.table.typeById(id);
  }

  /** Like findType, the id only. */
  findTypeId(name: string, kind?: BtfKindName): number | undefined {
    const query = parseTypeName(name, kind);
    const candidates = this.idsNamed(query.bare, groupOfKinds(query.kinds));
    for (const k of query.kinds) {
      const kn = KIND_NAMES.indexOf(k);
      for (const id of candidates) if (this.matches(id, kn, query)) return id;
    }
    return undefined;
  }

  /** Every type id the name (and kind) could mean, in id order, own ids before base ids. */
  findTypeIds(name: string, kind?: BtfKindName): number[] {
    const query = parseTypeName(name, kind);
    const kindNumbers = query.kinds.map((k) => KIND_NAMES.indexOf(k));
    return this.idsNamed(query.bare, groupOfKinds(query.kinds)).filter((id) => kindNumbers.some((kn) => this.matches(id, kn, query)));
  }

  private matches(id: number, kindNumber: number, query: TypeNameQuery): boolean {
    if (this.table.kindOf(id) !== kindNumber) return false;
    // `struct foo` known only by a forward declaration: that declaration must say struct too.
    if (kindNumber === K.FWD && query.fwdOf !== undefined) return (this.table.infoOf(id) >>> 31 === 1) === (query.fwdOf === 'union');
    return true;
  }

  private idsNamed(name: string, group: NameGroup): number[] {
    const own = this.names.ids(group, name);
    return this.base ? own.concat(this.base.idsNamed(name, group)) : own;
  }

  private firstNamed(name: string, group: NameGroup): number | undefined {
    return this.names.first(group, name) ?? this.base?.firstNamed(name, group);
  }

  // ---- resolving and sizes -----------------------------------------------------------------

  /** Skip typedef, const, volatile, restrict and type tags: the id of the underlying type. */
  resolve(id: number): number {
    const table = this.table;
    table.checkId(id);
    const start = id;
    for (let depth = 0; depth <= MAX_RESOLVE_DEPTH; depth++) {
      const k = table.kindOf(id);
      if (k !== K.TYPEDEF && k !== K.CONST && k !== K.VOLATILE && k !== K.RESTRICT && k !== K.TYPE_TAG) return id;
      id = table.sizeOrTypeOf(id);
    }
    throw new GuestDataError(`BTF: type ${start}: typedef/qualifier chain longer than ${MAX_RESOLVE_DEPTH} (a loop?)`);
  }

  /** The resolved type itself. */
  resolved(id: number): BtfType {
    return this.table.typeById(this.resolve(id));
  }

  /**
   * Size in bytes of a type (by id or name). Pointers are the target's pointer size.
   * Throws UsageError for types without a size (void, functions, forward declarations).
   */
  sizeof(type: number | string): number {
    let id = this.idOf(type);
    const start = id;
    let count = 1;
    for (let depth = 0; depth <= MAX_NESTING; depth++) {
      id = this.resolve(id);
      const k = this.table.kindOf(id);
      switch (k) {
        case K.INT:
        case K.ENUM:
        case K.ENUM64:
        case K.STRUCT:
        case K.UNION:
        case K.FLOAT:
        case K.DATASEC:
          return checkedSize(count * this.table.sizeOrTypeOf(id), start);
        case K.PTR:
          return checkedSize(count * this.ptrSize(), start);
        case K.ARRAY: {
          const a = this.table.typeById(id);
          if (a.kind !== 'array') break;
          count *= a.nelems;
          id = a.typeId;
          continue;
        }
        case K.VAR:
          id = this.table.sizeOrTypeOf(id);
          continue;
        default:
          throw new UsageError(`${this.typeName(start)} has no size`);
      }
    }
    throw new GuestDataError(`BTF: type ${start}: arrays nested deeper than ${MAX_NESTING}`);
  }

  /**
   * Pointer size of the target, from the size of its `long` (BTF records no pointer size);
   * 8 when the BTF has no `long`.
   */
  ptrSize(): number {
    if (this.pointerSize) return this.pointerSize;
    if (this.base) return (this.pointerSize = this.base.ptrSize());
    let size = 8;
    const table = this.table;
    for (let id = table.firstId; id < table.typeCount; id++) {
      if (table.kindOf(id) !== K.INT) continue;
      const off = table.nameOffOf(id);
      if (table.strEquals(off, LONG_INT) || table.strEquals(off, LONG_UNSIGNED_INT)) {
        const s = table.sizeOrTypeOf(id);
        if (s === 4 || s === 8) size = s;
        break;
      }
    }
    return (this.pointerSize = size);
  }

  // ---- members -----------------------------------------------------------------------------

  /**
   * A member of a struct or union (by id — typedefs are resolved — or by name), including
   * members reached through anonymous structs and unions; `bitOffset` then counts from the
   * start of the outer type. A dotted path (`se.vruntime`) descends through embedded
   * (not pointed-to) structs. Undefined when there is no such member.
   */
  member(struct: number | string, name: string): BtfMemberInfo | undefined {
    const id = this.compositeId(struct);
    if (name.indexOf('.') < 0) return this.memberTable(id).byName.get(name);
    let cur = id;
    let bits = 0;
    let found: BtfMemberInfo | undefined;
    const parts = name.split('.');
    for (let i = 0; i < parts.length; i++) {
      if (i > 0) {
        const next = this.resolve(found!.typeId);
        const k = this.table.kindOf(next);
        if (k !== K.STRUCT && k !== K.UNION) return undefined;
        cur = next;
      }
      found = this.memberTable(cur).byName.get(parts[i]!);
      if (!found) return undefined;
      bits += found.bitOffset;
    }
    return { name, typeId: found!.typeId, bitOffset: bits, bitfieldSize: found!.bitfieldSize };
  }

  /** All named members of a struct/union, anonymous members flattened, in declaration order. */
  members(struct: number | string): readonly BtfMemberInfo[] {
    return this.memberTable(this.compositeId(struct)).list;
  }

  /** Byte offset of a member (or dotted path) — throws UsageError if absent or a bitfield. */
  memberOffset(struct: number | string, name: string): number {
    const m = this.member(struct, name);
    if (!m) throw new UsageError(`${this.describe(struct)} has no member '${name}'`);
    if (m.bitfieldSize !== 0 || m.bitOffset % 8 !== 0) throw new UsageError(`${this.describe(struct)} member '${name}' is a bitfield (bit offset ${m.bitOffset})`);
    return m.bitOffset / 8;
  }

  private memberTable(id: number): MemberTable {
    const have = this.memberTables.get(id);
    if (have) return have;
    const byName = new Map<string, BtfMemberInfo>();
    const list: BtfMemberInfo[] = [];
    let visits = 0;
    const flatten = (compositeId: number, baseBits: number, depth: number): void => {
      const t = this.table.typeById(compositeId);
      if (t.kind !== 'struct' && t.kind !== 'union') return;
      for (const m of t.members) {
        if (++visits > MAX_FLATTEN_VISITS) throw new GuestDataError(`BTF: ${this.typeName(id)}: more than ${MAX_FLATTEN_VISITS} members through anonymous members`);
        if (m.name === '') {
          const inner = this.resolve(m.typeId);
          const k = this.table.kindOf(inner);
          if (k === K.STRUCT || k === K.UNION) {
            if (depth >= MAX_NESTING) throw new GuestDataError(`BTF: ${this.typeName(id)}: anonymous members nested deeper than ${MAX_NESTING}`);
            flatten(inner, baseBits + m.bitOffset, depth + 1);
          }
          continue;
        }
        if (byName.has(m.name)) continue;
        const info: BtfMemberInfo = Object.freeze({ name: m.name, typeId: m.typeId, bitOffset: baseBits + m.bitOffset, bitfieldSize: m.bitfieldSize });
        byName.set(m.name, info);
        list.push(info);
      }
    };
    flatten(id, 0, 0);
    const table: MemberTable = { byName, list };
    this.memberTables.set(id, table);
    return table;
  }

  /** A struct/union id from an id (typedefs resolved) or a name; UsageError otherwise. */
  private compositeId(struct: number | string): number {
    let id: number;
    if (typeof struct === 'number') id = this.resolve(struct);
    else {
      const known = this.compositeByName.get(struct);
      if (known !== undefined) return known;
      const found = this.findTypeId(struct);
      if (found === undefined) throw new UsageError(`no type '${struct}' in BTF`);
      id = this.resolve(found);
    }
    const k = this.table.kindOf(id);
    if (k !== K.STRUCT && k !== K.UNION) throw new UsageError(`${this.describe(struct)} is not a struct or union (it is ${KIND_NAMES[k]})`);
    if (typeof struct === 'string') {
      if (this.compositeByName.size >= NAME_CACHE_LIMIT) this.compositeByName.clear();
      this.compositeByName.set(struct, id);
    }
    return id;
  }

  private idOf(type: number | string): number {
    if (typeof type === 'number') {
      this.table.checkId(type);
      return type;
    }
    const id = this.findTypeId(type);
    if (id === undefined) throw new UsageError(`no type '${type}' in BTF`);
    return id;
  }

  private describe(type: number | string): string {
    return typeof type === 'string' ? `'${type}'` : this.typeName(type);
  }

  // ---- functions, variables, enumerators ---------------------------------------------------

  /** A FUNC by name, with its prototype unfolded; the first one if several share the name. */
  findFunc(name: string): BtfFuncInfo | undefined {
    const id = this.firstNamed(name, NameGroup.FUNCS);
    return id === undefined ? undefined : this.funcInfo(id);
  }

  /** Every FUNC with this name (static functions of different files may share one). */
  findFuncs(name: string): BtfFuncInfo[] {
    return this.idsNamed(name, NameGroup.FUNCS).map((id) => this.funcInfo(id));
  }

  private funcInfo(id: number): BtfFuncInfo {
    const f = this.table.typeById(id);
    if (f.kind !== 'func') throw new GuestDataError(`BTF: type ${id} is not a function`);
    const p = this.table.typeById(f.typeId);
    if (p.kind !== 'func_proto') throw new GuestDataError(`BTF: function '${f.name}' (type ${id}) has a ${p.kind} instead of a prototype`);
    return { id, name: f.name, linkage: f.linkage, protoId: p.id, returnTypeId: p.returnTypeId, params: p.params, variadic: p.variadic };
  }

  /**
   * A VAR by name, with its section and offset when a DATASEC lists it (vmlinux BTF lists the
   * per-CPU variables of `.data..percpu`).
   */
  findVar(name: string): BtfVarInfo | undefined {
    const id = this.firstNamed(name, NameGroup.VARS);
    if (id === undefined) return undefined;
    const v = this.table.typeById(id);
    if (v.kind !== 'var') return undefined;
    const place = this.varPlace(id);
    return place ? { id, name: v.name, typeId: v.typeId, linkage: v.linkage, ...place } : { id, name: v.name, typeId: v.typeId, linkage: v.linkage };
  }

  private varPlace(id: number): { section: string; offset: number; size: number } | undefined {
    if (id < this.firstId) return this.base?.varPlace(id);
    if (!this.varPlaces) {
      const places = new Map<number, { section: string; offset: number; size: number }>();
      for (let sec = this.firstId; sec < this.typeCount; sec++) {
        if (this.table.kindOf(sec) !== K.DATASEC) continue;
        const d = this.table.typeById(sec);
        if (d.kind !== 'datasec') continue;
        for (const v of d.vars) if (!places.has(v.typeId)) places.set(v.typeId, { section: d.name, offset: v.offset, size: v.size });
      }
      this.varPlaces = places;
    }
    return this.varPlaces.get(id);
  }

  /**
   * Value of an enumerator. `enumName` (`pid_type` or `enum pid_type`) picks the enum; null
   * searches every enum, which is how constants of anonymous enums are found.
   */
  enumValue(enumName: string | null, valueName: string): bigint | undefined {
    if (enumName !== null) {
      const bare = enumName.replace(/^\s*enum\s+/, '').trim();
      for (const id of this.findTypeIds(bare, 'enum').concat(this.findTypeIds(bare, 'enum64'))) {
        const v = this.enumeratorIn(id, valueName);
        if (v !== undefined) return v;
      }
      return undefined;
    }
    const id = this.enumeratorOwner(valueName);
    return id === undefined ? this.base?.enumValue(null, valueName) : this.enumeratorIn(id, valueName);
  }

  private enumeratorIn(id: number, valueName: string): bigint | undefined {
    const t = this.table.typeById(id);
    if (t.kind === 'enum') {
      for (const v of t.values) if (v.name === valueName) return BigInt(v.value);
    } else if (t.kind === 'enum64') {
      for (const v of t.values) if (v.name === valueName) return v.value;
    }
    return undefined;
  }

  private enumeratorOwner(valueName: string): number | undefined {
    if (!this.enumerators) {
      const map = new Map<string, number>();
      for (let id = this.firstId; id < this.typeCount; id++) {
        const k = this.table.kindOf(id);
        if (k !== K.ENUM && k !== K.ENUM64) continue;
        const t = this.table.typeById(id);
        if (t.kind !== 'enum' && t.kind !== 'enum64') continue;
        for (const v of t.values) if (!map.has(v.name)) map.set(v.name, id);
      }
      this.enumerators = map;
    }
    return this.enumerators.get(valueName);
  }

  // ---- rendering ---------------------------------------------------------------------------

  /** A C-like rendering of a type: `struct list_head *`, `char [16]`, `int (*)(struct file *, ...)`. */
  typeName(id: number): string {
    this.table.checkId(id);
    return declaration(this.table, id);
  }

  /** A C declaration of `name` with type `id`: `char comm[16]`, `struct list_head *next`. */
  declare(id: number, name: string): string {
    this.table.checkId(id);
    return declaration(this.table, id, name);
  }
}

interface TypeNameQuery {
  readonly bare: string;
  /** Kinds to accept, best first. */
  readonly kinds: readonly BtfKindName[];
  /** When a forward declaration is acceptable only for one tag (`struct foo`). */
  readonly fwdOf?: 'struct' | 'union';
}

/** Split an optional C tag off a name and list the kinds to try, best first. */
function parseTypeName(name: string, kind?: BtfKindName): TypeNameQuery {
  const m = TAGGED_NAME.exec(name);
  const bare = m ? m[2]! : name.trim();
  const tag = kind ?? m?.[1];
  switch (tag) {
    case undefined:
      return { bare, kinds: TYPE_PREFERENCE };
    case 'struct':
    case 'union':
      return { bare, kinds: [tag, 'fwd'], fwdOf: tag };
    case 'enum':
      // BTF has no forward enum kind: a declared-only enum is an ENUM with no values.
      return { bare, kinds: kind ? ['enum'] : ['enum', 'enum64'] };
    default:
      return { bare, kinds: [tag as BtfKindName] };
  }
}

function groupOfKinds(kinds: readonly BtfKindName[]): NameGroup {
  if (kinds[0] === 'func') return NameGroup.FUNCS;
  if (kinds[0] === 'var') return NameGroup.VARS;
  return NameGroup.TYPES;
}

function checkedSize(size: number, id: number): number {
  if (!Number.isSafeInteger(size)) throw new GuestDataError(`BTF: type ${id}: size overflows`);
  return size;
}

