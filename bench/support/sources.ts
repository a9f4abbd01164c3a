/**
 * The three ways vmlens reaches a live guest's RAM, opened on the benchmark guest one after
 * another (QEMU serves one client per QMP socket): the shared RAM file (zero-copy mapping), the
 * QEMU process's memory (/proc/PID/mem, process_vm_readv) and QEMU's gdbstub.
 *
 * The kernel (symbols, types, layout) is found once, through the shared file; each source gets a
 * Kernel that shares those and reads through its own memory, so the benchmark times reading,
 * not finding the kernel again (which `attach` measures separately, per source, from cold).
 */
import { Kernel } from '../../src/kernel/kernel.ts';
import { openKernel } from '../../src/kernel/open.ts';
import { attachQemu, type QemuMachine } from '../../src/machine/qemu.ts';
import { AddressSpace } from '../../src/mmu/address-space.ts';
import { readerFor } from '../../src/mmu/from-vcpu.ts';
import type { PhysicalMemory, RamWindow } from '../../src/source/types.ts';

export type SourceKind = 'file' | 'proc' | 'gdb';
export const SOURCE_KINDS: readonly SourceKind[] = ['file', 'proc', 'gdb'];
export const SOURCE_LABELS: Readonly<Record<SourceKind, string>> = {
  file: 'shared RAM file',
  proc: '/proc/PID/mem',
  gdb: 'gdbstub',
};

export interface OpenSource {
  readonly kind: SourceKind;
  readonly machine: QemuMachine;
  readonly memory: PhysicalMemory;
  /** The kernel read through this source (the machine's shared PhysReader, live). */
  readonly kernel: Kernel;
}

/** Attach to the guest through one source; the kernel found afresh, or shared with `base`. */
export async function openSource(qmpSocket: string, kind: SourceKind, base?: Kernel): Promise<OpenSource> {
  const machine = await attachQemu(qmpSocket, { source: kind, name: `bench (${kind})` });
  try {
    if (kind === 'file' && !machine.memory.windows) {
      throw new Error('the shared RAM file could not be mapped: the benchmark needs its zero-copy windows');
    }
    const kernel = base ? kernelOver(machine, base) : await openKernel(machine);
    return { kind, machine, memory: machine.memory, kernel };
  } catch (e) {
    await machine.close();
    throw e;
  }
}

/** A Kernel with `base`'s symbols, types and layout, reading through `machine`'s memory. */
export function kernelOver(machine: QemuMachine, base: Kernel): Kernel {
  const space = new AddressSpace(readerFor(machine), base.layout.root, base.layout.levels);
  return new Kernel({ machine, space, btf: base.btf, symbols: base.symbols, layout: base.layout });
}

/**
 * Where guest-physical addresses sit in the shared file's windows, for reading them with no
 * translation at all (the physical limit): per address, the window's u32 view and the index of
 * its first u32 there.
 */
export interface PhysicalIndex {
  readonly words: Uint32Array[];
  readonly index: Uint32Array;
}

export function physicalIndex(windows: readonly RamWindow[], pas: ArrayLike<number>): PhysicalIndex {
  const words: Uint32Array[] = [];
  const index = new Uint32Array(pas.length);
  for (let i = 0; i < pas.length; i++) {
    const pa = pas[i]!;
    const w = windows.find((x) => pa >= x.start && pa + 8 <= x.start + x.size);
    if (!w) throw new Error(`physical 0x${pa.toString(16)} is in no window`);
    words.push(w.u32);
    index[i] = Math.floor((pa - w.start) / 4);
  }
  return { words, index };
}
