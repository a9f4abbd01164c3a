import { isVmlensError } from '../../util/errors.ts';
import type { Kallsyms } from '../kallsyms/kallsyms.ts';
import type { KernelSpace } from './space.ts';

/** struct new_utsname (include/uapi/linux/utsname.h): six NUL-padded 65-byte fields. */
export interface UtsName {
  readonly sysname: string;
  readonly nodename: string;
  readonly release: string;
  readonly version: string;
  readonly machine: string;
  readonly domainname: string;
}

const UTS_FIELD = 65;
const UTS_FIELDS = ['sysname', 'nodename', 'release', 'version', 'machine', 'domainname'] as const;
/**
 * struct uts_namespace starts with the name since 5.11; before, a struct kref (4 bytes,
 * padded) came first. Look for "Linux" at the first few aligned offsets rather than guess.
 */
const UTS_NAME_OFFSETS = [0, 4, 8, 16];
/** linux_banner is one line; the kernel's own is well under this. */
const MAX_BANNER = 1024;

function readBytes(space: KernelSpace, va: bigint, len: number): Uint8Array | undefined {
  const buf = new Uint8Array(len);
  try {
    space.read(va, buf);
    return buf;
  } catch (e) {
    if (isVmlensError(e)) return undefined;
    throw e;
  }
}

function cString(bytes: Uint8Array, from = 0, max = bytes.length - from): string {
  let end = from;
  while (end < from + max && bytes[end] !== 0) end++;
  return Buffer.from(bytes.subarray(from, end)).toString('latin1');
}

/** The kernel's version line (init/version-timestamp.c, linux_banner), without its newline. */
export function readBanner(space: KernelSpace, ks: Kallsyms): string | undefined {
  const va = ks.lookup('linux_banner');
  if (va === undefined) return undefined;
  // The banner may end near an unmapped page: read the largest piece that reads.
  for (let len = MAX_BANNER; len >= 64; len >>= 1) {
    const bytes = readBytes(space, va, len);
    if (!bytes) continue;
    const s = cString(bytes).replace(/\n$/, '');
    return s.startsWith('Linux version ') ? s : undefined;
  }
  return undefined;
}

/** init_uts_ns's name: what `uname -a` prints (the nodename as the guest set it). */
export function readUtsName(space: KernelSpace, ks: Kallsyms): UtsName | undefined {
  const va = ks.lookup('init_uts_ns');
  if (va === undefined) return undefined;
  const bytes = readBytes(space, va, UTS_NAME_OFFSETS[UTS_NAME_OFFSETS.length - 1]! + UTS_FIELD * UTS_FIELDS.length);
  if (!bytes) return undefined;
  for (const off of UTS_NAME_OFFSETS) {
    if (cString(bytes, off, UTS_FIELD) !== 'Linux') continue;
    const fields = UTS_FIELDS.map((_, i) => cString(bytes, off + i * UTS_FIELD, UTS_FIELD));
    if (fields.some((f) => /[^\x20-\x7e]/.test(f))) continue;
    const [sysname, nodename, release, version, machine, domainname] = fields as [string, string, string, string, string, string];
    return { sysname, nodename, release, version, machine, domainname };
  }
  return undefined;
}
