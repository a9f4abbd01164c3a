/**
 * Memory acquisition: a guest's RAM written to a file that vmlens (and Volatility, LiME-aware
 * tools, crash for ELF cores) can open later with --dump. Three formats:
 * - lime: LiME's range headers, each RAM range with its guest-physical address (compact, exact);
 * - raw: file offset = guest-physical address, holes between ranges left sparse (pmemsave-like);
 * - elf: the hypervisor's own core (QEMU dump-guest-memory), which adds every vCPU's registers
 *   and VMCOREINFO — live QEMU guests only.
 */
import { writeLime } from '../source/lime.ts';
import { writeRaw } from '../source/raw.ts';
import { UsageError } from '../util/errors.ts';
import type { Machine } from './types.ts';

export const DUMP_FORMATS = ['lime', 'raw', 'elf'] as const;
export type DumpFileFormat = (typeof DUMP_FORMATS)[number];

/** The format a file name suggests (.lime, .raw/.mem/.bin, .elf/.core/.vmcore), else LiME. */
export function formatForPath(path: string): DumpFileFormat {
  const ext = /\.([a-z]+)$/i.exec(path)?.[1]?.toLowerCase();
  if (ext === 'raw' || ext === 'mem' || ext === 'bin' || ext === 'img') return 'raw';
  if (ext === 'elf' || ext === 'core' || ext === 'vmcore') return 'elf';
  return 'lime';
}

export function parseDumpFormat(text: string): DumpFileFormat {
  const f = text.toLowerCase();
  if ((DUMP_FORMATS as readonly string[]).includes(f)) return f as DumpFileFormat;
  throw new UsageError(`unknown dump format '${text}' (${DUMP_FORMATS.join(', ')})`);
}

/** Refuse, before anything is paused or written, a format the machine cannot give. */
export function assertCanAcquire(machine: Machine, format: DumpFileFormat): void {
  if (format === 'elf' && !machine.writeElfCore) throw new UsageError(`an ELF core is written by QEMU itself: ${machine.name} is not a live QEMU guest (write lime or raw)`);
}

/** Write the guest's RAM to `path` in `format`; `progress(done, total)` in bytes. */
export async function acquireMemory(machine: Machine, path: string, format: DumpFileFormat, progress?: (done: number, total: number) => void): Promise<void> {
  assertCanAcquire(machine, format);
  switch (format) {
    case 'lime':
      return writeLime(path, machine.memory, progress);
    case 'raw':
      return writeRaw(path, machine.memory, progress);
    case 'elf':
      return machine.writeElfCore!(path, progress);
  }
}
