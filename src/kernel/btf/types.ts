/**
 * The BTF model: what one decoded BTF type looks like. The kernel's
 * include/uapi/linux/btf.h is the specification; names follow it, made readable.
 * Type ids are plain numbers (BTF ids are < 2^32 and in practice < 2^20); id 0 is `void`.
 */

/** BTF_KIND_* numbers as they appear in the `info` word (bits 24..28). */
export const BtfKind = {
  UNKN: 0,
  INT: 1,
  PTR: 2,
  ARRAY: 3,
  STRUCT: 4,
  UNION: 5,
  ENUM: 6,
  FWD: 7,
  TYPEDEF: 8,
  VOLATILE: 9,
  CONST: 10,
  RESTRICT: 11,
  FUNC: 12,
  FUNC_PROTO: 13,
  VAR: 14,
  DATASEC: 15,
  FLOAT: 16,
  DECL_TAG: 17,
  TYPE_TAG: 18,
  ENUM64: 19,
} as const;
export type BtfKindNumber = (typeof BtfKind)[keyof typeof BtfKind];

/** Kind names used by the decoded model; `void` stands for type id 0. */
export type BtfKindName =
  | 'void'
  | 'int'
  | 'ptr'
  | 'array'
  | 'struct'
  | 'union'
  | 'enum'
  | 'fwd'
  | 'typedef'
  | 'volatile'
  | 'const'
  | 'restrict'
  | 'func'
  | 'func_proto'
  | 'var'
  | 'datasec'
  | 'float'
  | 'decl_tag'
  | 'type_tag'
  | 'enum64';

/** Kind name by kind number; index 0 (BTF_KIND_UNKN) only ever names id 0, `void`. */
export const KIND_NAMES: readonly BtfKindName[] = [
  'void', 'int', 'ptr', 'array', 'struct', 'union', 'enum', 'fwd', 'typedef', 'volatile',
  'const', 'restrict', 'func', 'func_proto', 'var', 'datasec', 'float', 'decl_tag', 'type_tag', 'enum64',
];

/** Linkage of a FUNC (btf_func_linkage) or VAR (BTF_VAR_*): same three values. */
export type BtfLinkage = 'static' | 'global' | 'extern';
export const LINKAGE_NAMES: readonly BtfLinkage[] = ['static', 'global', 'extern'];

interface BtfTypeCommon {
  readonly id: number;
  /** '' for anonymous types. */
  readonly name: string;
}

export interface BtfVoid extends BtfTypeCommon {
  readonly kind: 'void';
}

export interface BtfInt extends BtfTypeCommon {
  readonly kind: 'int';
  /** Storage size in bytes. */
  readonly size: number;
  readonly signed: boolean;
  /** BTF_INT_CHAR: a C `char` (its signedness is in `signed`). */
  readonly char: boolean;
  readonly bool: boolean;
  /** BTF_INT_OFFSET: bit offset of the value inside its storage (0 in practice). */
  readonly bitOffset: number;
  /** BTF_INT_BITS: number of value bits. */
  readonly bits: number;
}

export interface BtfFloat extends BtfTypeCommon {
  readonly kind: 'float';
  readonly size: number;
}

/** PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG: a name (maybe) and one referenced type. */
export interface BtfRef extends BtfTypeCommon {
  readonly kind: 'ptr' | 'typedef' | 'volatile' | 'const' | 'restrict' | 'type_tag';
  readonly typeId: number;
}

export interface BtfArray extends BtfTypeCommon {
  readonly kind: 'array';
  readonly typeId: number;
  readonly indexTypeId: number;
  readonly nelems: number;
}

/** One btf_member, decoded: offsets are always in bits from the start of the enclosing type. */
export interface BtfMember {
  /** '' for an anonymous struct/union member. */
  readonly name: string;
  readonly typeId: number;
  readonly bitOffset: number;
  /** Width of a bitfield in bits; 0 for ordinary members. */
  readonly bitfieldSize: number;
}

export interface BtfComposite extends BtfTypeCommon {
  readonly kind: 'struct' | 'union';
  readonly size: number;
  readonly members: readonly BtfMember[];
}

export interface BtfEnumValue {
  readonly name: string;
  readonly value: number;
}

export interface BtfEnum extends BtfTypeCommon {
  readonly kind: 'enum';
  readonly size: number;
  /** kind_flag: values are signed (the value field is then an s32, otherwise a u32). */
  readonly signed: boolean;
  readonly values: readonly BtfEnumValue[];
}

export interface BtfEnum64Value {
  readonly name: string;
  readonly value: bigint;
}

export interface BtfEnum64 extends BtfTypeCommon {
  readonly kind: 'enum64';
  readonly size: number;
  readonly signed: boolean;
  readonly values: readonly BtfEnum64Value[];
}

export interface BtfFwd extends BtfTypeCommon {
  readonly kind: 'fwd';
  /** kind_flag: 0 = struct, 1 = union. */
  readonly fwdKind: 'struct' | 'union';
}

export interface BtfFunc extends BtfTypeCommon {
  readonly kind: 'func';
  /** Id of the FUNC_PROTO. */
  readonly typeId: number;
  readonly linkage: BtfLinkage;
}

export interface BtfParam {
  /** '' when BTF records no name (prototypes of function pointers usually have none). */
  readonly name: string;
  readonly typeId: number;
}

export interface BtfFuncProto extends BtfTypeCommon {
  readonly kind: 'func_proto';
  /** Return type id; 0 = void. */
  readonly returnTypeId: number;
  /** Named parameters; a trailing `...` is not among them but sets `variadic`. */
  readonly params: readonly BtfParam[];
  readonly variadic: boolean;
}

export interface BtfVar extends BtfTypeCommon {
  readonly kind: 'var';
  readonly typeId: number;
  readonly linkage: BtfLinkage;
}

export interface BtfVarSecinfo {
  /** Id of the VAR (or FUNC) placed in the section. */
  readonly typeId: number;
  /** Byte offset inside the section. */
  readonly offset: number;
  readonly size: number;
}

export interface BtfDatasec extends BtfTypeCommon {
  readonly kind: 'datasec';
  readonly size: number;
  readonly vars: readonly BtfVarSecinfo[];
}

export interface BtfDeclTag extends BtfTypeCommon {
  readonly kind: 'decl_tag';
  /** The tagged type (struct, union, func, var, typedef). */
  readonly typeId: number;
  /** -1: the tag applies to the type itself; otherwise the member or parameter index. */
  readonly componentIdx: number;
}

export type BtfType =
  | BtfVoid
  | BtfInt
  | BtfFloat
  | BtfRef
  | BtfArray
  | BtfComposite
  | BtfEnum
  | BtfEnum64
  | BtfFwd
  | BtfFunc
  | BtfFuncProto
  | BtfVar
  | BtfDatasec
  | BtfDeclTag;

/**
 * A member as found by `Btf.member()`: like BtfMember, but `bitOffset` counts from the start of
 * the outer struct even when the member sits inside anonymous structs/unions.
 */
export interface BtfMemberInfo {
  readonly name: string;
  readonly typeId: number;
  readonly bitOffset: number;
  readonly bitfieldSize: number;
}

/** A FUNC with its FUNC_PROTO unfolded: what a caller needs to check a call. */
export interface BtfFuncInfo {
  readonly id: number;
  readonly name: string;
  readonly linkage: BtfLinkage;
  readonly protoId: number;
  readonly returnTypeId: number;
  readonly params: readonly BtfParam[];
  readonly variadic: boolean;
}

/** A VAR with its place from the DATASEC that lists it (vmlinux: the per-CPU variables). */
export interface BtfVarInfo {
  readonly id: number;
  readonly name: string;
  readonly typeId: number;
  readonly linkage: BtfLinkage;
  /** Name of the DATASEC listing the variable (e.g. '.data..percpu'), if any. */
  readonly section?: string;
  /** Byte offset of the variable inside that section. */
  readonly offset?: number;
  readonly size?: number;
}
