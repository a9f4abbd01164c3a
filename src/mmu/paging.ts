/**
 * x86-64 long-mode paging, described as data and read by one walker.
 *
 * A format is its list of levels, top first. Each level consumes 9 bits of the virtual address
 * starting at `shift`; an entry is 8 bytes, little-endian, read as two uint32 halves:
 *   bit 0 P (present), 1 R/W, 2 U/S, 5 A, 6 D, 7 PS (a leaf at PDPTE and PDE levels; PAT in a
 *   PTE; reserved at PML4E and PML5E), bits 12..51 physical address (MAXPHYADDR ≤ 52), bits
 *   52..62 ignored or protection key, bit 63 XD (no-execute).
 * Intel SDM vol. 3A §4.5; the kernel's own names are in arch/x86/include/asm/pgtable_types.h.
 */
import { pagingMode, type VcpuState } from '../machine/types.ts';
import { UsageError } from '../util/errors.ts';
import type { PhysReader } from './phys-reader.ts';
import { DOUBLE_ZERO, isCanonical } from './va.ts';

export const PTE_PRESENT = 0x001;
export const PTE_WRITABLE = 0x002;
export const PTE_USER = 0x004;
export const PTE_ACCESSED = 0x020;
export const PTE_DIRTY = 0x040;
/** Page size (a leaf) at PDPTE/PDE; the PAT bit in a PTE. */
export const PTE_PS = 0x080;
export const PTE_GLOBAL = 0x100;
/** XD, bit 63 of the entry, as a bit of its high half. */
export const PTE_NX_HI = 0x8000_0000;
/** Physical-address bits 12..31 of an entry, in its low half. */
export const PTE_ADDR_LO = 0xffff_f000;
/** Physical-address bits 32..51 of an entry, in its high half. */
export const PTE_ADDR_HI = 0x000f_ffff;

/** Effective permissions of a mapping, as bits of a small number (see AddressSpace caches). */
export const PERM_WRITABLE = 1;
export const PERM_USER = 2;
export const PERM_NX = 4;

/** Why a translation failed (constant strings: reporting a fault allocates nothing). */
export const FAULT_NOT_PRESENT = 'not present';
export const FAULT_RESERVED = 'reserved bit set';
export const FAULT_PS_RESERVED = 'page-size bit set where no large page exists';
export const FAULT_NON_CANONICAL = 'non-canonical address';
export const FAULT_TABLE_NOT_RAM = 'page table is not in guest RAM';

export interface PagingLevel {
  /** 1 = PT (PTE) … 5 = PML5 (PML5E), as in TranslationError. */
  readonly level: 1 | 2 | 3 | 4 | 5;
  /** The lowest virtual-address bit of this level's 9-bit index. */
  readonly shift: number;
  /**
   * Size of the page an entry maps when it is a leaf at this level: 4 KiB at level 1 (always a
   * leaf), 2 MiB / 1 GiB where PS may be set, 0 where PS is reserved.
   */
  readonly leafSize: number;
}

export interface PagingFormat {
  readonly name: '4-level' | '5-level';
  readonly levels: 4 | 5;
  /** Implemented virtual-address bits: 48 or 57; addresses must sign-extend bit vaBits-1. */
  readonly vaBits: 48 | 57;
  /** Levels, top first. */
  readonly table: readonly PagingLevel[];
}

const LOWER_LEVELS: readonly PagingLevel[] = [
  { level: 4, shift: 39, leafSize: 0 },
  { level: 3, shift: 30, leafSize: 1 << 30 },
  { level: 2, shift: 21, leafSize: 1 << 21 },
  { level: 1, shift: 12, leafSize: 1 << 12 },
];

export const LONG_MODE_4_LEVEL: PagingFormat = { name: '4-level', levels: 4, vaBits: 48, table: LOWER_LEVELS };
export const LONG_MODE_5_LEVEL: PagingFormat = {
  name: '5-level',
  levels: 5,
  vaBits: 57,
  table: [{ level: 5, shift: 48, leafSize: 0 }, ...LOWER_LEVELS],
};

export function pagingFormat(levels: 4 | 5): PagingFormat {
  return levels === 5 ? LONG_MODE_5_LEVEL : LONG_MODE_4_LEVEL;
}

/** 4 or 5 from a vCPU's control registers; UsageError outside long mode (legacy and PAE paging are not supported). */
export function pagingLevels(vcpu: Pick<VcpuState, 'cr0' | 'cr4' | 'efer'>): 4 | 5 {
  const mode = pagingMode(vcpu);
  if (mode === '4-level') return 4;
  if (mode === '5-level') return 5;
  throw new UsageError(`vCPU paging mode is ${mode}; only 4- and 5-level long mode are supported`);
}

export interface WalkerOptions {
  /**
   * MAXPHYADDR of the guest CPU: entry address bits at and above it are reserved (a fault, as on
   * the CPU). Default 52, the architectural maximum, which reserves none.
   */
  physAddrBits?: number;
}

/**
 * The generic walker. `walk(hi, lo)` answers through fields (no object per walk): on success
 * `pagePa` (the 4 KiB page holding the address), `pageSize`, `perms`; in every case `depth`
 * entries were read, their physical addresses and values in `pathPa`/`pathLo`/`pathHi` (top
 * first); on a fault `faultLevel` and `faultReason`.
 *
 * A walk reads at most one entry per level (≤ 5 reads), so self-referencing or looping tables
 * cannot make it run longer.
 */
export class PageWalker {
  readonly format: PagingFormat;
  // Number fields start as numbers, never undefined; doubles where values exceed 2^30 (see DOUBLE_ZERO).
  readonly root: number = DOUBLE_ZERO;

  pagePa = DOUBLE_ZERO;
  pageSize = 0;
  perms = 0;
  depth = 0;
  faultLevel = 0;
  faultReason = '';
  readonly pathPa = new Float64Array(5);
  readonly pathLo = new Uint32Array(5);
  readonly pathHi = new Uint32Array(5);

  private readonly rootPa = new Float64Array(1);
  private readonly reader: PhysReader;
  private readonly n: number = 0;
  private readonly shifts: Int32Array;
  private readonly levelNo: Int32Array;
  private readonly leafSizes: Int32Array;
  /** For a leaf above level 1: address bits in the low half (above the page offset). */
  private readonly leafAddrLo: Int32Array;
  /** For a leaf above level 1: reserved low-half bits (13 … log2(size)-1; bit 12 is PAT). */
  private readonly leafRsvdLo: Int32Array;
  /** Entry bits reserved by MAXPHYADDR, as bits of the entry's high half. */
  readonly reservedHi: number = 0;

  constructor(reader: PhysReader, format: PagingFormat, root: number, options: WalkerOptions = {}) {
    this.reader = reader;
    this.format = format;
    this.root = root;
    this.rootPa[0] = root;
    const t = format.table;
    this.n = t.length;
    this.shifts = Int32Array.from(t, (l) => l.shift);
    this.levelNo = Int32Array.from(t, (l) => l.level);
    this.leafSizes = Int32Array.from(t, (l) => l.leafSize);
    this.leafAddrLo = Int32Array.from(t, (l) => (l.leafSize > 4096 ? ~(l.leafSize - 1) : PTE_ADDR_LO));
    this.leafRsvdLo = Int32Array.from(t, (l) => (l.leafSize > 4096 ? (l.leafSize - 1) & ~0x1fff : 0));
    const bits = options.physAddrBits ?? 52;
    // Bits bits..51 of an entry, i.e. bits (bits-32)..19 of its high half.
    this.reservedHi = bits >= 52 ? 0 : PTE_ADDR_HI & ~((1 << (bits - 32)) - 1);
  }

  /**
   * Walk for the 4 KiB virtual page (hi, vpnLo): `hi` the high half of the address (any int32 or
   * uint32 form), `vpnLo` its low half shifted right by 12. Passing page numbers keeps both
   * arguments small integers for canonical addresses, which V8 passes without allocating.
   * True on success; see the class comment for the results.
   */
  walk(hi: number, vpnLo: number): boolean {
    this.depth = 0;
    if (!isCanonical(hi, 0, this.format.levels)) return this.fault(this.format.levels, FAULT_NON_CANONICAL);
    const reader = this.reader;
    // Physical addresses exceed 2^30, V8's small-integer range: starting `table` from a
    // Float64Array keeps it an unboxed double through the loop (no allocation per level).
    let table = this.rootPa[0]!;
    let allow = 3; // PERM_WRITABLE | PERM_USER
    let nx = 0;
    const n = this.n;
    // Bit masks are literals here: module constants would be re-loaded and checked on every use.
    for (let i = 0; i < n; i++) {
      // Index bits start at VA bit `shift`: bit (shift - 12) of the page number.
      const s = this.shifts[i]! - 12;
      const index = s >= 20 ? (hi >>> (s - 20)) & 511 : s > 11 ? ((hi << (20 - s)) | (vpnLo >>> s)) & 511 : (vpnLo >>> s) & 511;
      this.pathPa[i] = table + index * 8;
      if (!reader.tryU64At(this.pathPa, i)) return this.fault(this.levelNo[i]!, FAULT_TABLE_NOT_RAM);
      const elo = reader.lo;
      const ehi = reader.hi;
      this.pathLo[i] = elo;
      this.pathHi[i] = ehi;
      this.depth = i + 1;
      if ((elo & 1) === 0) return this.fault(this.levelNo[i]!, FAULT_NOT_PRESENT); // P
      if ((ehi & this.reservedHi) !== 0) return this.fault(this.levelNo[i]!, FAULT_RESERVED);
      // Rights combine over the path: writable and user only if every level allows them.
      allow &= (elo >>> 1) & 3; // R/W (bit 1) → PERM_WRITABLE, U/S (bit 2) → PERM_USER
      nx |= ehi >>> 31; // XD, bit 63
      const frameHi = (ehi & 0xfffff) * 4294967296; // address bits 32..51
      if (i === n - 1) {
        this.pageSize = 4096;
        this.pagePa = frameHi + (elo >>> 12) * 4096;
        this.perms = allow | (nx << 2); // PERM_NX
        return true;
      }
      if ((elo & 0x80) !== 0) {
        // PS: a leaf here, where the level allows one.
        const size = this.leafSizes[i]!;
        if (size === 0) return this.fault(this.levelNo[i]!, FAULT_PS_RESERVED);
        if ((elo & this.leafRsvdLo[i]!) !== 0) return this.fault(this.levelNo[i]!, FAULT_RESERVED);
        this.pageSize = size;
        // Frame of the large page + the 4 KiB page within it.
        this.pagePa = frameHi + ((elo & this.leafAddrLo[i]!) >>> 0) + (vpnLo & ((size >>> 12) - 1)) * 4096;
        this.perms = allow | (nx << 2);
        return true;
      }
      table = frameHi + (elo >>> 12) * 4096;
    }
    return false; // unreachable: the last level always returns
  }

  private fault(level: number, reason: string): false {
    this.faultLevel = level;
    this.faultReason = reason;
    return false;
  }
}

/**
 * With page-table isolation (CONFIG_PAGE_TABLE_ISOLATION, on by default where the CPU is
 * vulnerable to Meltdown), every top-level table is an order-1 allocation: the kernel's table in
 * the first 4 KiB, the user's table — user space plus the entry trampoline only — in the second.
 * The kernel switches between them by flipping bit 12 of CR3 (PTI_PGTABLE_SWITCH_BIT =
 * PAGE_SHIFT in arch/x86/include/asm/pgtable.h). So a root read from CR3 while a vCPU ran in user
 * mode is the user table; its kernel peer (and vice versa) is the root with bit 12 flipped.
 * Meaningful only when PTI is active: without it a top-level table is one page and its
 * neighbour is unrelated memory. Whether PTI is on is for the caller to establish (for example:
 * the kernel half of the root with bit 12 clear is populated, that of its peer nearly empty).
 */
export function ptiPeerRoot(root: number): number {
  return (Math.floor(root / 8192) * 8192) + (root % 8192 === 0 ? 4096 : 0);
}

/** The kernel table of a PTI pair (bit 12 clear); see ptiPeerRoot. */
export function ptiKernelRoot(root: number): number {
  return Math.floor(root / 8192) * 8192;
}

/** The user table of a PTI pair (bit 12 set); see ptiPeerRoot. */
export function ptiUserRoot(root: number): number {
  return Math.floor(root / 8192) * 8192 + 4096;
}
