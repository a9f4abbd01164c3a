import type { Command } from 'commander';
import { pagingMode, type VcpuState } from '../../machine/types.ts';
import { totalSize } from '../../source/ranges.ts';
import { UsageError } from '../../util/errors.ts';
import { emit, withMachine } from '../context.ts';
import { renderFields, renderTable } from '../render.ts';

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

function vcpuJson(v: VcpuState): Record<string, unknown> {
  return {
    index: v.index,
    paging: pagingMode(v),
    cpl: v.cpl,
    cr0: v.cr0,
    cr3: v.cr3,
    cr4: v.cr4,
    efer: v.efer,
    rip: v.rip,
    rsp: v.rsp,
    gsBase: v.gsBase,
    kernelGsBase: v.kernelGsBase,
    idtBase: v.idtBase,
  };
}

export function register(program: Command): void {
  program
    .command('info')
    .description('the target: memory source, guest-physical memory map, vCPUs and their paging mode')
    .action(async (_o: unknown, cmd: Command) => {
      await withMachine(cmd, async (machine, opts) => {
        const vcpus = await machine.vcpus();
        const mem = machine.memory;
        const paused = await machine.isPaused();
        emit(
          opts,
          () => ({
            name: machine.name,
            live: machine.live,
            paused,
            source: { kind: mem.kind, description: mem.description, writable: mem.writable, zeroCopy: !!mem.windows },
            memory: mem.ranges.map((r) => ({ start: r.start, end: r.start + r.size, size: r.size })),
            ramBytes: totalSize(mem.ranges),
            vcpus: vcpus.map(vcpuJson),
          }),
          () => {
            const head = renderFields([
              ['target', machine.name],
              ['state', machine.live ? (paused ? 'live, paused' : 'live, running') : 'snapshot'],
              ['source', `${mem.kind}: ${mem.description}${mem.windows ? ' (zero-copy)' : ''}${mem.writable ? '' : ' (read-only)'}`],
              ['RAM', `${(totalSize(mem.ranges) / 2 ** 20).toFixed(0)} MiB in ${mem.ranges.length} ranges`],
            ]);
            const ranges = renderTable(
              [
                { header: 'START', value: (r: { start: number; size: number }) => hex(r.start) },
                { header: 'END', value: (r) => hex(r.start + r.size) },
                { header: 'SIZE', value: (r) => `${(r.size / 2 ** 20).toFixed(1)} MiB`, align: 'right' },
              ],
              mem.ranges,
            );
            const cpus =
              vcpus.length === 0
                ? 'no vCPU state in this source (kernel page tables are found by scanning)'
                : renderTable(
                    [
                      { header: 'CPU', value: (v: VcpuState) => v.index, align: 'right' },
                      { header: 'PAGING', value: (v) => pagingMode(v) },
                      { header: 'CPL', value: (v) => v.cpl, align: 'right' },
                      { header: 'CR3', value: (v) => hex(v.cr3) },
                      { header: 'CR4', value: (v) => hex(v.cr4) },
                      { header: 'RIP', value: (v) => hex(v.rip) },
                    ],
                    vcpus,
                  );
            return `${head}\n\n${ranges}\n\n${cpus}`;
          },
        );
      });
    });

  for (const [name, running] of [['pause', false], ['resume', true]] as const) {
    program
      .command(name)
      .description(running ? 'let a paused guest run again (QMP cont)' : 'stop the guest\'s vCPUs until `vmlens resume` (QMP stop)')
      .action(async (_o: unknown, cmd: Command) => {
        await withMachine(cmd, async (machine, opts) => {
          if (!machine.live || !machine.pause || !machine.resume) throw new UsageError(`${machine.name} is a snapshot: it never runs`);
          const was = !(await machine.isPaused());
          if (running && !was) await machine.resume();
          if (!running && was) await machine.pause();
          emit(
            opts,
            () => ({ name: machine.name, running, changed: was !== running }),
            () => `${machine.name} ${running ? 'runs' : 'is paused'}${was === running ? ' (it already was)' : ''}`,
          );
        });
      });
  }
}
