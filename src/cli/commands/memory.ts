import type { Command } from 'commander';
import { existsSync, rmSync, statSync, writeSync } from 'node:fs';
import { resolve } from 'node:path';
import { acquireMemory, assertCanAcquire, DUMP_FORMATS, formatForPath, parseDumpFormat } from '../../machine/acquire.ts';
import { addressSpaceFor } from '../../mmu/from-vcpu.ts';
import { UsageError } from '../../util/errors.ts';
import { emit, holdPause, parseAddress, parseCount, withMachine } from '../context.ts';
import { hexdump } from '../hexdump.ts';
import { byteProgressBar } from '../progress-bar.ts';
import { renderTable } from '../render.ts';

/** Largest read `vmlens read` will do in one go; bulk copies use dump commands. */
const MAX_READ = 64 * 2 ** 20;

interface ReadOptions {
  phys?: boolean;
  virt?: boolean;
  raw?: boolean;
  cr3?: string;
}

interface SpaceOptions {
  cr3?: string;
  cpu?: string;
}

export function register(program: Command): void {
  program
    .command('dump')
    .description('acquire guest memory into a file: LiME, raw, or QEMU\'s ELF core with vCPU state (open it later with --dump)')
    .argument('<file>', 'where to write (its extension picks the format: .lime, .raw/.mem, .elf/.core)')
    .option('--format <format>', `${DUMP_FORMATS.join(', ')} (default: from the file name, else lime)`)
    .option('--no-pause', 'do not pause a live guest while copying (the image may then mix instants)')
    .option('--force', 'overwrite an existing file')
    .action(async (file: string, o: { format?: string; pause: boolean; force?: boolean }, cmd: Command) => {
      const path = resolve(file);
      const format = o.format === undefined ? formatForPath(path) : parseDumpFormat(o.format);
      if (existsSync(path) && !o.force) throw new UsageError(`${path} exists (use --force to overwrite it)`);
      await withMachine(cmd, async (machine, opts) => {
        assertCanAcquire(machine, format);
        const started = process.hrtime.bigint();
        let copying: Promise<void> | undefined;
        // Interrupted: no half-written file stays. QEMU cannot be stopped writing its core, so
        // for that the guest resumes only once QEMU is done.
        const paused = o.pause
          ? await holdPause(machine, async () => {
              if (format === 'elf') await copying?.catch(() => undefined);
              rmSync(path, { force: true });
            })
          : undefined;
        const bar = byteProgressBar(`dump ${format}`, opts.json);
        try {
          copying = acquireMemory(machine, path, format, bar ? (done, total) => bar.update(done, total) : undefined);
          await copying;
        } catch (e) {
          rmSync(path, { force: true });
          throw e;
        } finally {
          bar?.stop();
          if (paused) await paused.resume();
        }
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        const ram = machine.memory.ranges.reduce((n, r) => n + r.size, 0);
        const result = { file: path, format, ramBytes: ram, ranges: machine.memory.ranges.length, fileBytes: statSync(path).size, ms: Math.round(ms) };
        emit(
          opts,
          () => result,
          () => `${(ram / 2 ** 30).toFixed(2)} GiB of guest RAM (${result.ranges} range${result.ranges === 1 ? '' : 's'}) written to ${path} as ${format} in ${(ms / 1000).toFixed(1)} s; open it with: vmlens --dump ${file} overview`,
        );
      });
    });

  program
    .command('read')
    .description('read guest memory: a hex dump, or raw bytes to stdout with --raw')
    .argument('<address>', 'start address (0x… hex, or decimal)')
    .argument('<length>', 'number of bytes')
    .option('--phys', 'ADDRESS is guest-physical')
    .option('--virt', 'ADDRESS is virtual (the default)')
    .option('--cr3 <value>', 'translate through this page-table root instead of the kernel\'s')
    .option('--raw', 'write the bytes to stdout unformatted')
    .action(async (addrText: string, lenText: string, o: ReadOptions, cmd: Command) => {
      if (o.phys && o.virt) throw new UsageError('--phys and --virt exclude each other');
      const address = parseAddress(addrText);
      const length = parseCount(lenText, 'length', MAX_READ);
      await withMachine(cmd, async (machine, opts) => {
        const bytes = new Uint8Array(length);
        if (o.phys) {
          if (address > BigInt(Number.MAX_SAFE_INTEGER)) throw new UsageError(`physical address too large: ${addrText}`);
          machine.memory.read(Number(address), bytes);
        } else {
          const space = await addressSpaceFor(machine, { cr3: o.cr3 === undefined ? undefined : parseAddress(o.cr3, 'CR3') });
          space.read(address, bytes);
        }
        if (o.raw) {
          writeSync(1, bytes);
          return;
        }
        emit(
          opts,
          () => ({ address, kind: o.phys ? 'physical' : 'virtual', length, hex: Buffer.from(bytes).toString('hex') }),
          () => hexdump(bytes, address),
        );
      });
    });

  program
    .command('translate')
    .description('translate a virtual address to guest-physical, with the page that maps it')
    .argument('<va>', 'virtual address')
    .option('--cr3 <value>', 'page-table root (default: the kernel\'s, from the vCPU)')
    .option('--cpu <n>', 'take CR3 from this vCPU', '0')
    .action(async (vaText: string, o: SpaceOptions, cmd: Command) => {
      const va = parseAddress(vaText, 'virtual address');
      await withMachine(cmd, async (machine, opts) => {
        const space = await addressSpaceFor(machine, spaceOptions(o));
        const pa = space.translateVa(va);
        const page = space.walk({ start: va, end: va + 1n, maxRanges: 1 }).next();
        const r = page.done ? undefined : page.value;
        emit(
          opts,
          () => ({
            va,
            pa,
            levels: space.levels,
            root: space.root,
            pageSize: r?.pageSize,
            writable: r?.writable,
            user: r?.user,
            nx: r?.nx,
          }),
          () =>
            `0x${va.toString(16)} -> 0x${pa.toString(16)}` +
            (r ? `  (${pageSizeName(r.pageSize)} page, ${flags(r)})` : ''),
        );
      });
    });

  program
    .command('walk')
    .description('list the mapped ranges of an address space')
    .option('--cr3 <value>', 'page-table root (default: the kernel\'s, from the vCPU)')
    .option('--cpu <n>', 'take CR3 from this vCPU', '0')
    .option('--start <va>', 'first virtual address')
    .option('--end <va>', 'end virtual address (exclusive)')
    .option('--limit <n>', 'at most this many ranges', '100000')
    .action(async (o: SpaceOptions & { start?: string; end?: string; limit: string }, cmd: Command) => {
      await withMachine(cmd, async (machine, opts) => {
        const space = await addressSpaceFor(machine, spaceOptions(o));
        const ranges = [
          ...space.walk({
            start: o.start === undefined ? undefined : parseAddress(o.start),
            end: o.end === undefined ? undefined : parseAddress(o.end),
            maxRanges: parseCount(o.limit, 'limit', 10_000_000),
          }),
        ];
        emit(
          opts,
          () => ranges,
          () =>
            renderTable(
              [
                { header: 'START', value: (r: (typeof ranges)[number]) => r.va, hex: true },
                { header: 'END', value: (r) => r.va + BigInt(r.size), hex: true },
                { header: 'PHYS', value: (r) => r.pa, hex: true },
                { header: 'SIZE', value: (r) => r.size, align: 'right' },
                { header: 'PAGE', value: (r) => pageSizeName(r.pageSize) },
                { header: 'FLAGS', value: (r) => flags(r) },
              ],
              ranges,
            ),
        );
      });
    });
}

function spaceOptions(o: SpaceOptions): { cr3?: bigint; cpu?: number } {
  return {
    cr3: o.cr3 === undefined ? undefined : parseAddress(o.cr3, 'CR3'),
    cpu: o.cpu === undefined ? undefined : parseCount(o.cpu, 'vCPU index', 4096),
  };
}

function pageSizeName(size: number): string {
  return size >= 2 ** 30 ? '1G' : size >= 2 ** 21 ? '2M' : '4K';
}

function flags(r: { writable: boolean; user: boolean; nx: boolean }): string {
  return `r${r.writable ? 'w' : '-'}${r.nx ? '-' : 'x'} ${r.user ? 'user' : 'kernel'}`;
}
