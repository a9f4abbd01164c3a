import { fstatSync } from 'node:fs';
import { openElfCore, ELF_MAGIC, type ElfCoreInfo } from '../source/elf-core.ts';
import { PAGE_SIZE } from '../source/extents.ts';
import { looksLikeLime, openLime } from '../source/lime.ts';
import { closeQuietly, openReadOnly, preadUpTo } from '../source/open-file.ts';
import { openRaw } from '../source/raw.ts';
import type { PhysicalMemory } from '../source/types.ts';
import { TargetError } from '../util/errors.ts';
import type { Warnings } from '../util/warnings.ts';
import type { Machine, VcpuState } from './types.ts';
import { vcpusFromCore } from './vcpu-state.ts';

/**
 * A memory dump as a Machine: an ELF core (QEMU dump-guest-memory, kdump), a LiME image, or a
 * raw image, told apart by content. Only ELF cores carry vCPU state; for the others `vcpus()`
 * is empty and the layers above find the page tables by scanning.
 */

export type DumpFormat = 'elf-core' | 'lime' | 'raw';

export interface DumpOptions {
  /** Map the file for zero-copy reads (default true). */
  readonly map?: boolean;
  readonly warnings?: Warnings;
}

export class DumpMachine implements Machine {
  readonly live = false;

  constructor(
    readonly memory: PhysicalMemory,
    readonly name: string,
    readonly format: DumpFormat,
    private readonly cpus: readonly VcpuState[],
    /** ELF cores: headers and notes as found. */
    readonly core?: ElfCoreInfo,
  ) {}

  /** The guest's VMCOREINFO text, when the dump has the note (QEMU with -device vmcoreinfo, kdump). */
  async vmcoreinfo(): Promise<string | undefined> {
    return this.core?.notes.vmcoreinfo;
  }

  async vcpus(): Promise<VcpuState[]> {
    return [...this.cpus];
  }

  async isPaused(): Promise<boolean> {
    return true;
  }

  async close(): Promise<void> {
    this.memory.close();
  }
}

/** Tell the format from the first bytes; raw is what is left, if its size is whole pages. */
export function detectDumpFormat(path: string): DumpFormat {
  const fd = openReadOnly(path);
  try {
    const size = fstatSync(fd).size;
    const head = preadUpTo(fd, 16, 0);
    if (head.length >= 4 && head.readUInt32LE(0) === ELF_MAGIC) return 'elf-core';
    if (looksLikeLime(head)) return 'lime';
    if (size === 0) throw new TargetError(`${path}: empty file`);
    if (size % PAGE_SIZE !== 0) {
      throw new TargetError(`${path}: not a memory dump (neither ELF core nor LiME, and ${size} bytes is not a whole number of pages for a raw image)`);
    }
    return 'raw';
  } finally {
    closeQuietly(fd);
  }
}

export async function openDump(path: string, opts: DumpOptions = {}): Promise<DumpMachine> {
  const format = detectDumpFormat(path);
  switch (format) {
    case 'elf-core': {
      const { memory, info } = await openElfCore(path, opts);
      return new DumpMachine(memory, path, format, vcpusFromCore(info), info);
    }
    case 'lime':
      return new DumpMachine(await openLime(path, opts), path, format, []);
    case 'raw':
      return new DumpMachine(await openRaw(path, opts), path, format, []);
  }
}
