import { resolve } from 'node:path';
import type { Command } from 'commander';
import { listOpenFiles, fdLabel, type FileRow } from '../../analyses/lsof.ts';
import { formatMapLine, listMaps, type MapRow } from '../../analyses/maps.ts';
import { formatMountinfoLine, listMounts, type MountRow } from '../../analyses/mounts.ts';
import type { CgroupLine } from '../../analyses/cgroups.ts';
import { formatCapSet, listCreds, type CredRow } from '../../analyses/creds.ts';
import { cgroupSummary, listNamespaces, NAMESPACE_KINDS, NS_LINK_NAMES, type NamespaceRow } from '../../analyses/namespaces.ts';
import { listSockets, ownerLabel, type SocketRow } from '../../analyses/netstat.ts';
import { parsePidList } from '../../analyses/processes.ts';
import { dumpProcess, listCmdlines, listEnviron, type CmdlineRow, type EnvironRow } from '../../analyses/proc-memory.ts';
import { openKernel } from '../../kernel/open.ts';
import { UsageError } from '../../util/errors.ts';
import { byteProgressBar } from '../progress-bar.ts';
import { emit, holdPause, parseCount, reportWarnings, withKernel, withMachine } from '../context.ts';
import { renderTable, type Column } from '../render.ts';

/**
 * Per-process forensics and containers: memory areas, open files, sockets, mounts, command
 * lines and environments, namespaces and cgroups, and dumping a process's memory. Names and
 * columns follow the Linux tools and Volatility's linux plugins.
 */

const hex = (v: bigint | number, w = 0) => v.toString(16).padStart(w, '0');

const mapColumns: Column<MapRow>[] = [
  { header: 'PID', value: (r) => r.pid, align: 'right' },
  { header: 'COMM', value: (r) => r.comm },
  { header: 'START', value: (r) => hex(r.start, 12) },
  { header: 'END', value: (r) => hex(r.end, 12) },
  { header: 'PERMS', value: (r) => r.perms },
  { header: 'OFFSET', value: (r) => hex(r.offset, 8) },
  { header: 'DEV', value: (r) => `${hex(r.major, 2)}:${hex(r.minor, 2)}` },
  { header: 'INODE', value: (r) => r.inode, align: 'right' },
  { header: 'PATH', value: (r) => r.path },
];

const fileColumns: Column<FileRow>[] = [
  { header: 'PID', value: (r) => r.pid, align: 'right' },
  { header: 'COMM', value: (r) => r.comm },
  { header: 'FD', value: (r) => fdLabel(r), align: 'right' },
  { header: 'TYPE', value: (r) => r.type },
  { header: 'DEVICE', value: (r) => `${r.major},${r.minor}` },
  { header: 'SIZE/OFF', value: (r) => (r.type === 'REG' || r.type === 'DIR' ? (r.use === 'fd' ? r.pos : r.size) : r.use === 'fd' ? r.pos : ''), align: 'right' },
  { header: 'NODE', value: (r) => (r.protocol !== '' ? r.protocol : r.inode), align: 'right' },
  { header: 'FLAGS', value: (r) => (r.use === 'fd' ? `0${r.flags.toString(8)}` : '') },
  { header: 'NAME', value: (r) => r.path },
];

const socketColumns: Column<SocketRow>[] = [
  { header: 'Proto', value: (r) => r.proto },
  { header: 'Recv-Q', value: (r) => r.recvQ, align: 'right' },
  { header: 'Send-Q', value: (r) => r.sendQ, align: 'right' },
  { header: 'Local Address', value: (r) => (r.proto === 'unix' ? `${r.type}` : r.local) },
  { header: 'Foreign Address', value: (r) => (r.proto === 'unix' ? '' : r.remote) },
  { header: 'State', value: (r) => r.state },
  { header: 'Inode', value: (r) => r.inode, align: 'right' },
  { header: 'PID/Program', value: (r) => ownerLabel(r) },
  { header: 'Path', value: (r) => (r.proto === 'unix' ? r.local : '') },
];

const mountColumns: Column<MountRow>[] = [
  { header: 'MNT_NS', value: (r) => r.mntNs },
  { header: 'PID', value: (r) => r.pid },
  { header: 'ID', value: (r) => r.mountId, align: 'right' },
  { header: 'PARENT', value: (r) => r.parentId, align: 'right' },
  { header: 'DEV', value: (r) => `${r.major}:${r.minor}` },
  { header: 'ROOT', value: (r) => r.root },
  { header: 'MOUNT POINT', value: (r) => r.mountPoint },
  { header: 'OPTIONS', value: (r) => [r.options, ...r.propagation].join(' ') },
  { header: 'TYPE', value: (r) => r.fsType },
  { header: 'SOURCE', value: (r) => r.source },
  { header: 'SUPER', value: (r) => r.superOptions },
];

const cmdlineColumns: Column<CmdlineRow>[] = [
  { header: 'PID', value: (r) => r.pid, align: 'right' },
  { header: 'PPID', value: (r) => r.ppid, align: 'right' },
  { header: 'COMM', value: (r) => r.comm },
  { header: 'ARGS', value: (r) => (r.args.length === 0 ? `[${r.comm}]` : r.args.join(' ') + (r.complete ? '' : ' …')) },
];

const environColumns: Column<EnvironRow>[] = [
  { header: 'PID', value: (r) => r.pid, align: 'right' },
  { header: 'COMM', value: (r) => r.comm },
  { header: 'KEY', value: (r) => r.key },
  { header: 'VALUE', value: (r) => r.value },
];

const nsColumns: Column<NamespaceRow>[] = [
  { header: 'PID', value: (r) => r.pid, align: 'right' },
  { header: 'COMM', value: (r) => r.comm },
  ...NAMESPACE_KINDS.filter((n) => n !== 'pidForChildren' && n !== 'timeForChildren').map(
    (n): Column<NamespaceRow> => ({ header: NS_LINK_NAMES[n].toUpperCase(), value: (r) => r.ns[n], align: 'right' }),
  ),
  { header: 'CGROUP', value: cgroupSummary },
  { header: 'C', value: (r) => (r.contained ? '*' : '') },
];

const credColumns: Column<CredRow>[] = [
  { header: 'PID', value: (r) => r.pid, align: 'right' },
  { header: 'COMM', value: (r) => r.comm },
  { header: 'UID', value: (r) => r.uids[0], align: 'right' },
  { header: 'EUID', value: (r) => r.uids[1], align: 'right' },
  { header: 'GID', value: (r) => r.gids[0], align: 'right' },
  { header: 'EGID', value: (r) => r.gids[1], align: 'right' },
  { header: 'CAPEFF', value: (r) => formatCapSet(r.caps.effective) },
  { header: 'CAPPRM', value: (r) => formatCapSet(r.caps.permitted) },
  { header: 'CAPBND', value: (r) => formatCapSet(r.caps.bounding) },
  { header: 'NNP', value: (r) => (r.noNewPrivs ? 1 : 0), align: 'right' },
  { header: 'SECCOMP', value: (r) => r.seccomp, align: 'right' },
  { header: 'TRACER', value: (r) => r.tracerPid, align: 'right' },
];

interface CgroupRow extends CgroupLine {
  readonly pid: number;
  readonly comm: string;
}

const cgroupColumns: Column<CgroupRow>[] = [
  { header: 'PID', value: (r) => r.pid, align: 'right' },
  { header: 'COMM', value: (r) => r.comm },
  { header: 'ID', value: (r) => r.hierarchy, align: 'right' },
  { header: 'CONTROLLERS', value: (r) => r.controllers },
  { header: 'PATH', value: (r) => r.path },
];

const pidOption = ['-p, --pid <pids>', 'only these processes (comma-separated pids)'] as const;

function pidsOf(o: { pid?: string }): Set<number> | undefined {
  return o.pid === undefined ? undefined : parsePidList(o.pid);
}

export function register(program: Command): void {
  program
    .command('maps')
    .description('memory areas of processes, like /proc/PID/maps (linux.proc.Maps)')
    .option(...pidOption)
    .option('--proc', 'print exactly the lines /proc/PID/maps would (needs one -p pid)')
    .action(async (o: { pid?: string; proc?: boolean }, cmd: Command) => {
      const pids = pidsOf(o);
      if (o.proc && pids?.size !== 1) throw new UsageError('--proc prints one process\'s maps: give one pid with -p');
      await withKernel(cmd, (k, opts) => {
        const rows = listMaps(k, { pids });
        emit(opts, () => rows, () => (o.proc ? rows.map(formatMapLine).join('\n') : renderTable(mapColumns, rows)));
      });
    });

  program
    .command('lsof')
    .description('open files of processes: descriptors, cwd, root and executable (linux.lsof)')
    .option(...pidOption)
    .option('--fds-only', 'only descriptors (no cwd, rtd, txt rows)')
    .action(async (o: { pid?: string; fdsOnly?: boolean }, cmd: Command) => {
      const pids = pidsOf(o);
      await withKernel(cmd, (k, opts) => {
        const rows = listOpenFiles(k, { pids, special: !o.fdsOnly });
        emit(opts, () => rows, () => renderTable(fileColumns, rows));
      });
    });

  program
    .command('netstat')
    .description('TCP, UDP and UNIX sockets with their owners, like netstat -tuxanp (linux.sockstat)')
    .option(...pidOption)
    .option('-t, --tcp', 'TCP sockets')
    .option('-u, --udp', 'UDP sockets')
    .option('-x, --unix', 'UNIX sockets')
    .option('--netns <inode>', 'only this network namespace (its inode number, as `vmlens ns` shows)')
    .action(async (o: { pid?: string; tcp?: boolean; udp?: boolean; unix?: boolean; netns?: string }, cmd: Command) => {
      const pids = pidsOf(o);
      const chosen = (['tcp', 'udp', 'unix'] as const).filter((p) => o[p]);
      const protocols = chosen.length === 0 ? undefined : new Set(chosen);
      const netns = o.netns === undefined ? undefined : parseCount(o.netns, 'namespace inode', 0xffff_ffff);
      await withKernel(cmd, (k, opts) => {
        const rows = listSockets(k, { pids, protocols, netns });
        emit(opts, () => rows, () => renderTable(socketColumns, rows));
      });
    });

  program
    .command('mounts')
    .description('mount tables of every mount namespace, or of processes (like /proc/PID/mountinfo)')
    .option(...pidOption)
    .option('--proc', 'print mountinfo lines (without file-system-specific options)')
    .action(async (o: { pid?: string; proc?: boolean }, cmd: Command) => {
      const pids = pidsOf(o);
      await withKernel(cmd, (k, opts) => {
        const rows = listMounts(k, { pids });
        emit(opts, () => rows, () => (o.proc ? rows.map(formatMountinfoLine).join('\n') : renderTable(mountColumns, rows)));
      });
    });

  program
    .command('cmdline')
    .description('command lines, read from each process\'s memory (/proc/PID/cmdline, linux.psaux)')
    .option(...pidOption)
    .action(async (o: { pid?: string }, cmd: Command) => {
      const pids = pidsOf(o);
      await withKernel(cmd, (k, opts) => {
        const rows = listCmdlines(k, { pids });
        emit(opts, () => rows, () => renderTable(cmdlineColumns, rows));
      });
    });

  program
    .command('environ')
    .description('environment variables, read from each process\'s memory (/proc/PID/environ, linux.envars)')
    .option(...pidOption)
    .action(async (o: { pid?: string }, cmd: Command) => {
      const pids = pidsOf(o);
      await withKernel(cmd, (k, opts) => {
        const rows = listEnviron(k, { pids });
        emit(opts, () => rows, () => renderTable(environColumns, rows));
      });
    });

  program
    .command('ns')
    .description('namespaces and cgroup of processes (ls -l /proc/PID/ns, /proc/PID/cgroup); * = contained')
    .option(...pidOption)
    .action(async (o: { pid?: string }, cmd: Command) => {
      const pids = pidsOf(o);
      await withKernel(cmd, (k, opts) => {
        const rows = listNamespaces(k, { pids });
        emit(opts, () => rows, () => renderTable(nsColumns, rows));
      });
    });

  program
    .command('creds')
    .description('credentials of processes: uids, gids, groups, capability sets, no_new_privs, seccomp, tracer (/proc/PID/status, linux.capabilities)')
    .option(...pidOption)
    .action(async (o: { pid?: string }, cmd: Command) => {
      const pids = pidsOf(o);
      await withKernel(cmd, (k, opts) => {
        const rows = listCreds(k, { pids });
        emit(opts, () => rows, () => renderTable(credColumns, rows));
      });
    });

  program
    .command('cgroup')
    .description('cgroups of processes: every line of /proc/PID/cgroup, v1 hierarchies and v2')
    .option(...pidOption)
    .action(async (o: { pid?: string }, cmd: Command) => {
      const pids = pidsOf(o);
      await withKernel(cmd, (k, opts) => {
        const rows = listNamespaces(k, { pids }).flatMap((n) => n.cgroups.map((l): CgroupRow => ({ pid: n.pid, comm: n.comm, ...l })));
        emit(opts, () => rows, () => renderTable(cgroupColumns, rows));
      });
    });

  program
    .command('dump-proc')
    .description('write each memory area of a process to a file, plus index.json (pages not present read as zeros)')
    .argument('<pid>', 'the process')
    .option('--out <dir>', 'output directory (default: ./pid-<PID>)')
    .option('--no-pause', 'do not pause a live guest while dumping (areas may then mix instants)')
    .option('--no-page-cache', 'do not fill file pages the process has not touched from the page cache')
    .action(async (pidText: string, o: { out?: string; pause: boolean; pageCache: boolean }, cmd: Command) => {
      const pid = [...parsePidList(pidText)][0]!;
      const out = resolve(o.out ?? `pid-${pid}`);
      await withMachine(cmd, async (machine, opts) => {
        const paused = o.pause || opts.consistent ? await holdPause(machine) : undefined;
        try {
          const k = await openKernel(machine, { btfFile: opts.btf, systemMapFile: opts.systemMap, frozen: paused !== undefined || !machine.live });
          const bar = byteProgressBar('dump-proc', opts.json);
          const index = dumpProcess(k, pid, out, { pageCache: o.pageCache, progress: bar ? (done, total) => bar.update(done, total) : undefined });
          bar?.stop();
          emit(
            opts,
            () => ({ directory: out, ...index }),
            () =>
              `${index.areas.length} areas of pid ${pid} (${index.comm}) in ${out}: ` +
              `${(index.presentBytes / 2 ** 20).toFixed(1)} MiB present (${(index.pageCacheBytes / 2 ** 20).toFixed(1)} MiB from the page cache) ` +
              `of ${(index.totalBytes / 2 ** 20).toFixed(1)} MiB mapped; index.json lists the pages not present`,
          );
          reportWarnings(k.warnings);
        } finally {
          if (paused) await paused.resume();
        }
      });
    });
}
