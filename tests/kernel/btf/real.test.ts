/**
 * The parser against real kernels: the host's own BTF (/sys/kernel/btf/vmlinux) and the Debian
 * lab kernel 6.1 (its vmlinux unpacked from the bzImage, and its modules' split BTF). Facts
 * come from the 6.1 source; bpftool (libbpf's own parser) checks every type of every blob.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Btf, extractBtfFromElf, formatLayout, structLayout, type BtfType } from '../../../src/kernel/btf/index.ts';
import { HOST_BTF, LAB_MODULES, LAB_VMLINUZ, bpftoolRaw, hasCommand, labVmlinux, parseBpftoolRaw, type RawType } from './fixtures.ts';

const hostPresent = existsSync(HOST_BTF);
const labPresent = existsSync(LAB_VMLINUZ) && hasCommand('xz');
const bpftool = hasCommand('bpftool');

/** Kernel facts every BTF-carrying kernel since 5.x shares; the 6.1 source is the reference. */
function checkKernelFacts(btf: Btf): void {
  // include/linux/types.h: struct list_head { struct list_head *next, *prev; }
  expect(btf.sizeof('struct list_head')).toBe(16);
  expect(btf.memberOffset('list_head', 'next')).toBe(0);
  expect(btf.memberOffset('list_head', 'prev')).toBe(8);
  expect(btf.typeName(btf.member('list_head', 'next')!.typeId)).toBe('struct list_head *');

  // include/linux/sched.h
  const task = 'task_struct';
  expect(btf.typeName(btf.member(task, 'pid')!.typeId)).toBe('pid_t');
  expect(btf.typeName(btf.member(task, 'tgid')!.typeId)).toBe('pid_t');
  expect(btf.typeName(btf.member(task, 'comm')!.typeId)).toBe('char [16]');
  expect(btf.typeName(btf.member(task, 'tasks')!.typeId)).toBe('struct list_head');
  expect(btf.typeName(btf.member(task, 'real_parent')!.typeId)).toBe('struct task_struct *');
  expect(btf.typeName(btf.member(task, 'cred')!.typeId)).toBe('const struct cred *');
  // Members that sit inside anonymous structs/unions in task_struct are still found.
  expect(btf.member(task, 'tasks.next')!.bitOffset).toBe(btf.member(task, 'tasks')!.bitOffset);
  expect(btf.resolved(btf.member(task, 'pid')!.typeId)).toMatchObject({ kind: 'int', size: 4, signed: true });

  // include/linux/module.h: char name[MODULE_NAME_LEN] with MODULE_NAME_LEN = 64 - sizeof(unsigned long)
  expect(btf.typeName(btf.member('module', 'name')!.typeId)).toBe('char [56]');

  // include/linux/pid.h: enum pid_type { PIDTYPE_PID, PIDTYPE_TGID, PIDTYPE_PGID, PIDTYPE_SID, PIDTYPE_MAX }
  expect(btf.enumValue('pid_type', 'PIDTYPE_PID')).toBe(0n);
  expect(btf.enumValue('enum pid_type', 'PIDTYPE_TGID')).toBe(1n);
  expect(btf.enumValue('pid_type', 'PIDTYPE_MAX')).toBe(4n);

  // fs/read_write.c: ssize_t vfs_read(struct file *file, char __user *buf, size_t count, loff_t *pos)
  const vfsRead = btf.findFunc('vfs_read')!;
  expect(vfsRead.params.map((p) => p.name)).toEqual(['file', 'buf', 'count', 'pos']);
  expect(vfsRead.params.map((p) => btf.typeName(p.typeId))).toEqual(['struct file *', 'char *', 'size_t', 'loff_t *']);
  expect(btf.typeName(vfsRead.returnTypeId)).toBe('ssize_t');
  expect(vfsRead.variadic).toBe(false);

  // kernel/sched/core.c: DEFINE_PER_CPU_SHARED_ALIGNED(struct rq, runqueues)
  const rq = btf.findVar('runqueues')!;
  expect(rq.section).toBe('.data..percpu');
  expect(btf.typeName(rq.typeId)).toBe('struct rq');
  expect(rq.size).toBe(btf.sizeof('struct rq'));

  // kernel/printk/printk.c: asmlinkage int _printk(const char *fmt, ...)
  const printk = btf.findFunc('_printk')!;
  expect(printk.variadic).toBe(true);
  expect(btf.declare(printk.id, '')).toBe('int _printk(const char *fmt, ...)');

  const layout = formatLayout(structLayout(btf, 'list_head'));
  expect(layout[0]).toBe('struct list_head {');
  expect(layout).toContain('\t/* size: 16, cachelines: 1, members: 2 */');
}

const INT_ENCODINGS: Record<string, number> = { '(none)': 0, SIGNED: 1, CHAR: 2, BOOL: 4 };

/** Our decoding of a type, as one canonical line. */
function ours(t: BtfType): string {
  const head = `${t.kind} '${t.name}'`;
  switch (t.kind) {
    case 'int':
      return `${head} ${t.size} ${t.bitOffset} ${t.bits} ${(t.signed ? 1 : 0) | (t.char ? 2 : 0) | (t.bool ? 4 : 0)}`;
    case 'ptr':
    case 'typedef':
    case 'const':
    case 'volatile':
    case 'restrict':
    case 'type_tag':
      return `${head} ${t.typeId}`;
    case 'array':
      return `${head} ${t.typeId} ${t.indexTypeId} ${t.nelems}`;
    case 'struct':
    case 'union':
      return `${head} ${t.size} ${t.members.map((m) => `${m.name}:${m.typeId}@${m.bitOffset}/${m.bitfieldSize}`).join(' ')}`;
    case 'enum':
      return `${head} ${t.size} ${t.signed} ${t.values.map((v) => `${v.name}=${v.value}`).join(' ')}`;
    case 'enum64':
      return `${head} ${t.size} ${t.signed} ${t.values.map((v) => `${v.name}=${v.value}${t.signed ? 'LL' : 'ULL'}`).join(' ')}`;
    case 'fwd':
      return `${head} ${t.fwdKind}`;
    case 'func':
    case 'var':
      return `${head} ${t.typeId} ${t.linkage}`;
    case 'func_proto':
      return `${head} ${t.returnTypeId} ${t.params.map((p) => `${p.name}:${p.typeId}`).join(' ')}${t.variadic ? ' ...' : ''}`;
    case 'datasec':
      return `${head} ${t.size} ${t.vars.map((v) => `${v.typeId}@${v.offset}+${v.size}`).join(' ')}`;
    case 'float':
      return `${head} ${t.size}`;
    case 'decl_tag':
      return `${head} ${t.typeId} ${t.componentIdx}`;
    case 'void':
      return head;
  }
}

/** bpftool's view of the same type, as the same canonical line. */
function theirs(r: RawType): string {
  const f = r.fields;
  const kind = r.kind.toLowerCase();
  const head = `${kind} '${r.name}'`;
  const items = r.items;
  switch (kind) {
    case 'int':
      return `${head} ${f.size} ${f.bits_offset} ${f.nr_bits} ${INT_ENCODINGS[f.encoding!]}`;
    case 'array':
      return `${head} ${f.type_id} ${f.index_type_id} ${f.nr_elems}`;
    case 'struct':
    case 'union':
      return `${head} ${f.size} ${items.map((m) => `${m.name}:${m.fields.type_id}@${m.fields.bits_offset}/${m.fields.bitfield_size ?? 0}`).join(' ')}`;
    case 'enum':
    case 'enum64':
      return `${head} ${f.size} ${f.encoding === 'SIGNED'} ${items.map((v) => `${v.name}=${v.fields.val}`).join(' ')}`;
    case 'fwd':
      return `${head} ${f.fwd_kind}`;
    case 'func':
    case 'var':
      return `${head} ${f.type_id} ${f.linkage}`;
    case 'func_proto': {
      // bpftool lists the C `...` as a last nameless parameter of type 0.
      const last = items[items.length - 1];
      const variadic = last !== undefined && last.name === '' && last.fields.type_id === '0';
      const params = variadic ? items.slice(0, -1) : items;
      return `${head} ${f.ret_type_id} ${params.map((p) => `${p.name}:${p.fields.type_id}`).join(' ')}${variadic ? ' ...' : ''}`;
    }
    case 'datasec':
      return `${head} ${f.size} ${items.map((v) => `${v.fields.type_id}@${v.fields.offset}+${v.fields.size}`).join(' ')}`;
    case 'float':
      return `${head} ${f.size}`;
    case 'decl_tag':
      return `${head} ${f.type_id} ${f.component_idx}`;
    default:
      return `${head} ${f.type_id}`;
  }
}

/** Every type bpftool prints must decode to the same thing here. Returns the number compared. */
function compareWithBpftool(btf: Btf, raw: RawType[]): number {
  expect(raw.length).toBe(btf.typeCount - btf.firstId);
  const mismatches: string[] = [];
  for (const r of raw) {
    const mine = ours(btf.typeById(r.id));
    const want = theirs(r);
    if (mine !== want && mismatches.length < 10) mismatches.push(`[${r.id}]\n  ours:    ${mine}\n  bpftool: ${want}`);
  }
  expect(mismatches).toEqual([]);
  return raw.length;
}

describe.skipIf(!hostPresent)('host kernel BTF (/sys/kernel/btf/vmlinux)', () => {
  let btf: Btf;
  beforeAll(() => {
    btf = Btf.parse(readFileSync(HOST_BTF));
  });

  it('parses, with the kernel facts', () => {
    expect(btf.typeCount).toBeGreaterThan(50_000);
    checkKernelFacts(btf);
  });

  it('every type name of a struct resolves back to that struct', () => {
    let n = 0;
    for (const id of btf.ids('struct')) {
      const name = btf.typeById(id).name;
      if (name === '' || n > 2000) continue;
      n++;
      expect(btf.findTypeIds(`struct ${name}`)).toContain(id);
    }
    expect(n).toBeGreaterThan(1000);
  });

  it.skipIf(!bpftool)('decodes every type as bpftool does', () => {
    const n = compareWithBpftool(btf, parseBpftoolRaw(bpftoolRaw(HOST_BTF)!));
    expect(n).toBe(btf.typeCount - 1);
  }, 120_000);
});

describe.skipIf(!labPresent)(`Debian lab kernel BTF (6.1)`, () => {
  let vmlinuxPath: string;
  let btf: Btf;
  beforeAll(() => {
    vmlinuxPath = labVmlinux()!;
    btf = Btf.parse(extractBtfFromElf(readFileSync(vmlinuxPath)));
  }, 120_000);

  it('parses the .BTF of the unpacked vmlinux, with the kernel facts', () => {
    expect(btf.typeCount).toBeGreaterThan(50_000);
    checkKernelFacts(btf);
    // include/linux/sched.h (6.1): enum { TASK_COMM_LEN = 16 }, an anonymous enum.
    expect(btf.enumValue(null, 'TASK_COMM_LEN')).toBe(16n);
  });

  it.skipIf(!bpftool)('decodes every type as bpftool does', () => {
    const n = compareWithBpftool(btf, parseBpftoolRaw(bpftoolRaw(vmlinuxPath)!));
    expect(n).toBe(btf.typeCount - 1);
  }, 120_000);

  for (const mod of ['vfat.ko', 'fat.ko']) {
    const path = join(LAB_MODULES, mod);
    it(`split BTF of ${mod}`, () => {
      const m = Btf.parse(extractBtfFromElf(readFileSync(path)), btf);
      expect(m.firstId).toBe(btf.typeCount);
      expect(m.typeCount).toBeGreaterThan(m.firstId);
      // Base types seen through the module, module types that use them.
      expect(m.sizeof('struct list_head')).toBe(16);
      // include/uapi/linux/msdos_fs.h: struct msdos_dir_entry is 32 bytes, name[11] first.
      expect(m.sizeof('struct msdos_dir_entry')).toBe(32);
      expect(m.typeName(m.member('msdos_dir_entry', 'name')!.typeId)).toBe('__u8 [11]');
      expect(m.memberOffset('msdos_dir_entry', 'attr')).toBe(11);
      if (mod === 'fat.ko') {
        // fs/fat/fat.h: struct msdos_sb_info is fat's own, absent from vmlinux.
        expect(btf.findTypeId('struct msdos_sb_info')).toBeUndefined();
        expect(m.findTypeId('struct msdos_sb_info')).toBeGreaterThanOrEqual(m.firstId);
      }
      if (bpftool) compareWithBpftool(m, parseBpftoolRaw(bpftoolRaw(path, vmlinuxPath)!));
    }, 120_000);
  }
});
