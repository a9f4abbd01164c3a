/**
 * The bottom layer: where guest-physical bytes come from. A source knows nothing of paging or
 * of Linux. Guest-physical addresses are plain numbers (they fit in 52 bits, well inside 2^53).
 */

/** A run of guest RAM as the guest sees it (guest-physical, not file offsets). */
export interface PhysRange {
  readonly start: number;
  readonly size: number;
}

/**
 * A zero-copy view of one run of guest RAM. Sources that map RAM (the shared RAM file) expose
 * windows so the address-space layer can read page tables and data with typed-array loads and
 * no call into the source at all. `start` and `size` are page-aligned; u32 is little-endian
 * (x86 hosts only) and aliases u8.
 */
export interface RamWindow {
  readonly start: number;
  readonly size: number;
  readonly u8: Uint8Array;
  readonly u32: Uint32Array;
}

export interface PhysicalMemory {
  /** Short kind name: 'shared-file', 'proc-mem', 'elf-core', 'raw', 'lime', 'gdb'. */
  readonly kind: string;
  /** One line for `vmlens info`, e.g. the file path or pid it reads. */
  readonly description: string;
  /** The guest-physical RAM map, sorted and non-overlapping. Everything else is a hole. */
  readonly ranges: readonly PhysRange[];
  readonly writable: boolean;
  /** Zero-copy windows covering `ranges`, when the source maps RAM. */
  readonly windows?: readonly RamWindow[];
  /**
   * Fill `dst` from guest-physical `gpa`. Throws PhysicalAccessError if any byte is outside
   * `ranges` — a hole is never read as zeros.
   */
  read(gpa: number, dst: Uint8Array): void;
  /** Write `src` at `gpa`. Throws ReadOnlyError where the source cannot be written. */
  write(gpa: number, src: Uint8Array): void;
  /**
   * Read several page-sized or smaller pieces at once where the source can batch them
   * (one process_vm_readv with many iovecs, one gdb round trip per packet…). Optional;
   * callers fall back to read().
   */
  readMany?(requests: readonly { gpa: number; dst: Uint8Array }[]): void;
  close(): void;
}
