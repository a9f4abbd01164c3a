import { GuestDataError, UsageError } from '../../util/errors.ts';
import type { Warnings } from '../../util/warnings.ts';
import { loadKallsyms } from '../kallsyms/decode.ts';
import type { Kallsyms } from '../kallsyms/kallsyms.ts';
import { hex, type VaRange } from '../kallsyms/reader.ts';
import { readBanner, readUtsName, type UtsName } from './banner.ts';
import { findKernelImage, idtHandlers, type MappedImage } from './image.ts';
import { readMemoryLayout, type MemoryLayout } from './layout.ts';
import { DEFAULT_TEXT_BASE, KERNEL_MAP_END, START_KERNEL_MAP, type KernelSpace } from './space.ts';

export type { KernelSpace } from './space.ts';
export type { MappedImage } from './image.ts';
export type { MemoryLayout } from './layout.ts';
export type { UtsName } from './banner.ts';
export { findKernelImage, idtHandlers } from './image.ts';

export interface LocateOptions {
  /** 4 or 5: decides the unrandomized region bases and where KASLR may put them. */
  readonly pagingLevels: 4 | 5;
  /** Hints from a vCPU. Each is used only if it points where the kernel text can be. */
  readonly rip?: bigint;
  readonly idtBase?: bigint;
  /** GS base while in kernel mode (or IA32_KERNEL_GS_BASE while in user mode): the per-CPU area. */
  readonly gsBase?: bigint;
  readonly warnings?: Warnings;
}

/** Where the kernel is, and what it says about itself. */
export interface KernelLocation {
  /** _text: the start of the kernel image, after KASLR. */
  readonly textBase: bigint;
  /** textBase minus the default link address 0xffffffff81000000 (what the kernel calls its "Kernel Offset"). */
  readonly kaslrOffset: bigint;
  /** Guest-physical address _text is loaded at. */
  readonly physBase: number;
  /** _end: the end of the image (bss and brk included). */
  readonly imageEnd: bigint;
  /** What the page tables map of the image. */
  readonly mapped: MappedImage;
  readonly layout: MemoryLayout;
  /** linux_banner, e.g. "Linux version 6.1.0-… (…) #1 SMP …". */
  readonly banner: string | undefined;
  readonly uts: UtsName | undefined;
  readonly kallsyms: Kallsyms;
}

/**
 * Find the kernel in a guest's kernel address space from its page tables alone: the image's
 * mapping, its symbol table (decoded from its own memory), then the randomized bases and the
 * version it reports. Throws GuestDataError when no kernel is found.
 */
export function locateKernel(space: KernelSpace, opts: LocateOptions): KernelLocation {
  if (opts.pagingLevels !== 4 && opts.pagingLevels !== 5) throw new UsageError(`paging levels must be 4 or 5, not ${String(opts.pagingLevels)}`);
  const warnings = opts.warnings;
  const hints: bigint[] = [];
  if (opts.rip !== undefined) hints.push(opts.rip);
  if (opts.idtBase !== undefined) hints.push(...idtHandlers(space, opts.idtBase));
  const mapped = findKernelImage(space, { textAddresses: hints });
  const range: VaRange = { start: mapped.start, end: mapped.end };
  const kallsyms = loadKallsyms(space, range, { warnings });

  const textBase = kallsyms.lookup('_text') ?? kallsyms.lookup('_stext') ?? mapped.start;
  if (textBase < START_KERNEL_MAP || textBase >= KERNEL_MAP_END) {
    throw new GuestDataError(`kallsyms puts _text at ${hex(textBase)}, outside the kernel mapping`);
  }
  if (textBase !== mapped.start) warnings?.warn('locate', `_text ${hex(textBase)} is not where the image mapping starts (${hex(mapped.start)})`);
  const physBase = space.tryTranslate(textBase);
  if (physBase === null) throw new GuestDataError(`_text at ${hex(textBase)} is not mapped`);
  const end = kallsyms.lookup('_end');
  const imageEnd = end !== undefined && end > textBase ? end : mapped.end;

  const layout = readMemoryLayout(space, kallsyms, { pagingLevels: opts.pagingLevels, physBase, gsBase: opts.gsBase }, warnings);
  return {
    textBase,
    kaslrOffset: textBase - DEFAULT_TEXT_BASE,
    physBase,
    imageEnd,
    mapped,
    layout,
    banner: readBanner(space, kallsyms),
    uts: readUtsName(space, kallsyms),
    kallsyms,
  };
}
