/**
 * Errors vmlens reports to a user. Every error that can be caused by user input or by
 * guest data is a VmlensError: the CLI prints its message as one line and exits non-zero;
 * a stack trace is shown only with --debug. Anything else is a bug in vmlens.
 */
export class VmlensError extends Error {
  override name = 'VmlensError';
  /** Process exit code the CLI uses for this error. */
  exitCode = 1;
}

/** The user asked for something malformed (bad address, unknown option value, missing file). */
export class UsageError extends VmlensError {
  override name = 'UsageError';
  override exitCode = 2;
}

/** A guest-physical address that is not RAM (a hole, MMIO, or past the end of a dump). */
export class PhysicalAccessError extends VmlensError {
  override name = 'PhysicalAccessError';
  constructor(readonly address: number, readonly length: number, why = 'is not guest RAM') {
    super(`physical 0x${address.toString(16)} (+${length}) ${why}`);
  }
}

/** A write was asked of a source that cannot be written (a dump, a read-only mapping). */
export class ReadOnlyError extends VmlensError {
  override name = 'ReadOnlyError';
}

/** The target (socket, process, file) is not what it claims to be, or is gone. */
export class TargetError extends VmlensError {
  override name = 'TargetError';
}

/** A structure in guest memory is corrupt or hostile; the walk that met it stops. */
export class GuestDataError extends VmlensError {
  override name = 'GuestDataError';
}

/** Paging levels by their x86 names, for messages; index = level number (1 = PT … 5 = PML5). */
export const PAGING_LEVEL_NAMES = ['', 'PTE', 'PDE', 'PDPTE', 'PML4E', 'PML5E'] as const;

/** A virtual address did not translate. `level` is the paging level whose entry stopped the walk. */
export class TranslationError extends VmlensError {
  override name = 'TranslationError';
  constructor(readonly va: bigint, readonly level: number, readonly reason: string) {
    super(`virtual 0x${va.toString(16)}: ${reason} at ${PAGING_LEVEL_NAMES[level] ?? `level ${level}`}`);
  }
}

export function isVmlensError(e: unknown): e is VmlensError {
  return e instanceof VmlensError;
}
