/**
 * `vmlens rmmod NAME`: a module unloaded through delete_module(2) itself, so that the kernel's
 * own rules apply (kernel/module/main.c): it refuses a module other modules depend on or that
 * holds references (-EWOULDBLOCK), one without an exit function or not live (-EBUSY), and any
 * unload while modules_disabled is set (-EPERM); otherwise it runs the module's exit function,
 * tells the notifier chain, and frees the module.
 *
 * The system call reads the name from user memory and checks CAP_SYS_MODULE of its caller, so
 * vmlens borrows a task that has that capability and a user address space, and in it calls
 *
 *   addr = vm_mmap(NULL, 0, PAGE_SIZE, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, 0);
 *   _copy_to_user(addr, "name", len + 1);   // 0 = all copied
 *   __x64_sys_delete_module(&regs);      // regs.di = addr, regs.si = O_NONBLOCK, as rmmod(8)
 *   vm_munmap(addr, PAGE_SIZE);
 *
 * The page belongs to the borrowed process for the duration of the call only.
 */
import { forEachModule, moduleName } from '../analyses/lsmod.ts';
import type { Kernel } from '../kernel/kernel.ts';
import { listForEachEntry } from '../kernel/helpers/list.ts';
import { TargetError, UsageError } from '../util/errors.ts';
import type { CallArg } from './call/args.ts';
import { describeErrno, Errno, MAX_ERRNO } from './call/errno.ts';
import { requireFunction, type KernelFunction } from './call/index.ts';
import { CAP_SYS_MODULE, withCapability } from './call/safe-point.ts';
import { withKernelCalls, type CallSessionOptions, type KernelCalls } from './call/session.ts';

/** MODULE_NAME_LEN (64 - sizeof(unsigned long)) less the NUL. */
const MAX_MODULE_NAME = 55;
const PAGE_SIZE = 4096n;
const PROT_READ_WRITE = 0x3n;
const MAP_PRIVATE_ANONYMOUS = 0x22n;
/** What rmmod(8) passes; the kernel no longer waits either way. */
const O_NONBLOCK = 0o4000n;

export interface ModuleState {
  readonly name: string;
  /** Reference count as /proc/modules shows it. */
  readonly refcount: number;
  readonly usedBy: readonly string[];
}

/** A loaded module by name ('-' and '_' alike, as rmmod(8) treats them), or undefined. */
export function findModule(k: Kernel, name: string): ModuleState | undefined {
  const want = name.replace(/-/g, '_');
  for (const mod of forEachModule(k)) {
    if (moduleName(mod) !== want) continue;
    const usedBy: string[] = [];
    if (mod.hasMember('source_list')) {
      for (const use of listForEachEntry(mod.member('source_list'), 'struct module_use', 'source_list', { what: 'module users', limit: 4096 })) {
        usedBy.push(moduleName(use.member('source')));
      }
    }
    return { name: want, refcount: mod.member('refcnt').member('counter').num() - 1, usedBy };
  }
  return undefined;
}

export interface RmmodOptions extends Omit<CallSessionOptions, 'command' | 'taskFilter'> {
  readonly command?: string;
  /** Check everything, unload nothing. */
  readonly dryRun?: boolean;
}

export interface RmmodResult {
  readonly name: string;
  /** False for a dry run. */
  readonly unloaded: boolean;
  /** The task whose context the system call ran in. */
  readonly task?: { readonly pid: number; readonly comm: string };
}

interface Plan {
  readonly mmap: KernelFunction;
  readonly munmap: KernelFunction;
  readonly copyToUser: KernelFunction;
  readonly deleteModule: KernelFunction;
  /** struct pt_regs size and the offsets of di, si, orig_ax; undefined for a plain sys_delete_module. */
  readonly regs?: { readonly size: number; readonly di: number; readonly si: number; readonly origAx: number };
}

function plan(k: Kernel): Plan {
  const base = {
    mmap: requireFunction(k, 'vm_mmap', ['pointer', 'integer', 'integer', 'integer', 'integer', 'integer']),
    munmap: requireFunction(k, 'vm_munmap', ['integer', 'integer']),
    // Out of line unless the architecture inlines it; copy_to_user_nofault (5.8+) otherwise.
    copyToUser: requireFunction(k, k.hasSymbol('_copy_to_user') ? '_copy_to_user' : 'copy_to_user_nofault', ['pointer', 'pointer', 'integer']),
  };
  if (k.hasSymbol('__x64_sys_delete_module')) {
    return {
      ...base,
      deleteModule: requireFunction(k, '__x64_sys_delete_module', ['pointer']),
      regs: {
        size: k.btf.sizeof('struct pt_regs'),
        di: k.offsetOf('pt_regs', 'di'),
        si: k.offsetOf('pt_regs', 'si'),
        origAx: k.offsetOf('pt_regs', 'orig_ax'),
      },
    };
  }
  // Kernels before 4.17 take the system call's arguments directly.
  return { ...base, deleteModule: requireFunction(k, 'sys_delete_module', ['pointer', 'integer']) };
}

const value = (v: bigint): CallArg => ({ kind: 'value', value: v });

function ptRegs(layout: NonNullable<Plan['regs']>, di: bigint, si: bigint): Uint8Array {
  const bytes = new Uint8Array(layout.size);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(layout.di, di, true);
  view.setBigUint64(layout.si, si, true);
  // __NR_delete_module on x86-64, as the entry code would have recorded it.
  view.setBigUint64(layout.origAx, 176n, true);
  return bytes;
}

/** Run delete_module(2) for `name` in the borrowed task; returns its result (0 or -errno). */
async function deleteModuleIn(calls: KernelCalls, p: Plan, name: string): Promise<number> {
  const addr = await calls.call('vm_mmap', p.mmap.address, [value(0n), value(0n), value(PAGE_SIZE), value(PROT_READ_WRITE), value(MAP_PRIVATE_ANONYMOUS), value(0n)]);
  if (addr >= (1n << 64n) - BigInt(MAX_ERRNO)) {
    throw new TargetError(`could not map a page in task ${calls.point.task.pid} for the module name: ${describeErrno(Number(BigInt.asIntN(64, addr)))}; nothing was changed`);
  }
  try {
    const nameBytes = new Uint8Array(Buffer.from(`${name}\0`, 'latin1'));
    const left = await calls.call(p.copyToUser.name, p.copyToUser.address, [value(addr), { kind: 'bytes', bytes: nameBytes }, value(BigInt(nameBytes.length))]);
    if (left !== 0n) throw new TargetError(`could not copy the module name to task ${calls.point.task.pid}'s memory; nothing was changed`);
    const args: CallArg[] = p.regs ? [{ kind: 'bytes', bytes: ptRegs(p.regs, addr, O_NONBLOCK) }] : [value(addr), value(O_NONBLOCK)];
    const rax = await calls.call(p.deleteModule.name, p.deleteModule.address, args);
    return Number(BigInt.asIntN(64, rax));
  } finally {
    if (!calls.taskAbandoned) await calls.call('vm_munmap', p.munmap.address, [value(addr), value(PAGE_SIZE)]);
  }
}

function refusal(state: ModuleState, ret: number): string {
  const n = state.name;
  switch (-ret) {
    case Errno.EAGAIN:
      if (state.usedBy.length > 0) return `module ${n} is in use by ${state.usedBy.join(', ')}; nothing was changed`;
      return `module ${n} is in use (${state.refcount} reference${state.refcount === 1 ? '' : 's'}); nothing was changed`;
    case Errno.EBUSY:
      return `module ${n} cannot be unloaded now (it has no exit function, or is still loading or already going away); nothing was changed`;
    case Errno.ENOENT:
      return `module ${n} is not loaded`;
    case Errno.EPERM:
      return `the kernel refuses to unload modules (kernel.modules_disabled is set); nothing was changed`;
    case Errno.EINTR:
      return `interrupted while waiting for the kernel's module lock; nothing was changed`;
    default:
      return `the kernel refused to unload ${n}: ${describeErrno(ret)}`;
  }
}

/** Unload a module. A module that is not loaded, or one the kernel refuses to unload, is a clear error. */
export async function removeModule(k: Kernel, name: string, opts: RmmodOptions = {}): Promise<RmmodResult> {
  const want = name.replace(/-/g, '_');
  if (!/^[A-Za-z0-9_]+$/.test(want) || want.length > MAX_MODULE_NAME) throw new UsageError(`'${name}' is not a module name`);
  const state = findModule(k, want);
  if (!state) throw new UsageError(`module ${want} is not loaded; nothing was changed`);
  const p = plan(k);
  if (opts.dryRun) return { name: want, unloaded: false };
  const task = await withKernelCalls(
    k,
    {
      ...opts,
      command: opts.command ?? `rmmod ${want}`,
      taskFilter: withCapability(CAP_SYS_MODULE, 'CAP_SYS_MODULE'),
      taskDescription: 'in a task with CAP_SYS_MODULE',
    },
    async (calls) => {
      const ret = await deleteModuleIn(calls, p, want);
      // Thrown inside the session, so that the audit log records the refusal with the call.
      if (ret !== 0) throw new TargetError(refusal(state, ret));
      return { pid: calls.point.task.pid, comm: calls.point.task.comm };
    },
  );
  return { name: want, unloaded: true, task };
}
