import { Option, type Command } from 'commander';
import { DEFAULT_LAB_NAME, labDown, labList, labUp, type LabInfo, type LabState } from '../../lab/index.ts';
import type { Accel, Paging } from '../../lab/types.ts';
import { emit, globalOptions, parseCount } from '../context.ts';
import { renderFields, renderTable, type Column } from '../render.ts';

/** `vmlens lab …`: real guests to run vmlens against (a thin layer over src/lab). */
export function register(program: Command): void {
  const lab = program
    .command('lab')
    .description('test guests: boot, list and stop Linux guests under QEMU (Debian kernel, busybox userland)');

  lab
    .command('up')
    .description('boot a lab guest and wait until it is ready (returns the running one if already up)')
    .option('--name <name>', 'guest name', DEFAULT_LAB_NAME)
    .option('--kernel <package>', 'Debian kernel image package or meta-package (default: linux-image-amd64)')
    .option('--memory <MiB>', 'guest RAM in MiB (default: 1024)')
    .option('--cpus <n>', 'virtual CPUs (default: 1)')
    .addOption(new Option('--paging <levels>', 'paging levels: 5 needs LA57 (default: 5)').choices(['4', '5']))
    .option('--processes <n>', 'long-lived lab-worker processes (default: 16)')
    .addOption(new Option('--accel <accel>', 'QEMU accelerator (default: tcg)').choices(['tcg', 'kvm']))
    .option('--rootkit', 'load vmlens_rootkit after boot: it hides a process and itself and hooks a system call')
    .action(async (o: UpFlags, cmd: Command) => {
      const info = await labUp({
        name: o.name,
        ...(o.kernel !== undefined ? { kernel: o.kernel } : {}),
        ...(o.memory !== undefined ? { memoryMiB: parseCount(o.memory, 'memory', 1 << 20) } : {}),
        ...(o.cpus !== undefined ? { cpus: parseCount(o.cpus, 'cpus', 1024) } : {}),
        ...(o.paging !== undefined ? { paging: Number(o.paging) as Paging } : {}),
        ...(o.processes !== undefined ? { processes: parseCount(o.processes, 'processes', 100_000) } : {}),
        ...(o.accel !== undefined ? { accel: o.accel as Accel } : {}),
        ...(o.rootkit ? { rootkit: true } : {}),
      });
      emit(globalOptions(cmd), () => info, () => renderInfo(info));
    });

  lab
    .command('list')
    .description('lab guests on this host')
    .action(async (_o: unknown, cmd: Command) => {
      const guests = await labList();
      emit(
        globalOptions(cmd),
        () => guests,
        () => (guests.length ? renderTable(LIST_COLUMNS, guests) : 'no lab guests (start one with `vmlens lab up`)'),
      );
    });

  lab
    .command('down')
    .description('stop a lab guest and remove its RAM file and state')
    .argument('[name]', 'guest name', DEFAULT_LAB_NAME)
    .action(async (name: string) => {
      await labDown(name);
    });
}

interface UpFlags {
  readonly name: string;
  readonly kernel?: string;
  readonly memory?: string;
  readonly cpus?: string;
  readonly paging?: string;
  readonly processes?: string;
  readonly accel?: string;
  readonly rootkit?: boolean;
}

type Listed = LabInfo & { state: LabState };

const LIST_COLUMNS: readonly Column<Listed>[] = [
  { header: 'NAME', value: (g) => g.name },
  { header: 'STATE', value: (g) => g.state },
  { header: 'KERNEL', value: (g) => g.kernelRelease },
  { header: 'MEMORY', value: (g) => `${g.memoryMiB}M`, align: 'right' },
  { header: 'CPUS', value: (g) => g.cpus, align: 'right' },
  { header: 'PAGING', value: (g) => `${g.paging}-level` },
  { header: 'PID', value: (g) => g.pid, align: 'right' },
  { header: 'GDB', value: (g) => g.gdbPort, align: 'right' },
  { header: 'QMP', value: (g) => g.qmpSocket },
];

function renderInfo(info: LabInfo): string {
  const workers = info.processes.filter((p) => p.comm.startsWith('lab-worker-')).length;
  return renderFields([
    ['name', info.name],
    ['kernel', `${info.kernelRelease} (${info.kernelPackage} ${info.kernelVersion})`],
    ['memory', `${info.memoryMiB} MiB`],
    ['cpus', info.cpus],
    ['paging', `${info.paging}-level`],
    ['accel', info.accel],
    ['pid', info.pid],
    ['boot', `${(info.bootMs / 1000).toFixed(1)} s`],
    ['ram file', info.ramFile],
    ['qmp', info.qmpSocket],
    ['console', info.consoleSocket],
    ['gdb', `127.0.0.1:${info.gdbPort}`],
    ['modules', info.modules.join(' ')],
    ['processes', `${info.processes.length} (${workers} lab-worker-N)`],
    ...(info.rootkit
      ? ([
          ['rootkit', `${info.rootkit.module} at ${info.rootkit.structModule}, hiding pid ${info.rootkit.hiddenProcess.pid} (${info.rootkit.hiddenProcess.comm})`],
          ['hooked', `sys_call_table[${info.rootkit.hook.syscall}] ${info.rootkit.hook.original} (${info.rootkit.hook.originalSymbol}) → ${info.rootkit.hook.handler}`],
        ] as [string, string][])
      : []),
  ]);
}
