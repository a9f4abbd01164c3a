/**
 * A miniature kernel's BTF, written with the test writer: every kind at least once, in the
 * shapes the kernel uses them (self-referencing lists, anonymous unions, bitfields,
 * forward-declared structs, function pointers, per-CPU variables).
 */
import { BtfWriter } from './writer.ts';

export interface Mini {
  blob: Uint8Array;
  writer: BtfWriter;
  ids: Record<string, number>;
}

export function buildMini(opts: { bigEndian?: boolean } = {}): Mini {
  const w = new BtfWriter();
  const ids: Record<string, number> = {};
  ids.int = w.int('int', 4, { signed: true });
  ids.uint = w.int('unsigned int', 4);
  ids.ulong = w.int('long unsigned int', 8);
  ids.long = w.int('long int', 8, { signed: true });
  ids.llong = w.int('long long int', 8, { signed: true });
  ids.char = w.int('char', 1, { signed: true, char: true });
  ids.bool = w.int('_Bool', 1, { bool: true });
  ids.u128 = w.int('__int128 unsigned', 16);
  ids.double = w.float('double', 8);

  // struct list_head { struct list_head *next, *prev; }
  ids.list_head = w.nextId;
  ids.list_head_ptr = ids.list_head + 1;
  w.struct('list_head', 16, [
    { name: 'next', type: ids.list_head_ptr, bitOffset: 0 },
    { name: 'prev', type: ids.list_head_ptr, bitOffset: 64 },
  ]);
  w.ptr(ids.list_head);

  ids.pid_t = w.typedef('pid_t', ids.int);
  ids.comm = w.array(ids.char, ids.int, 16);
  ids.cred_fwd = w.fwd('cred');
  ids.const_cred = w.const(ids.cred_fwd);
  ids.const_cred_ptr = w.ptr(ids.const_cred);
  ids.union_fwd = w.fwd('bpf_attr', true);

  // union { int u_int; struct { unsigned long inner_a; unsigned long inner_b; }; }
  ids.anon_struct = w.struct('', 16, [
    { name: 'inner_a', type: ids.ulong, bitOffset: 0 },
    { name: 'inner_b', type: ids.ulong, bitOffset: 64 },
  ]);
  ids.anon_union = w.union('', 16, [
    { name: 'u_int', type: ids.int, bitOffset: 0 },
    { name: '', type: ids.anon_struct, bitOffset: 0 },
  ]);

  // struct task_struct: a hole, bitfields, an anonymous union, a self pointer, tail padding.
  ids.task_struct = w.nextId;
  ids.task_struct_ptr = ids.task_struct + 1;
  w.struct('task_struct', 88, [
    { name: '__state', type: ids.uint, bitOffset: 0 },
    { name: 'in_execve', type: ids.uint, bitOffset: 32, bitfieldSize: 1 },
    { name: 'in_iowait', type: ids.uint, bitOffset: 33, bitfieldSize: 2 },
    { name: 'pid', type: ids.pid_t, bitOffset: 64 },
    { name: 'tgid', type: ids.pid_t, bitOffset: 96 },
    { name: 'tasks', type: ids.list_head, bitOffset: 128 },
    { name: 'real_parent', type: ids.task_struct_ptr, bitOffset: 256 },
    { name: '', type: ids.anon_union, bitOffset: 320 },
    { name: 'comm', type: ids.comm, bitOffset: 448 },
    { name: 'cred', type: ids.const_cred_ptr, bitOffset: 576 },
  ]);
  w.ptr(ids.task_struct);
  ids.task_t = w.typedef('task_t', ids.task_struct);
  ids.const_task_t = w.const(ids.task_t);

  ids.pid_type = w.enum('pid_type', 4, [
    ['PIDTYPE_PID', 0],
    ['PIDTYPE_TGID', 1],
    ['PIDTYPE_PGID', 2],
    ['PIDTYPE_SID', 3],
    ['PIDTYPE_MAX', 4],
  ]);
  ids.anon_enum = w.enum('', 4, [['TASK_COMM_LEN', 16], ['BIG_U32', 0xfffffff0]]);
  ids.signed_enum = w.enum('signed_e', 4, [['NEG_ONE', -1]], true);
  ids.enum64 = w.enum64('big64', 8, [['BIG_U', 0xffff_ffff_ffff_fffen], ['SMALL', 5n]]);
  ids.enum64s = w.enum64('big64s', 8, [['BIG_S', -2n]], true);

  ids.volatile_int = w.volatile(ids.int);
  ids.char_ptr = w.ptr(ids.char);
  ids.restrict_char_ptr = w.restrict(ids.char_ptr);
  ids.const_char_ptr_const = w.const(ids.char_ptr);
  ids.user_tag = w.typeTag('user', ids.char);
  ids.user_char_ptr = w.ptr(ids.user_tag);

  // ssize_t vfs_read(struct file *file, char *buf, size_t count, loff_t *pos)
  ids.file_fwd = w.fwd('file');
  ids.file_ptr = w.ptr(ids.file_fwd);
  ids.ssize_t = w.typedef('ssize_t', ids.long);
  ids.size_t = w.typedef('size_t', ids.ulong);
  ids.loff_t = w.typedef('loff_t', ids.llong);
  ids.loff_ptr = w.ptr(ids.loff_t);
  ids.vfs_read_proto = w.funcProto(ids.ssize_t, [
    ['file', ids.file_ptr],
    ['buf', ids.char_ptr],
    ['count', ids.size_t],
    ['pos', ids.loff_ptr],
  ]);
  ids.vfs_read = w.func('vfs_read', ids.vfs_read_proto, 1);
  ids.kfunc_tag = w.declTag('bpf_kfunc', ids.vfs_read, -1);
  ids.param_tag = w.declTag('nonnull', ids.vfs_read, 1);
  ids.static_dup1 = w.func('dup_helper', w.funcProto(0, []), 0);
  ids.static_dup2 = w.func('dup_helper', w.funcProto(ids.int, [['x', ids.int]]), 0);

  // int (*open)(struct file *, ...) inside struct file_operations
  ids.open_proto = w.funcProto(ids.int, [['', ids.file_ptr]], true);
  ids.open_ptr = w.ptr(ids.open_proto);
  ids.fops = w.struct('file_operations', 8, [{ name: 'open', type: ids.open_ptr, bitOffset: 0 }]);
  ids.void_ptr = w.ptr(0);
  ids.ptr_array = w.array(ids.list_head_ptr, ids.int, 4);
  ids.ptr_to_array = w.ptr(ids.comm);
  ids.matrix = w.array(ids.comm, ids.int, 3);

  ids.runqueues = w.var('runqueues', ids.task_struct, 1);
  ids.cpu_number = w.var('cpu_number', ids.int, 0);
  ids.jiffies = w.var('jiffies', ids.ulong, 2);
  ids.percpu = w.datasec('.data..percpu', 4096, [
    { type: ids.cpu_number, offset: 0, size: 4 },
    { type: ids.runqueues, offset: 128, size: 88 },
  ]);

  // A struct and a typedef of the same name; a bare name prefers the struct.
  ids.twin_struct = w.struct('twin', 4, [{ name: 'x', type: ids.int, bitOffset: 0 }]);
  ids.twin_typedef = w.typedef('twin', ids.int);

  return { blob: w.build({ bigEndian: opts.bigEndian }), writer: w, ids };
}
