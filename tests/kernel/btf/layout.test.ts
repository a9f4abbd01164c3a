import { describe, expect, it } from 'vitest';
import { Btf, formatLayout, structLayout } from '../../../src/kernel/btf/index.ts';
import { UsageError } from '../../../src/util/errors.ts';
import { buildMini } from './mini.ts';
import { BtfWriter } from './writer.ts';

const { blob, ids } = buildMini();
const btf = Btf.parse(blob);

describe('structLayout', () => {
  const layout = structLayout(btf, 'task_struct');

  it('summarises size, cachelines, holes and padding', () => {
    expect(layout).toMatchObject({ id: ids.task_struct, kind: 'struct', name: 'task_struct', size: 88, cachelines: 2, members: 10, holes: 1, holeBits: 29, paddingBits: 64, truncated: false });
  });

  it('lists members with offsets and sizes, holes between them', () => {
    const brief = layout.entries.map((e) => (e.entry === 'hole' ? `hole@${e.bitOffset}+${e.bits}` : `${e.name}@${e.offset}:${e.size}`));
    expect(brief).toEqual(['__state@0:4', 'in_execve@4:4', 'in_iowait@4:4', 'hole@35+29', 'pid@8:4', 'tgid@12:4', 'tasks@16:16', 'real_parent@32:8', '@40:16', 'comm@56:16', 'cred@72:8']);
  });

  it('bitfields carry their unit offset and bit position', () => {
    expect(layout.entries[2]).toMatchObject({ name: 'in_iowait', bitOffset: 33, bitfieldSize: 2, offset: 4, bitInUnit: 1, declaration: 'unsigned int in_iowait:2' });
  });

  it('anonymous unions and structs are expanded with absolute offsets', () => {
    const anon = layout.entries[8]!;
    if (anon.entry !== 'member' || !anon.nested) throw new Error('expected an expanded union');
    expect(anon.nested.kind).toBe('union');
    const inner = anon.nested.entries[1]!;
    if (inner.entry !== 'member' || !inner.nested) throw new Error('expected an expanded struct');
    expect(inner.nested.entries.map((e) => (e.entry === 'member' ? [e.name, e.offset] : e.entry))).toEqual([['inner_a', 40], ['inner_b', 48]]);
  });

  it('is JSON-able', () => {
    expect(JSON.parse(JSON.stringify(layout))).toEqual(layout);
  });

  it('unions have no holes, only padding', () => {
    const w = new BtfWriter();
    const c = w.int('char', 1);
    const l = w.int('long', 8);
    w.union('u', 16, [
      { name: 'c', type: c, bitOffset: 0 },
      { name: 'l', type: l, bitOffset: 0 },
    ]);
    const u = structLayout(Btf.parse(w.build()), 'union u');
    expect(u).toMatchObject({ kind: 'union', holes: 0, paddingBits: 64 });
  });

  it('a typedef of a struct is resolved; other kinds are a UsageError', () => {
    expect(structLayout(btf, ids.task_t!).id).toBe(ids.task_struct);
    expect(() => structLayout(btf, 'pid_t')).toThrow(UsageError);
    expect(() => structLayout(btf, 'no_such')).toThrow(/no type 'no_such'/);
  });

  it('hostile nesting is cut short and marked', () => {
    const w = new BtfWriter();
    const i = w.int('int', 4);
    let inner = w.struct('', 4, [{ name: 'leaf', type: i, bitOffset: 0 }]);
    for (let d = 0; d < 40; d++) inner = w.union('', 4, [{ name: '', type: inner, bitOffset: 0 }]);
    w.struct('top', 4, [{ name: '', type: inner, bitOffset: 0 }]);
    const deep = structLayout(Btf.parse(w.build()), 'top');
    expect(deep.truncated).toBe(true);
    expect(formatLayout(deep).join('\n')).toContain('layout truncated');
  });
});

describe('formatLayout', () => {
  it('renders pahole-like text', () => {
    expect(formatLayout(structLayout(btf, 'task_struct'))).toEqual([
      'struct task_struct {',
      '\tunsigned int __state;                           /*     0     4 */',
      '\tunsigned int in_execve:1;                       /*     4: 0     4 */',
      '\tunsigned int in_iowait:2;                       /*     4: 1     4 */',
      '\t/* XXX 3 bytes 5 bits hole, try to pack */',
      '\tpid_t pid;                                      /*     8     4 */',
      '\tpid_t tgid;                                     /*    12     4 */',
      '\tstruct list_head tasks;                         /*    16    16 */',
      '\tstruct task_struct *real_parent;                /*    32     8 */',
      '\tunion {',
      '\t\tint u_int;                              /*    40     4 */',
      '\t\tstruct {',
      '\t\t\tlong unsigned int inner_a;      /*    40     8 */',
      '\t\t\tlong unsigned int inner_b;      /*    48     8 */',
      '\t\t};                                      /*    40    16 */',
      '\t};                                              /*    40    16 */',
      '\tchar comm[16];                                  /*    56    16 */',
      '\t/* --- cacheline 1 boundary (64 bytes) --- */',
      '\tconst struct cred *cred;                        /*    72     8 */',
      '',
      '\t/* size: 88, cachelines: 2, members: 10 */',
      '\t/* holes: 1, sum holes: 3 bytes 5 bits */',
      '\t/* padding: 8 bytes */',
      '\t/* last cacheline: 24 bytes */',
      '};',
    ]);
  });

  it('a struct that fills its cacheline exactly', () => {
    expect(formatLayout(structLayout(btf, 'list_head'))).toEqual([
      'struct list_head {',
      '\tstruct list_head *next;                         /*     0     8 */',
      '\tstruct list_head *prev;                         /*     8     8 */',
      '',
      '\t/* size: 16, cachelines: 1, members: 2 */',
      '\t/* last cacheline: 16 bytes */',
      '};',
    ]);
  });

  it('byte holes', () => {
    const w = new BtfWriter();
    const c = w.int('char', 1);
    const l = w.int('long', 8);
    w.struct('gappy', 16, [
      { name: 'c', type: c, bitOffset: 0 },
      { name: 'l', type: l, bitOffset: 64 },
    ]);
    const lines = formatLayout(structLayout(Btf.parse(w.build()), 'gappy'));
    expect(lines).toContain('\t/* XXX 7 bytes hole, try to pack */');
    expect(lines).toContain('\t/* holes: 1, sum holes: 7 bytes */');
  });
});
