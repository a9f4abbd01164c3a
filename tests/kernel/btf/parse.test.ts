import { describe, expect, it } from 'vitest';
import { parseBtf, parseBtfHeader, BTF_MAX_TYPE } from '../../../src/kernel/btf/parse.ts';
import { BtfKind, type BtfType } from '../../../src/kernel/btf/types.ts';
import { GuestDataError, UsageError } from '../../../src/util/errors.ts';
import { buildMini } from './mini.ts';
import { BtfWriter, HDR, patchU32 } from './writer.ts';

function decodeAll(blob: Uint8Array): BtfType[] {
  const t = parseBtf(blob);
  const out: BtfType[] = [];
  for (let id = 0; id < t.typeCount; id++) out.push(t.typeById(id));
  return out;
}

describe('parseBtf: every kind decodes', () => {
  const { blob, ids } = buildMini();
  const t = parseBtf(blob);

  it('header and counts', () => {
    expect(t.header).toMatchObject({ littleEndian: true, version: 1, flags: 0, hdrLen: 24, typeOff: 0 });
    expect(t.firstId).toBe(1);
    expect(t.typeCount).toBe(ids.twin_typedef! + 1);
    expect(t.ownCount).toBe(t.typeCount - 1);
  });

  it('void is id 0', () => {
    expect(t.typeById(0)).toEqual({ id: 0, kind: 'void', name: '' });
    expect(t.kindOf(0)).toBe(BtfKind.UNKN);
  });

  it('INT: encoding, bits, offset', () => {
    expect(t.typeById(ids.int!)).toEqual({ id: ids.int, kind: 'int', name: 'int', size: 4, signed: true, char: false, bool: false, bitOffset: 0, bits: 32 });
    expect(t.typeById(ids.char!)).toMatchObject({ kind: 'int', name: 'char', size: 1, char: true, signed: true, bits: 8 });
    expect(t.typeById(ids.bool!)).toMatchObject({ kind: 'int', bool: true, signed: false });
    expect(t.typeById(ids.u128!)).toMatchObject({ kind: 'int', size: 16, bits: 128, signed: false });
  });

  it('FLOAT', () => {
    expect(t.typeById(ids.double!)).toEqual({ id: ids.double, kind: 'float', name: 'double', size: 8 });
  });

  it('PTR, TYPEDEF, CONST, VOLATILE, RESTRICT, TYPE_TAG', () => {
    expect(t.typeById(ids.list_head_ptr!)).toEqual({ id: ids.list_head_ptr, kind: 'ptr', name: '', typeId: ids.list_head });
    expect(t.typeById(ids.pid_t!)).toEqual({ id: ids.pid_t, kind: 'typedef', name: 'pid_t', typeId: ids.int });
    expect(t.typeById(ids.const_cred!)).toMatchObject({ kind: 'const', typeId: ids.cred_fwd });
    expect(t.typeById(ids.volatile_int!)).toMatchObject({ kind: 'volatile', typeId: ids.int });
    expect(t.typeById(ids.restrict_char_ptr!)).toMatchObject({ kind: 'restrict', typeId: ids.char_ptr });
    expect(t.typeById(ids.user_tag!)).toMatchObject({ kind: 'type_tag', name: 'user', typeId: ids.char });
    expect(t.typeById(ids.void_ptr!)).toMatchObject({ kind: 'ptr', typeId: 0 });
  });

  it('ARRAY', () => {
    expect(t.typeById(ids.comm!)).toEqual({ id: ids.comm, kind: 'array', name: '', typeId: ids.char, indexTypeId: ids.int, nelems: 16 });
  });

  it('STRUCT without bitfields: plain bit offsets', () => {
    expect(t.typeById(ids.list_head!)).toEqual({
      id: ids.list_head,
      kind: 'struct',
      name: 'list_head',
      size: 16,
      members: [
        { name: 'next', typeId: ids.list_head_ptr, bitOffset: 0, bitfieldSize: 0 },
        { name: 'prev', typeId: ids.list_head_ptr, bitOffset: 64, bitfieldSize: 0 },
      ],
    });
  });

  it('STRUCT with kind_flag: bitfield sizes split off the offset', () => {
    const task = t.typeById(ids.task_struct!);
    if (task.kind !== 'struct') throw new Error('not a struct');
    expect(task.members[1]).toEqual({ name: 'in_execve', typeId: ids.uint, bitOffset: 32, bitfieldSize: 1 });
    expect(task.members[2]).toEqual({ name: 'in_iowait', typeId: ids.uint, bitOffset: 33, bitfieldSize: 2 });
    expect(task.members[3]).toEqual({ name: 'pid', typeId: ids.pid_t, bitOffset: 64, bitfieldSize: 0 });
    expect(task.members[7]).toEqual({ name: '', typeId: ids.anon_union, bitOffset: 320, bitfieldSize: 0 });
  });

  it('UNION', () => {
    expect(t.typeById(ids.anon_union!)).toMatchObject({ kind: 'union', name: '', size: 16, members: [{ name: 'u_int' }, { name: '', typeId: ids.anon_struct }] });
  });

  it('ENUM: unsigned and signed (kind_flag)', () => {
    expect(t.typeById(ids.pid_type!)).toMatchObject({ kind: 'enum', name: 'pid_type', size: 4, signed: false, values: [{ name: 'PIDTYPE_PID', value: 0 }, { name: 'PIDTYPE_TGID', value: 1 }, {}, {}, { name: 'PIDTYPE_MAX', value: 4 }] });
    expect(t.typeById(ids.anon_enum!)).toMatchObject({ values: [{ name: 'TASK_COMM_LEN', value: 16 }, { name: 'BIG_U32', value: 0xfffffff0 }] });
    expect(t.typeById(ids.signed_enum!)).toMatchObject({ signed: true, values: [{ name: 'NEG_ONE', value: -1 }] });
  });

  it('ENUM64: 64-bit values as bigint, signed per kind_flag', () => {
    expect(t.typeById(ids.enum64!)).toMatchObject({ kind: 'enum64', size: 8, signed: false, values: [{ name: 'BIG_U', value: 0xffff_ffff_ffff_fffen }, { name: 'SMALL', value: 5n }] });
    expect(t.typeById(ids.enum64s!)).toMatchObject({ kind: 'enum64', signed: true, values: [{ name: 'BIG_S', value: -2n }] });
  });

  it('FWD: struct or union by kind_flag', () => {
    expect(t.typeById(ids.cred_fwd!)).toEqual({ id: ids.cred_fwd, kind: 'fwd', name: 'cred', fwdKind: 'struct' });
    expect(t.typeById(ids.union_fwd!)).toMatchObject({ kind: 'fwd', fwdKind: 'union' });
  });

  it('FUNC and FUNC_PROTO: linkage, params, variadic', () => {
    expect(t.typeById(ids.vfs_read!)).toEqual({ id: ids.vfs_read, kind: 'func', name: 'vfs_read', typeId: ids.vfs_read_proto, linkage: 'global' });
    expect(t.typeById(ids.static_dup1!)).toMatchObject({ linkage: 'static' });
    expect(t.typeById(ids.vfs_read_proto!)).toEqual({
      id: ids.vfs_read_proto,
      kind: 'func_proto',
      name: '',
      returnTypeId: ids.ssize_t,
      params: [
        { name: 'file', typeId: ids.file_ptr },
        { name: 'buf', typeId: ids.char_ptr },
        { name: 'count', typeId: ids.size_t },
        { name: 'pos', typeId: ids.loff_ptr },
      ],
      variadic: false,
    });
    expect(t.typeById(ids.open_proto!)).toMatchObject({ params: [{ name: '', typeId: ids.file_ptr }], variadic: true });
  });

  it('VAR and DATASEC', () => {
    expect(t.typeById(ids.runqueues!)).toEqual({ id: ids.runqueues, kind: 'var', name: 'runqueues', typeId: ids.task_struct, linkage: 'global' });
    expect(t.typeById(ids.jiffies!)).toMatchObject({ linkage: 'extern' });
    expect(t.typeById(ids.percpu!)).toEqual({
      id: ids.percpu,
      kind: 'datasec',
      name: '.data..percpu',
      size: 4096,
      vars: [
        { typeId: ids.cpu_number, offset: 0, size: 4 },
        { typeId: ids.runqueues, offset: 128, size: 88 },
      ],
    });
  });

  it('DECL_TAG', () => {
    expect(t.typeById(ids.kfunc_tag!)).toEqual({ id: ids.kfunc_tag, kind: 'decl_tag', name: 'bpf_kfunc', typeId: ids.vfs_read, componentIdx: -1 });
    expect(t.typeById(ids.param_tag!)).toMatchObject({ componentIdx: 1 });
  });

  it('decoded types are cached and frozen', () => {
    const a = t.typeById(ids.task_struct!);
    expect(t.typeById(ids.task_struct!)).toBe(a);
    expect(Object.isFrozen(a)).toBe(true);
  });

  it('ids out of range are a UsageError', () => {
    expect(() => t.typeById(t.typeCount)).toThrow(UsageError);
    expect(() => t.typeById(-1)).toThrow(UsageError);
    expect(() => t.typeById(1.5)).toThrow(UsageError);
  });
});

describe('parseBtf: layouts of the blob', () => {
  it('big-endian blobs decode to the same types', () => {
    const le = decodeAll(buildMini().blob);
    const beBlob = buildMini({ bigEndian: true }).blob;
    expect(parseBtfHeader(beBlob).littleEndian).toBe(false);
    expect(decodeAll(beBlob)).toEqual(le);
  });

  it('a longer header (newer kernel) and strings before types', () => {
    const w = buildMini().writer;
    const reference = decodeAll(w.build());
    expect(decodeAll(w.build({ headerPadding: 8 }))).toEqual(reference);
    // An odd header length leaves the type section unaligned in the blob.
    expect(decodeAll(w.build({ headerPadding: 1 }))).toEqual(reference);
    expect(decodeAll(w.build({ headerPadding: 1, bigEndian: true }))).toEqual(reference);
    expect(decodeAll(w.build({ stringsFirst: true }))).toEqual(reference);
  });

  it('a blob inside a larger, unaligned buffer', () => {
    const blob = buildMini().blob;
    const big = new Uint8Array(blob.length + 3);
    big.set(blob, 3);
    expect(decodeAll(big.subarray(3))).toEqual(decodeAll(blob));
  });

  it('an empty type section is valid', () => {
    const t = parseBtf(new BtfWriter().build());
    expect(t.typeCount).toBe(1);
  });

  it('non-ASCII names decode as UTF-8', () => {
    const w = new BtfWriter();
    const id = w.int('zählér', 4);
    expect(parseBtf(w.build()).typeById(id).name).toBe('zählér');
  });
});

describe('parseBtf: split BTF continues ids and strings of its base', () => {
  const base = new BtfWriter();
  const baseInt = base.int('int', 4, { signed: true });
  const baseList = base.struct('list_head', 16, []);
  const baseTable = parseBtf(base.build());

  const mod = new BtfWriter({ typeCount: baseTable.typeCount, strLen: base.strLen });
  // A module type using a base string ('int' is in the base) and its own.
  const modPtr = mod.ptr(baseList);
  const modStruct = mod.struct('vfat_slot', 8, [
    { name: 'id', type: baseInt, bitOffset: 0 },
    { name: 'list', type: modPtr, bitOffset: 32 },
  ]);
  const modTypedef = mod.raw([base.str('int'), BtfKind.TYPEDEF << 24, baseInt]);
  const split = parseBtf(mod.build(), baseTable);

  it('ids start after the base', () => {
    expect(split.firstId).toBe(baseTable.typeCount);
    expect(modPtr).toBe(baseTable.typeCount);
    expect(split.typeCount).toBe(modTypedef + 1);
  });

  it('base ids are answered through the split table', () => {
    expect(split.typeById(baseInt)).toBe(baseTable.typeById(baseInt));
    expect(split.kindOf(baseList)).toBe(BtfKind.STRUCT);
    expect(split.nameOf(baseList)).toBe('list_head');
  });

  it('own types decode with own and base strings', () => {
    expect(split.typeById(modStruct)).toMatchObject({ name: 'vfat_slot', members: [{ name: 'id', typeId: baseInt }, { name: 'list', typeId: modPtr }] });
    expect(split.typeById(modTypedef)).toMatchObject({ kind: 'typedef', name: 'int' });
  });

  it('a split blob without its base is rejected (its references and strings are out of range)', () => {
    expect(() => parseBtf(mod.build())).toThrow(GuestDataError);
  });

  it('split and base must share a byte order', () => {
    expect(() => parseBtf(mod.build({ bigEndian: true }), baseTable)).toThrow(/byte order/);
  });
});

describe('parseBtf: corrupt input gives a GuestDataError naming the problem', () => {
  const good = (() => {
    const w = new BtfWriter();
    const i = w.int('int', 4);
    w.struct('s', 4, [{ name: 'a', type: i, bitOffset: 0 }]);
    return w.build();
  })();
  const typeLen = new DataView(good.buffer).getUint32(HDR.typeLen, true);
  const strLen = new DataView(good.buffer).getUint32(HDR.strLen, true);

  const cases: [string, Uint8Array, RegExp][] = [
    ['empty', new Uint8Array(0), /shorter than the 24-byte header/],
    ['bad magic', patchU32(good, 0, 0x00011234), /bad magic 0x3412/],
    ['version 2', (() => { const b = good.slice(); b[2] = 2; return b; })(), /unsupported version 2/],
    ['header length too small', patchU32(good, HDR.hdrLen, 12), /header length 12/],
    ['header length past the end', patchU32(good, HDR.hdrLen, 1 << 30), /header length/],
    ['type section past the end', patchU32(good, HDR.typeLen, typeLen + 400), /type section .* past the end/],
    ['string section past the end', patchU32(good, HDR.strLen, 0xffffffff), /string section .* past the end/],
    ['string offset past the end', patchU32(good, HDR.strOff, 0xfffffff0), /string section .* past the end/],
    ['unaligned type section', patchU32(good, HDR.typeOff, 2), /not 4-byte aligned/],
    ['overlapping sections', patchU32(patchU32(good, HDR.strOff, 4), HDR.strLen, strLen), /overlap|NUL|empty string/],
    ['string section without NUL end', (() => { const b = good.slice(); b[b.length - 1] = 0x41; return b; })(), /does not end with a NUL/],
    ['truncated record', patchU32(good, HDR.typeLen, typeLen - 4), /runs past the end of the type section|truncated/],
  ];
  for (const [what, blob, message] of cases) {
    it(what, () => {
      expect(() => parseBtf(blob)).toThrow(GuestDataError);
      expect(() => parseBtf(blob)).toThrow(message);
    });
  }

  it('type name offset out of range', () => {
    const w = new BtfWriter();
    w.raw([0x7fff, BtfKind.INT << 24, 4, 32]);
    expect(() => parseBtf(w.build())).toThrow(/type 1 name offset 32767 is past the string section/);
  });

  it('member, parameter and enumerator name offsets out of range', () => {
    const m = new BtfWriter();
    m.raw([0, (BtfKind.STRUCT << 24) | 1, 4, 0x7fff, 0, 0]);
    expect(() => parseBtf(m.build())).toThrow(/member name offset/);
    const p = new BtfWriter();
    p.raw([0, (BtfKind.FUNC_PROTO << 24) | 1, 0, 0x7fff, 0]);
    expect(() => parseBtf(p.build())).toThrow(/parameter name offset/);
    const e = new BtfWriter();
    e.raw([0, (BtfKind.ENUM64 << 24) | 1, 8, 0x7fff, 0, 0]);
    expect(() => parseBtf(e.build())).toThrow(/enumerator name offset/);
  });

  it('huge vlen runs past the section', () => {
    const w = new BtfWriter();
    w.raw([0, (BtfKind.STRUCT << 24) | 0xffff, 4]);
    expect(() => parseBtf(w.build())).toThrow(/type 1 \(struct, vlen 65535\) runs past the end/);
  });

  it('unknown kinds', () => {
    for (const kind of [0, 20, 31]) {
      const w = new BtfWriter();
      w.raw([0, kind << 24, 0]);
      expect(() => parseBtf(w.build())).toThrow(new RegExp(`unknown kind ${kind}`));
    }
  });

  it('references to type ids that do not exist', () => {
    const ptr = new BtfWriter();
    ptr.ptr(2);
    expect(() => parseBtf(ptr.build())).toThrow(/type 1 refers to type 2, past the last type id 1/);
    const member = new BtfWriter();
    member.struct('s', 4, [{ name: 'a', type: 99, bitOffset: 0 }]);
    expect(() => parseBtf(member.build())).toThrow(/refers to type 99/);
    const arr = new BtfWriter();
    arr.array(1, 0xffffffff, 3);
    expect(() => parseBtf(arr.build())).toThrow(/refers to type 4294967295/);
    const sec = new BtfWriter();
    sec.datasec('.data', 4, [{ type: 7, offset: 0, size: 4 }]);
    expect(() => parseBtf(sec.build())).toThrow(/refers to type 7/);
    const proto = new BtfWriter();
    proto.funcProto(0, [['a', 5]]);
    expect(() => parseBtf(proto.build())).toThrow(/refers to type 5/);
  });

  it('bad linkage and impossible ints', () => {
    const f = new BtfWriter();
    f.func('f', 0, 3);
    expect(() => parseBtf(f.build())).toThrow(/unknown linkage 3/);
    const v = new BtfWriter();
    v.var('v', 0, 9);
    expect(() => parseBtf(v.build())).toThrow(/unknown linkage 9/);
    const i = new BtfWriter();
    i.raw([0, BtfKind.INT << 24, 4, 200]);
    expect(() => parseBtf(i.build())).toThrow(/\(int\) has 200 bits/);
  });

  it(`more than BTF_MAX_TYPE (${BTF_MAX_TYPE}) types`, () => {
    const n = BTF_MAX_TYPE + 1;
    const blob = new Uint8Array(24 + n * 12 + 1);
    const view = new DataView(blob.buffer);
    view.setUint16(0, 0xeb9f, true);
    blob[2] = 1;
    view.setUint32(4, 24, true);
    view.setUint32(12, n * 12, true);
    view.setUint32(16, n * 12, true);
    view.setUint32(20, 1, true);
    // Every record: a pointer to void.
    for (let i = 0; i < n; i++) view.setUint32(24 + i * 12 + 4, BtfKind.PTR << 24, true);
    expect(() => parseBtf(blob)).toThrow(/more than 1048575 types/);
    // One fewer is accepted.
    view.setUint32(12, (n - 1) * 12, true);
    view.setUint32(16, (n - 1) * 12, true);
    blob[24 + (n - 1) * 12] = 0;
    expect(parseBtf(blob.subarray(0, 24 + (n - 1) * 12 + 1)).typeCount).toBe(n);
  });
});
