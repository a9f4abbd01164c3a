import { describe, expect, it } from 'vitest';
import { Btf } from '../../../src/kernel/btf/index.ts';
import { BtfKind } from '../../../src/kernel/btf/types.ts';
import { GuestDataError, UsageError } from '../../../src/util/errors.ts';
import { buildMini } from './mini.ts';
import { BtfWriter } from './writer.ts';

const { blob, ids } = buildMini();
const btf = Btf.parse(blob);
const id = (name: string): number => ids[name]!;

describe('Btf.findType', () => {
  it('bare and tagged names', () => {
    expect(btf.findType('task_struct')?.id).toBe(id('task_struct'));
    expect(btf.findType('struct task_struct')?.id).toBe(id('task_struct'));
    expect(btf.findType('  struct   list_head ')?.id).toBe(id('list_head'));
    expect(btf.findType('enum pid_type')?.id).toBe(id('pid_type'));
    expect(btf.findType('enum big64')?.id).toBe(id('enum64'));
    expect(btf.findType('typedef pid_t')?.id).toBe(id('pid_t'));
    expect(btf.findType('pid_t')?.id).toBe(id('pid_t'));
    expect(btf.findType('int')?.id).toBe(id('int'));
    expect(btf.findType('double')?.id).toBe(id('double'));
  });

  it('a tag restricts the kind', () => {
    expect(btf.findType('union task_struct')).toBeUndefined();
    expect(btf.findType('enum task_struct')).toBeUndefined();
    expect(btf.findType('typedef task_struct')).toBeUndefined();
    expect(btf.findType('task_struct', 'union')).toBeUndefined();
    expect(btf.findType('task_struct', 'struct')?.id).toBe(id('task_struct'));
  });

  it('a bare name prefers a definition; the other kinds stay reachable', () => {
    expect(btf.findType('twin')?.id).toBe(id('twin_struct'));
    expect(btf.findType('typedef twin')?.id).toBe(id('twin_typedef'));
    expect(btf.findTypeIds('twin').sort()).toEqual([id('twin_struct'), id('twin_typedef')].sort());
  });

  it('forward declarations are found when nothing else is, with the right tag only', () => {
    expect(btf.findType('cred')).toMatchObject({ kind: 'fwd', fwdKind: 'struct' });
    expect(btf.findType('struct cred')?.id).toBe(id('cred_fwd'));
    expect(btf.findType('union cred')).toBeUndefined();
    expect(btf.findType('union bpf_attr')?.id).toBe(id('union_fwd'));
    expect(btf.findType('struct bpf_attr')).toBeUndefined();
  });

  it('functions and variables only with their kind', () => {
    expect(btf.findType('vfs_read')).toBeUndefined();
    expect(btf.findType('vfs_read', 'func')?.id).toBe(id('vfs_read'));
    expect(btf.findType('runqueues', 'var')?.id).toBe(id('runqueues'));
    expect(btf.findType('.data..percpu', 'datasec')?.id).toBe(id('percpu'));
  });

  it('unknown names', () => {
    expect(btf.findType('no_such_type')).toBeUndefined();
    expect(btf.findType('')).toBeUndefined();
    expect(btf.findTypeIds('no_such_type')).toEqual([]);
  });
});

describe('Btf.resolve and sizeof', () => {
  it('resolve skips typedefs and qualifiers', () => {
    expect(btf.resolve(id('pid_t'))).toBe(id('int'));
    expect(btf.resolve(id('const_task_t'))).toBe(id('task_struct'));
    expect(btf.resolve(id('volatile_int'))).toBe(id('int'));
    expect(btf.resolve(id('user_tag'))).toBe(id('char'));
    expect(btf.resolve(id('restrict_char_ptr'))).toBe(id('char_ptr'));
    expect(btf.resolve(id('list_head_ptr'))).toBe(id('list_head_ptr'));
    expect(btf.resolved(id('task_t')).name).toBe('task_struct');
  });

  it('sizeof by id and by name', () => {
    expect(btf.sizeof('struct list_head')).toBe(16);
    expect(btf.sizeof('task_struct')).toBe(88);
    expect(btf.sizeof(id('const_task_t'))).toBe(88);
    expect(btf.sizeof(id('comm'))).toBe(16);
    expect(btf.sizeof(id('matrix'))).toBe(48);
    expect(btf.sizeof(id('ptr_array'))).toBe(32);
    expect(btf.sizeof(id('list_head_ptr'))).toBe(8);
    expect(btf.sizeof('pid_type')).toBe(4);
    expect(btf.sizeof('big64')).toBe(8);
    expect(btf.sizeof(id('runqueues'))).toBe(88);
    expect(btf.sizeof(id('percpu'))).toBe(4096);
    expect(btf.ptrSize()).toBe(8);
  });

  it('types without a size are a UsageError', () => {
    expect(() => btf.sizeof(0)).toThrow(/void has no size/);
    expect(() => btf.sizeof('cred')).toThrow(/struct cred has no size/);
    expect(() => btf.sizeof(id('vfs_read'))).toThrow(UsageError);
    expect(() => btf.sizeof('no_such')).toThrow(/no type 'no_such'/);
    expect(() => btf.sizeof(1e9)).toThrow(UsageError);
  });

  it('a typedef loop terminates with a GuestDataError', () => {
    const w = new BtfWriter();
    const a = w.nextId;
    w.typedef('a', a + 1);
    w.typedef('b', a + 2);
    w.const(a);
    const loop = Btf.parse(w.build());
    expect(() => loop.resolve(a)).toThrow(GuestDataError);
    expect(() => loop.resolve(a)).toThrow(/chain longer than 32/);
    expect(() => loop.sizeof('a')).toThrow(GuestDataError);
    expect(loop.typeName(a)).toBe('a');
  });

  it('a self-typedef terminates too', () => {
    const w = new BtfWriter();
    const self = w.typedef('self', 1);
    expect(() => Btf.parse(w.build()).resolve(self)).toThrow(GuestDataError);
  });

  it('array loops and overflowing sizes are GuestDataErrors', () => {
    const w = new BtfWriter();
    const a = w.nextId;
    w.array(a, 0, 2);
    const big = w.array(w.int('long', 8), 0, 0xffffffff);
    const huge = w.array(big, 0, 0xffffffff);
    const b = Btf.parse(w.build());
    expect(() => b.sizeof(a)).toThrow(/nested deeper/);
    expect(b.sizeof(big)).toBe(8 * 0xffffffff);
    expect(() => b.sizeof(huge)).toThrow(/size overflows/);
  });
});

describe('Btf.member and memberOffset', () => {
  it('direct members', () => {
    expect(btf.member('task_struct', 'pid')).toEqual({ name: 'pid', typeId: id('pid_t'), bitOffset: 64, bitfieldSize: 0 });
    expect(btf.memberOffset('task_struct', 'tasks')).toBe(16);
    expect(btf.memberOffset('struct list_head', 'prev')).toBe(8);
    expect(btf.memberOffset(id('task_struct'), 'comm')).toBe(56);
    expect(btf.memberOffset(id('const_task_t'), 'cred')).toBe(72);
  });

  it('members of anonymous unions and structs count from the outer struct', () => {
    expect(btf.member('task_struct', 'u_int')).toEqual({ name: 'u_int', typeId: id('int'), bitOffset: 320, bitfieldSize: 0 });
    expect(btf.memberOffset('task_struct', 'inner_b')).toBe(48);
  });

  it('bitfields', () => {
    expect(btf.member('task_struct', 'in_iowait')).toEqual({ name: 'in_iowait', typeId: id('uint'), bitOffset: 33, bitfieldSize: 2 });
    expect(() => btf.memberOffset('task_struct', 'in_iowait')).toThrow(/is a bitfield/);
  });

  it('dotted paths through embedded structs', () => {
    expect(btf.member('task_struct', 'tasks.prev')).toEqual({ name: 'tasks.prev', typeId: id('list_head_ptr'), bitOffset: 128 + 64, bitfieldSize: 0 });
    expect(btf.memberOffset('task_struct', 'tasks.prev')).toBe(24);
    // Not through a pointer: real_parent is `struct task_struct *`.
    expect(btf.member('task_struct', 'real_parent.pid')).toBeUndefined();
    expect(btf.member('task_struct', 'tasks.nope')).toBeUndefined();
  });

  it('members() lists named members in order, anonymous ones flattened', () => {
    expect(btf.members('task_struct').map((m) => m.name)).toEqual([
      '__state', 'in_execve', 'in_iowait', 'pid', 'tgid', 'tasks', 'real_parent', 'u_int', 'inner_a', 'inner_b', 'comm', 'cred',
    ]);
  });

  it('lookups are cached per struct', () => {
    expect(btf.member('task_struct', 'tgid')).toBe(btf.member(id('task_struct'), 'tgid'));
  });

  it('absent members and non-structs', () => {
    expect(btf.member('task_struct', 'nope')).toBeUndefined();
    expect(() => btf.memberOffset('task_struct', 'nope')).toThrow(/'task_struct' has no member 'nope'/);
    expect(() => btf.member('pid_t', 'x')).toThrow(/is not a struct or union \(it is int\)/);
    expect(() => btf.member('no_such', 'x')).toThrow(UsageError);
  });

  it('hostile nesting of anonymous members is bounded', () => {
    // struct top { union { union { … 40 levels … } } }: deeper than any kernel struct.
    const w = new BtfWriter();
    const i = w.int('int', 4);
    let inner = w.struct('', 4, [{ name: 'leaf', type: i, bitOffset: 0 }]);
    for (let d = 0; d < 40; d++) inner = w.union('', 4, [{ name: '', type: inner, bitOffset: 0 }]);
    const top = w.struct('top', 4, [{ name: '', type: inner, bitOffset: 0 }]);
    expect(() => Btf.parse(w.build()).member(top, 'leaf')).toThrow(/nested deeper than 32/);
  });

  it('exponential fan-out of anonymous members is bounded', () => {
    // Each level has 300 anonymous members of the level below: 300^3 visits if unbounded.
    const w = new BtfWriter();
    const i = w.int('int', 4);
    let level = w.struct('', 4, [{ name: 'x', type: i, bitOffset: 0 }]);
    for (let d = 0; d < 3; d++) {
      const t = level;
      level = w.union('', 4, Array.from({ length: 300 }, () => ({ name: '', type: t, bitOffset: 0 })));
    }
    const top = w.struct('top', 4, [{ name: '', type: level, bitOffset: 0 }]);
    expect(() => Btf.parse(w.build()).member(top, 'x')).toThrow(/more than 65536 members/);
  });

  it('an anonymous member that contains itself is bounded', () => {
    const w = new BtfWriter();
    const self = w.nextId;
    w.struct('', 4, [{ name: '', type: self, bitOffset: 0 }]);
    expect(() => Btf.parse(w.build()).members(self)).toThrow(GuestDataError);
  });
});

describe('Btf.findFunc, findVar, enumValue', () => {
  it('findFunc unfolds the prototype', () => {
    expect(btf.findFunc('vfs_read')).toEqual({
      id: id('vfs_read'),
      name: 'vfs_read',
      linkage: 'global',
      protoId: id('vfs_read_proto'),
      returnTypeId: id('ssize_t'),
      params: [
        { name: 'file', typeId: id('file_ptr') },
        { name: 'buf', typeId: id('char_ptr') },
        { name: 'count', typeId: id('size_t') },
        { name: 'pos', typeId: id('loff_ptr') },
      ],
      variadic: false,
    });
    expect(btf.findFunc('nope')).toBeUndefined();
    expect(btf.findFunc('task_struct')).toBeUndefined();
  });

  it('functions sharing a name', () => {
    expect(btf.findFunc('dup_helper')?.id).toBe(id('static_dup1'));
    expect(btf.findFuncs('dup_helper').map((f) => f.params.length)).toEqual([0, 1]);
  });

  it('a FUNC whose type is not a prototype is a GuestDataError', () => {
    const w = new BtfWriter();
    w.func('broken', w.int('int', 4));
    expect(() => Btf.parse(w.build()).findFunc('broken')).toThrow(/instead of a prototype/);
  });

  it('findVar with and without a section', () => {
    expect(btf.findVar('runqueues')).toEqual({ id: id('runqueues'), name: 'runqueues', typeId: id('task_struct'), linkage: 'global', section: '.data..percpu', offset: 128, size: 88 });
    expect(btf.findVar('cpu_number')).toMatchObject({ linkage: 'static', section: '.data..percpu', offset: 0 });
    expect(btf.findVar('jiffies')).toEqual({ id: id('jiffies'), name: 'jiffies', typeId: id('ulong'), linkage: 'extern' });
    expect(btf.findVar('vfs_read')).toBeUndefined();
  });

  it('enumValue in a named enum, in any enum, and 64-bit', () => {
    expect(btf.enumValue('pid_type', 'PIDTYPE_PID')).toBe(0n);
    expect(btf.enumValue('enum pid_type', 'PIDTYPE_MAX')).toBe(4n);
    expect(btf.enumValue('pid_type', 'TASK_COMM_LEN')).toBeUndefined();
    expect(btf.enumValue(null, 'TASK_COMM_LEN')).toBe(16n);
    expect(btf.enumValue(null, 'BIG_U32')).toBe(0xfffffff0n);
    expect(btf.enumValue('signed_e', 'NEG_ONE')).toBe(-1n);
    expect(btf.enumValue('big64', 'BIG_U')).toBe(0xffff_ffff_ffff_fffen);
    expect(btf.enumValue(null, 'BIG_S')).toBe(-2n);
    expect(btf.enumValue(null, 'NOPE')).toBeUndefined();
    expect(btf.enumValue('no_enum', 'PIDTYPE_PID')).toBeUndefined();
  });
});

describe('Btf.typeName and declare', () => {
  const cases: [string, string][] = [
    ['int', 'int'],
    ['list_head', 'struct list_head'],
    ['list_head_ptr', 'struct list_head *'],
    ['comm', 'char [16]'],
    ['matrix', 'char [3][16]'],
    ['ptr_array', 'struct list_head *[4]'],
    ['ptr_to_array', 'char (*)[16]'],
    ['const_cred_ptr', 'const struct cred *'],
    ['const_char_ptr_const', 'char *const'],
    ['restrict_char_ptr', 'char *restrict'],
    ['volatile_int', 'volatile int'],
    ['void_ptr', 'void *'],
    ['open_ptr', 'int (*)(struct file *, ...)'],
    ['vfs_read_proto', 'ssize_t (struct file *file, char *buf, size_t count, loff_t *pos)'],
    ['vfs_read', 'ssize_t vfs_read(struct file *file, char *buf, size_t count, loff_t *pos)'],
    ['pid_type', 'enum pid_type'],
    ['anon_enum', 'enum {...}'],
    ['anon_union', 'union {...}'],
    ['union_fwd', 'union bpf_attr'],
    ['pid_t', 'pid_t'],
    ['user_char_ptr', 'char *'],
    ['runqueues', 'struct task_struct runqueues'],
    ['percpu', 'SEC(".data..percpu")'],
  ];
  for (const [name, text] of cases) {
    it(`${name} → ${text}`, () => expect(btf.typeName(id(name))).toBe(text));
  }

  it('void and a prototype without parameters', () => {
    expect(btf.typeName(0)).toBe('void');
    expect(btf.typeName(btf.findFunc('dup_helper')!.protoId)).toBe('void (void)');
  });

  it('declarations with a name', () => {
    expect(btf.declare(id('comm'), 'comm')).toBe('char comm[16]');
    expect(btf.declare(id('list_head_ptr'), 'next')).toBe('struct list_head *next');
    expect(btf.declare(id('open_ptr'), 'open')).toBe('int (*open)(struct file *, ...)');
    expect(btf.declare(id('ptr_to_array'), 'p')).toBe('char (*p)[16]');
    expect(btf.declare(id('const_char_ptr_const'), 's')).toBe('char *const s');
  });

  it('hostile prototype nesting renders in bounded time and length', () => {
    // proto_k has 200 parameters, each a pointer to proto_{k-1}: 200^4 leaves if unbounded.
    const w = new BtfWriter();
    let proto = w.funcProto(w.int('int', 4), []);
    for (let k = 0; k < 4; k++) {
      const p = w.ptr(proto);
      proto = w.funcProto(p, Array.from({ length: 200 }, () => ['', p] as [string, number]));
    }
    const text = Btf.parse(w.build()).typeName(proto);
    expect(text).toContain('...');
    expect(text.length).toBeLessThan(200_000);
  });

  it('a pointer loop renders in bounded length', () => {
    const w = new BtfWriter();
    const p = w.nextId;
    w.ptr(p + 1);
    w.const(p);
    const text = Btf.parse(w.build()).typeName(p);
    expect(text.startsWith('...')).toBe(true);
  });
});

describe('Btf over split BTF', () => {
  const base = Btf.parse(blob);
  const w = new BtfWriter({ typeCount: base.typeCount, strLen: buildMini().writer.strLen });
  const slot = w.struct('vfat_slot', 24, [
    { name: 'id', type: id('int'), bitOffset: 0 },
    { name: 'list', type: id('list_head'), bitOffset: 64 },
  ]);
  const proto = w.funcProto(id('int'), [['task', id('task_struct_ptr')]]);
  const fn = w.func('vfat_init', proto);
  const shadow = w.fwd('task_struct');
  const modVar = w.var('vfat_count', id('int'), 0);
  w.datasec('.data', 4, [{ type: modVar, offset: 0, size: 4 }]);
  w.enum('vfat_state', 4, [['VFAT_READY', 7]]);
  const mod = Btf.parse(w.build(), base);

  it('ids continue the base; base types are reachable', () => {
    expect(mod.firstId).toBe(base.typeCount);
    expect(mod.typeById(id('task_struct')).name).toBe('task_struct');
    expect(mod.kindOf(slot)).toBe('struct');
  });

  it('name lookups cover the module and its base; a base definition beats a module fwd', () => {
    expect(mod.findType('vfat_slot')?.id).toBe(slot);
    expect(mod.findType('list_head')?.id).toBe(id('list_head'));
    expect(mod.findType('struct task_struct')?.id).toBe(id('task_struct'));
    expect(mod.findTypeIds('task_struct', 'fwd')).toEqual([shadow]);
    expect(mod.findFunc('vfat_init')?.params).toEqual([{ name: 'task', typeId: id('task_struct_ptr') }]);
    expect(mod.findFunc('vfs_read')?.id).toBe(id('vfs_read'));
    expect(mod.findVar('vfat_count')).toMatchObject({ section: '.data', offset: 0 });
    expect(mod.findVar('runqueues')).toMatchObject({ section: '.data..percpu', offset: 128 });
    expect(mod.enumValue(null, 'VFAT_READY')).toBe(7n);
    expect(mod.enumValue(null, 'PIDTYPE_SID')).toBe(3n);
  });

  it('members and sizes across the boundary', () => {
    expect(mod.memberOffset('vfat_slot', 'list.prev')).toBe(16);
    expect(mod.memberOffset('task_struct', 'comm')).toBe(56);
    expect(mod.sizeof(slot)).toBe(24);
    expect(mod.typeName(fn)).toBe('int vfat_init(struct task_struct *task)');
  });

  it('ids() walks base and module ids', () => {
    expect([...mod.ids('func')]).toContain(fn);
    expect([...mod.ids('func')]).toContain(id('vfs_read'));
    expect([...mod.ids()].length).toBe(mod.typeCount - 1);
  });
});

describe('Btf id checks', () => {
  it('kindOf and typeName reject bad ids', () => {
    expect(() => btf.kindOf(btf.typeCount)).toThrow(UsageError);
    expect(() => btf.typeName(-3)).toThrow(UsageError);
    expect(() => btf.resolve(123456)).toThrow(UsageError);
    expect(btf.kindOf(0)).toBe('void');
    expect(btf.table.kindOf(id('percpu'))).toBe(BtfKind.DATASEC);
  });
});

describe('Btf.findType of tags', () => {
  it('decl tags are found by kind', () => {
    expect(btf.findTypeIds('bpf_kfunc', 'decl_tag')).toEqual([id('kfunc_tag')]);
    expect(btf.findType('bpf_kfunc')).toBeUndefined();
  });
});
