/**
 * Sockets — `netstat -tuxanp`, /proc/net/{tcp,tcp6,udp,udp6,unix}, and Volatility's
 * linux.sockstat: TCP and UDP over IPv4 and IPv6 from the kernel's hash tables (so TIME_WAIT
 * remnants and pending connections appear too), UNIX sockets from the per-namespace table, each
 * with the processes that hold it open (found through their descriptor tables).
 */
import { fileKind, forEachFile } from '../kernel/helpers/fs.ts';
import { AF_INET6, formatAddress, tcpSockets, tcpStateName, udpSockets, unixSockets, type InetSocket, type UnixSocket } from '../kernel/helpers/net.ts';
import { structReader } from '../kernel/helpers/struct-reader.ts';
import type { Kernel } from '../kernel/kernel.ts';
import { selectProcesses } from './processes.ts';
import type { TaskRow } from './ps.ts';

export type NetProtocol = 'tcp' | 'tcp6' | 'udp' | 'udp6' | 'unix';

/** A process holding a socket. */
export interface SocketOwner {
  readonly pid: number;
  readonly comm: string;
  readonly fd: number;
}

export interface SocketRow {
  readonly proto: NetProtocol;
  /** `struct sock *` (or the TIME_WAIT / request object). */
  readonly sock: bigint;
  /** "addr:port" for internet sockets ("[v6]:port"), the bound path for UNIX ones ('' if none). */
  readonly local: string;
  /** "addr:port"; for UNIX sockets the peer's path when it has one, else ''. */
  readonly remote: string;
  readonly localAddress: string | null;
  readonly localPort: number | null;
  readonly remoteAddress: string | null;
  readonly remotePort: number | null;
  /** TCP state name; UDP: ESTABLISHED (connected) or CLOSE; UNIX: LISTENING, CONNECTED, … or ''. */
  readonly state: string;
  /** Raw state number as /proc prints it. */
  readonly stateNumber: number;
  /** For UNIX sockets: STREAM, DGRAM, SEQPACKET. */
  readonly type: string;
  readonly recvQ: number;
  readonly sendQ: number;
  readonly uid: number;
  readonly inode: number;
  /** Inode number of the socket's network namespace. */
  readonly netns: number;
  readonly owners: readonly SocketOwner[];
}

export interface NetstatOptions {
  readonly protocols?: ReadonlySet<'tcp' | 'udp' | 'unix'>;
  /** Only sockets held by these processes. */
  readonly pids?: ReadonlySet<number>;
  /** Only sockets of this network namespace (its inode number). */
  readonly netns?: number;
}

const UNIX_TYPES: Record<number, string> = { 1: 'STREAM', 2: 'DGRAM', 5: 'SEQPACKET' };
const SS_STATES: Record<number, string> = { 2: 'CONNECTING', 3: 'CONNECTED', 4: 'DISCONNECTING' };

export function listSockets(k: Kernel, opts: NetstatOptions = {}): SocketRow[] {
  const want = opts.protocols ?? new Set(['tcp', 'udp', 'unix'] as const);
  const owners = socketOwners(k, selectProcesses(k, opts.pids));
  const rows: SocketRow[] = [];
  const run = <T>(what: string, fn: () => T[]): T[] => {
    try {
      return fn();
    } catch (e) {
      k.warnings.warn('netstat', `${what}: ${(e as Error).message}`);
      return [];
    }
  };
  if (want.has('tcp')) for (const s of run('tcp', () => tcpSockets(k))) rows.push(inetRow(s, owners));
  if (want.has('udp')) for (const s of run('udp', () => udpSockets(k))) rows.push(inetRow(s, owners));
  if (want.has('unix')) {
    const unix = run('unix', () => unixSockets(k));
    const bySock = new Map(unix.map((u) => [u.sock, u] as const));
    for (const s of unix) rows.push(unixRow(s, bySock.get(s.peer), owners));
  }
  return rows.filter((r) => (opts.pids ? r.owners.length > 0 : true) && (opts.netns === undefined || r.netns === opts.netns));
}

/** Socket inode → the processes (and fds) holding it, from every selected process's file table. */
export function socketOwners(k: Kernel, tasks: readonly TaskRow[]): Map<number, SocketOwner[]> {
  const r = structReader(k);
  const out = new Map<number, SocketOwner[]>();
  for (const t of tasks) {
    try {
      const files = r.ptr(t.task, 'task_struct', 'files');
      if (files === 0n) continue;
      for (const f of forEachFile(k, files)) {
        const inode = r.ptr(f.file, 'file', 'f_inode');
        if (inode === 0n || fileKind(r.u16(inode, 'inode', 'i_mode')) !== 'SOCK') continue;
        const ino = r.num64(inode, 'inode', 'i_ino');
        const list = out.get(ino) ?? [];
        // A process with the socket on several fds is listed once, at its lowest fd.
        if (!list.some((o) => o.pid === t.pid)) list.push({ pid: t.pid, comm: t.comm, fd: f.fd });
        out.set(ino, list);
      }
    } catch (e) {
      k.warnings.warn('netstat', `pid ${t.pid}: file table: ${(e as Error).message}`);
    }
  }
  return out;
}

function inetRow(s: InetSocket, owners: Map<number, SocketOwner[]>): SocketRow {
  const v6 = s.family === AF_INET6;
  const la = formatAddress(s.localAddr);
  const ra = formatAddress(s.remoteAddr);
  const join = (a: string, p: number) => (v6 ? `[${a}]:${p}` : `${a}:${p}`);
  return {
    proto: `${s.protocol}${v6 ? '6' : ''}` as NetProtocol,
    sock: s.sock,
    local: join(la, s.localPort),
    remote: join(ra, s.remotePort),
    localAddress: la,
    localPort: s.localPort,
    remoteAddress: ra,
    remotePort: s.remotePort,
    state: tcpStateName(s.state),
    stateNumber: s.state,
    type: s.protocol === 'tcp' ? 'STREAM' : 'DGRAM',
    recvQ: s.rxQueue,
    sendQ: s.txQueue,
    uid: s.uid,
    inode: s.inode,
    netns: s.netns,
    owners: s.inode === 0 ? [] : (owners.get(s.inode) ?? []),
  };
}

function unixRow(s: UnixSocket, peer: UnixSocket | undefined, owners: Map<number, SocketOwner[]>): SocketRow {
  const listening = s.flags !== 0;
  return {
    proto: 'unix',
    sock: s.sock,
    local: s.path,
    remote: peer?.path ?? '',
    localAddress: null,
    localPort: null,
    remoteAddress: null,
    remotePort: null,
    state: listening ? 'LISTENING' : (SS_STATES[s.socketState] ?? ''),
    stateNumber: s.socketState,
    type: UNIX_TYPES[s.type] ?? `type ${s.type}`,
    recvQ: 0,
    sendQ: 0,
    uid: 0,
    inode: s.inode,
    netns: s.netns,
    owners: s.inode === 0 ? [] : (owners.get(s.inode) ?? []),
  };
}

/** netstat's "PID/Program name" column. */
export function ownerLabel(row: SocketRow): string {
  return row.owners.map((o) => `${o.pid}/${o.comm}`).join(',');
}
