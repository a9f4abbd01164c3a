/**
 * vmlens as a library: attach to a guest, open its kernel, read typed objects and run analyses.
 * The CLI (src/cli) is one user of exactly this API.
 */
export { attachQemu, type QemuMachine } from './machine/qemu.ts';
export { openDump } from './machine/dump.ts';
export type { Machine, VcpuState, PagingMode } from './machine/types.ts';
export type { PhysicalMemory, PhysRange, RamWindow } from './source/types.ts';
export { AddressSpace } from './mmu/address-space.ts';
export { addressSpaceFor, readerFor } from './mmu/from-vcpu.ts';
export { openKernel, type OpenKernelOptions } from './kernel/open.ts';
export { Kernel, type KernelLayout } from './kernel/kernel.ts';
export { KObject } from './kernel/object.ts';
export { Btf } from './kernel/btf/index.ts';
export { listForEach, listForEachEntry, hlistForEachEntry, ListCursor } from './kernel/helpers/list.ts';
export { listTasks, type TaskRow } from './analyses/ps.ts';
export { listModules, type ModuleRow } from './analyses/lsmod.ts';
export { readLog, type LogRecord } from './analyses/dmesg.ts';
export { uname, type UnameRow } from './analyses/uname.ts';
export { buildTree } from './analyses/pstree.ts';
export * from './util/errors.ts';
