import { GuestDataError, isVmlensError } from '../../util/errors.ts';
import { hex } from '../kallsyms/reader.ts';
import { KERNEL_MAP_END, PMD_SIZE, START_KERNEL_MAP, type KernelSpace } from './space.ts';

/**
 * Finding the kernel image with nothing but page tables. The kernel maps its image in the
 * kernel text mapping, [__START_KERNEL_map, +1 GiB), with 2 MiB pages, and at boot clears
 * every entry of that mapping outside [_text, _brk_end] (arch/x86/mm/init_64.c,
 * cleanup_highmap). So the mapped 2 MiB slots there are the image, and the first is _text.
 * A running kernel unmaps pieces of its image (freed init memory, the gaps between text,
 * rodata and data), so a slot counts as mapped if any of a few probes in it translates, and a
 * run of slots may have small gaps.
 */
export interface MappedImage {
  readonly start: bigint;
  readonly end: bigint;
  /** 2 MiB slots found mapped in [start, end). */
  readonly mappedSlots: number;
}

export interface ImageHints {
  /** Kernel text addresses known to be in the image: RIP in kernel mode, IDT handlers. */
  readonly textAddresses?: readonly bigint[];
}

const SLOT = Number(PMD_SIZE);
const SLOTS = Number((KERNEL_MAP_END - START_KERNEL_MAP) / PMD_SIZE);
/** Offsets probed in each slot: one unmapped page must not hide a slot. */
const PROBES = [0, SLOT / 4, SLOT / 2, (3 * SLOT) / 4];
/** Unmapped slots tolerated inside the image (freed init memory is a few MiB). */
const MAX_GAP_SLOTS = 8;
/**
 * An image smaller than this is not the kernel: under page-table isolation a user page table
 * maps only the entry code of the kernel.
 */
const MIN_IMAGE_SLOTS = 3;

export function findKernelImage(space: KernelSpace, hints: ImageHints = {}): MappedImage {
  const mapped = new Uint8Array(SLOTS);
  for (let s = 0; s < SLOTS; s++) {
    const slotVa = START_KERNEL_MAP + BigInt(s) * PMD_SIZE;
    for (const p of PROBES) {
      if (translates(space, slotVa + BigInt(p))) {
        mapped[s] = 1;
        break;
      }
    }
  }
  const runs: { first: number; last: number; count: number }[] = [];
  for (let s = 0; s < SLOTS; s++) {
    if (!mapped[s]) continue;
    const cur = runs[runs.length - 1];
    if (cur && s - cur.last - 1 <= MAX_GAP_SLOTS) {
      cur.last = s;
      cur.count++;
    } else runs.push({ first: s, last: s, count: 1 });
  }
  if (runs.length === 0) {
    throw new GuestDataError(`no kernel image mapped at ${hex(START_KERNEL_MAP)}-${hex(KERNEL_MAP_END)} in this address space`);
  }
  const slotVa = (s: number) => START_KERNEL_MAP + BigInt(s) * PMD_SIZE;
  const holds = (r: { first: number; last: number }, va: bigint) => va >= slotVa(r.first) && va < slotVa(r.last + 1);
  const hinted = (hints.textAddresses ?? []).filter((va) => va >= START_KERNEL_MAP && va < KERNEL_MAP_END);
  let best = runs.find((r) => hinted.some((va) => holds(r, va)));
  best ??= runs.reduce((a, b) => (b.count > a.count ? b : a));
  if (best.count < MIN_IMAGE_SLOTS) {
    throw new GuestDataError(
      `only ${best.count * 2} MiB of kernel image mapped at ${hex(slotVa(best.first))}: not a kernel page table (a user one under page-table isolation?)`,
    );
  }
  return { start: slotVa(best.first), end: slotVa(best.last + 1), mappedSlots: best.count };
}

function translates(space: KernelSpace, va: bigint): boolean {
  try {
    return space.tryTranslate(va) !== null;
  } catch (e) {
    if (isVmlensError(e)) return false;
    throw e;
  }
}

/**
 * Handler addresses from the IDT: each 16-byte gate holds its target split in three pieces
 * (offset 15:0 at bytes 0–1, 31:16 at 6–7, 63:32 at 8–11). The IDT is readable even when the
 * vCPU was stopped in user mode, and its handlers are in kernel text.
 */
export function idtHandlers(space: KernelSpace, idtBase: bigint, gates = 32): bigint[] {
  const buf = new Uint8Array(16 * gates);
  try {
    space.read(idtBase, buf);
  } catch (e) {
    if (isVmlensError(e)) return [];
    throw e;
  }
  const dv = new DataView(buf.buffer);
  const out: bigint[] = [];
  for (let g = 0; g < gates; g++) {
    const o = 16 * g;
    const present = (buf[o + 5]! & 0x80) !== 0;
    if (!present) continue;
    const lo = dv.getUint16(o, true) | (dv.getUint16(o + 6, true) << 16);
    const hi = dv.getUint32(o + 8, true);
    out.push((BigInt(hi) << 32n) | BigInt(lo >>> 0));
  }
  return out;
}
