import { existsSync } from 'node:fs';
import { DEFAULT_LAB_NAME, findLab } from '../lab/index.ts';
import { openDump } from '../machine/dump.ts';
import { attachQemu } from '../machine/qemu.ts';
import type { Machine } from '../machine/types.ts';
import { UsageError } from '../util/errors.ts';

export type SourceKind = 'auto' | 'file' | 'proc' | 'gdb';

export interface TargetOptions {
  readonly qmp?: string;
  readonly dump?: string;
  readonly lab?: string;
  readonly source?: SourceKind;
  readonly btf?: string;
  readonly systemMap?: string;
  readonly consistent?: boolean;
}

/**
 * One target per command: a live QEMU (by QMP socket), a lab guest (by name) or a dump file.
 * With none given, the default lab guest when it is running.
 */
export async function openTarget(opts: TargetOptions): Promise<Machine> {
  const given = [opts.qmp, opts.dump, opts.lab].filter((x) => x !== undefined);
  if (given.length > 1) throw new UsageError('give one target: --qmp, --dump or --lab');
  if (opts.dump !== undefined) {
    if (opts.source && opts.source !== 'auto') throw new UsageError('--source applies to live guests, not to --dump');
    if (!existsSync(opts.dump)) throw new UsageError(`no such dump file: ${opts.dump}`);
    return openDump(opts.dump);
  }
  if (opts.qmp !== undefined) return attachQemu(opts.qmp, { source: opts.source ?? 'auto' });
  const lab = await findLab(opts.lab ?? DEFAULT_LAB_NAME).catch((e: unknown) => {
    if (opts.lab !== undefined) throw e;
    throw new UsageError('no target: give --qmp SOCKET, --dump FILE or --lab NAME, or start the lab guest with `vmlens lab up`');
  });
  return attachQemu(lab.qmpSocket, { source: opts.source ?? 'auto', name: lab.name });
}
