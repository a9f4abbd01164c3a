/**
 * The guest's hostname: `nodename` of the initial uts namespace (init_uts_ns.name, a struct
 * new_utsname), which `uname -n` and `hostname` print in the guest. Setting it stores what
 * sethostname(2) stores — the name NUL-padded to the whole field — as a transaction.
 * (sethostname also notifies pollers of /proc/sys/kernel/hostname; a memory write cannot.)
 */
import type { Kernel } from '../kernel/kernel.ts';
import { structReader } from '../kernel/helpers/struct-reader.ts';
import { decodeGuestString } from '../analyses/sysctl.ts';
import { UsageError } from '../util/errors.ts';
import { runTransaction, type TransactionResult } from './transaction.ts';

/** __NEW_UTS_LEN: the longest hostname sethostname(2) accepts. */
export const MAX_HOSTNAME = 64;

export interface HostnameOptions {
  readonly dryRun?: boolean;
  readonly auditPath?: string;
}

export interface HostnameResult extends TransactionResult {
  readonly oldName: string;
  readonly newName: string;
}

/** Address and size of init_uts_ns.name.nodename. */
function nodenameField(kernel: Kernel): { va: bigint; size: number } {
  const r = structReader(kernel);
  const va = r.at(kernel.symbol('init_uts_ns'), 'uts_namespace', 'name.nodename');
  const size = kernel.object('struct new_utsname', 0n).member('nodename').sizeof;
  if (size < MAX_HOSTNAME + 1 || size > 4096) throw new UsageError(`new_utsname.nodename is ${size} bytes here, not ${MAX_HOSTNAME + 1}`);
  return { va, size };
}

/** The guest's hostname (bytes up to the first NUL, as UTF-8). */
export function getHostname(kernel: Kernel): string {
  const { va, size } = nodenameField(kernel);
  const bytes = kernel.space.readBytes(va, size);
  const nul = bytes.indexOf(0);
  return decodeGuestString(nul >= 0 ? bytes.subarray(0, nul) : bytes);
}

/** Check a hostname as sethostname(2) would (1–64 bytes), refusing control characters as well. */
export function hostnameBytes(name: string): Uint8Array {
  const bytes = new TextEncoder().encode(name);
  if (bytes.length === 0) throw new UsageError('a hostname cannot be empty');
  if (bytes.length > MAX_HOSTNAME) throw new UsageError(`hostname '${name}' is ${bytes.length} bytes; at most ${MAX_HOSTNAME} fit`);
  if (bytes.some((b) => b < 0x20 || b === 0x7f)) throw new UsageError('a hostname cannot contain control characters');
  return bytes;
}

/** Set the guest's hostname, NUL-padded to the whole nodename field. */
export async function setHostname(kernel: Kernel, name: string, opts: HostnameOptions = {}): Promise<HostnameResult> {
  const bytes = hostnameBytes(name);
  let oldName = '';
  const result = await runTransaction(kernel, {
    command: `hostname ${name}`,
    dryRun: opts.dryRun,
    auditPath: opts.auditPath,
    plan: () => {
      const { va, size } = nodenameField(kernel);
      oldName = getHostname(kernel);
      const field = new Uint8Array(size);
      field.set(bytes);
      return { writes: [{ va, bytes: field, label: 'init_uts_ns.name.nodename' }], details: { old: oldName, new: name } };
    },
  });
  return { ...result, oldName, newName: name };
}
