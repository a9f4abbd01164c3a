/**
 * Sockets (include/net/sock.h, net/ipv4/tcp_ipv4.c, net/ipv4/udp.c, net/unix/af_unix.c): the
 * kernel's socket hash tables walked the way /proc/net/{tcp,tcp6,udp,udp6,unix} walk them.
 *
 *   for_each_net(net)                     →  forEachNet(k)          struct net *
 *   tcp4_seq_show / tcp6_seq_show         →  tcpSockets(k)          lhash2 + ehash (with TIME_WAIT and SYN_RECV)
 *   udp4_seq_show / udp6_seq_show         →  udpSockets(k)          udp_table
 *   unix_seq_show                         →  unixSockets(k)         per-namespace unix table
 *   SOCKET_I(inode), sock_i_ino(sk)       →  socketOfInode, sockInode
 *
 * Bucket arrays are read in bulk and only non-empty buckets followed; every chain is bounded
 * and cycle-checked, and the table sizes read from the guest are capped.
 */
import { vaFromParts } from '../../mmu/va.ts';
import type { Kernel } from '../kernel.ts';
import { listForEachEntry } from './list.ts';
import { hlistNullsForEach } from './list-nulls.ts';
import { structReader, type StructReader } from './struct-reader.ts';

export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const AF_NETLINK = 16;
export const AF_PACKET = 17;

/** TCP states (include/net/tcp_states.h); UDP uses ESTABLISHED (connected) and CLOSE. */
export const TCP_STATES = [
  '',
  'ESTABLISHED',
  'SYN_SENT',
  'SYN_RECV',
  'FIN_WAIT1',
  'FIN_WAIT2',
  'TIME_WAIT',
  'CLOSE',
  'CLOSE_WAIT',
  'LAST_ACK',
  'LISTEN',
  'CLOSING',
  'NEW_SYN_RECV',
] as const;
const TCP_TIME_WAIT = 6;
const TCP_SYN_RECV = 3;
const TCP_LISTEN = 10;
const TCP_NEW_SYN_RECV = 12;

/** Most buckets a table may have (the kernel sizes them from RAM; millions at most). */
const MAX_BUCKETS = 1 << 24;
const BUCKET_CHUNK = 8192;
const CHAIN_LIMIT = 1_000_000;

/** An internet socket as /proc/net/tcp|udp (and netstat) shows it. */
export interface InetSocket {
  /** `struct sock *` (or `struct inet_timewait_sock *` / `struct request_sock *`). */
  readonly sock: bigint;
  readonly protocol: 'tcp' | 'udp';
  readonly family: typeof AF_INET | typeof AF_INET6;
  /** What kind of object the hash held: a full socket, a TIME_WAIT remnant, or a pending connection. */
  readonly kind: 'socket' | 'timewait' | 'request';
  /** State number as /proc prints it (TIME_WAIT's substate, SYN_RECV for requests). */
  readonly state: number;
  /** Addresses as raw bytes in network order (4 or 16). */
  readonly localAddr: Uint8Array;
  readonly localPort: number;
  readonly remoteAddr: Uint8Array;
  readonly remotePort: number;
  /** sock_i_ino(): the socket's inode number, 0 when no file holds it. */
  readonly inode: number;
  /** sock_i_uid(). */
  readonly uid: number;
  readonly txQueue: number;
  readonly rxQueue: number;
  /** Inode number of the socket's network namespace (net->ns.inum). */
  readonly netns: number;
}

/** A UNIX socket as /proc/net/unix shows it. */
export interface UnixSocket {
  readonly sock: bigint;
  /** SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5. */
  readonly type: number;
  /** sk_state (TCP_* values: ESTABLISHED, LISTEN, CLOSE). */
  readonly state: number;
  /** The St column: SS_UNCONNECTED 1, SS_CONNECTING 2, SS_CONNECTED 3, SS_DISCONNECTING 4. */
  readonly socketState: number;
  /** Flags column: __SO_ACCEPTCON (1 << 16) for a listening socket. */
  readonly flags: number;
  readonly refCount: number;
  readonly inode: number;
  /** Bound path; abstract names start with '@' (and NULs in them read as '@'), '' when unbound. */
  readonly path: string;
  /** The connected peer's `struct sock *`, 0 for none. */
  readonly peer: bigint;
  readonly netns: number;
}

/** Every network namespace on net_namespace_list. */
export function forEachNet(k: Kernel): bigint[] {
  const out: bigint[] = [];
  const head = k.variable('net_namespace_list', 'struct list_head');
  for (const net of listForEachEntry(head, 'struct net', 'list', { what: 'network namespaces', limit: 100_000 })) out.push(net.address);
  return out;
}

/** Inode number of a network namespace. */
export function netInum(k: Kernel, net: bigint): number {
  return structReader(k).u32(net, 'net', 'ns.inum');
}

/** SOCKET_I(): the `struct socket *` whose `struct inode` is `inode` (both live in a socket_alloc). */
export function socketOfInode(k: Kernel, inode: bigint): bigint {
  const r = structReader(k);
  return inode - BigInt(r.off('socket_alloc', 'vfs_inode')) + BigInt(r.off('socket_alloc', 'socket'));
}

/** sock_i_ino(): the inode number of the socket file holding `sk`, or 0. */
export function sockInode(k: Kernel, sk: bigint): number {
  const r = structReader(k);
  const socket = r.ptr(sk, 'sock', 'sk_socket');
  if (socket === 0n) return 0;
  const inode = socket - BigInt(r.off('socket_alloc', 'socket')) + BigInt(r.off('socket_alloc', 'vfs_inode'));
  return r.num64(inode, 'inode', 'i_ino');
}

/** sock_i_uid(). */
function sockUid(r: StructReader, sk: bigint): number {
  const socket = r.ptr(sk, 'sock', 'sk_socket');
  if (socket === 0n) return 0;
  const inode = socket - BigInt(r.off('socket_alloc', 'socket')) + BigInt(r.off('socket_alloc', 'vfs_inode'));
  return r.u32(inode, 'inode', 'i_uid');
}

/** Family, type and protocol of a `struct sock *`. */
export function sockKind(k: Kernel, sk: bigint): { family: number; type: number; protocol: number } {
  const r = structReader(k);
  return { family: r.u16(sk, 'sock_common', 'skc_family'), type: r.u16(sk, 'sock', 'sk_type'), protocol: r.u16(sk, 'sock', 'sk_protocol') };
}

/**
 * Call `visit` for every bucket of an array of `count` buckets of `stride` bytes at `base` whose
 * first pointer (at `headOff` inside the bucket) is a real node: the array is read in chunks,
 * so empty buckets cost no translation each.
 */
function forEachBucket(k: Kernel, what: string, base: bigint, count: number, stride: number, headOff: number, visit: (hi: number, lo: number) => void): void {
  if (count > MAX_BUCKETS) {
    k.warnings.warn(what, `${count} buckets claimed; reading ${MAX_BUCKETS}`);
    count = MAX_BUCKETS;
  }
  const buf = new Uint8Array(Math.min(count, BUCKET_CHUNK) * stride);
  const dv = new DataView(buf.buffer);
  for (let first = 0; first < count; first += BUCKET_CHUNK) {
    const n = Math.min(BUCKET_CHUNK, count - first);
    try {
      k.space.read(base + BigInt(first * stride), buf.subarray(0, n * stride));
    } catch (e) {
      k.warnings.warn(what, `buckets ${first}..${first + n - 1}: ${(e as Error).message}`);
      continue;
    }
    for (let i = 0; i < n; i++) {
      const lo = dv.getUint32(i * stride + headOff, true);
      const hi = dv.getUint32(i * stride + headOff + 4, true);
      if ((lo & 1) === 1 || (hi === 0 && lo === 0)) continue; // empty (nulls marker or NULL)
      visit(hi, lo);
    }
  }
}

/** The TCP hash tables in use: one per network namespace that has its own, else the global one. */
function tcpHashinfos(k: Kernel, r: StructReader): bigint[] {
  const set = new Set<bigint>();
  if (r.has('netns_ipv4', 'tcp_death_row') && r.has('inet_timewait_death_row', 'hashinfo')) {
    const deathRowIsPtr = k.btf.resolved(k.btf.member('struct netns_ipv4', 'tcp_death_row')!.typeId).kind === 'ptr';
    for (const net of forEachNet(k)) {
      try {
        let dr = r.at(net, 'net', 'ipv4') + BigInt(r.off('netns_ipv4', 'tcp_death_row'));
        if (deathRowIsPtr) dr = k.space.readU64Big(dr);
        const h = r.ptr(dr, 'inet_timewait_death_row', 'hashinfo');
        if (h !== 0n) set.add(h);
      } catch (e) {
        k.warnings.warn('tcp', `net 0x${net.toString(16)}: ${(e as Error).message}`);
      }
    }
  }
  if (set.size === 0) set.add(k.symbol('tcp_hashinfo'));
  return [...set];
}

/** Every TCP socket in the listening and established hashes (IPv4 and IPv6), as /proc/net/tcp{,6}. */
export function tcpSockets(k: Kernel): InetSocket[] {
  const r = structReader(k);
  const out: InetSocket[] = [];
  const seen = new Set<bigint>();
  const nodeOff = r.off('sock_common', 'skc_nulls_node');
  const add = (hi: number, lo: number): void => {
    const sk = vaFromParts(hi, lo);
    if (seen.has(sk)) return;
    seen.add(sk);
    try {
      out.push(readInet(k, r, sk, 'tcp'));
    } catch (e) {
      k.warnings.warn('tcp', `socket 0x${sk.toString(16)}: ${(e as Error).message}`);
    }
  };
  for (const h of tcpHashinfos(k, r)) {
    // Listening sockets: lhash2 buckets (a nulls list through skc_nulls_node from 5.19/6.0;
    // before, an hlist through icsk_listen_portaddr_node).
    const lhashMask = r.u32(h, 'inet_hashinfo', 'lhash2_mask');
    const lhash2 = r.ptr(h, 'inet_hashinfo', 'lhash2');
    const stride = r.sizeof('inet_listen_hashbucket');
    if (lhash2 !== 0n) {
      const nulls = r.has('inet_listen_hashbucket', 'nulls_head');
      const headOff = nulls ? r.off('inet_listen_hashbucket', 'nulls_head') : r.off('inet_listen_hashbucket', 'head');
      const linkOff = nulls ? nodeOff : r.off('inet_connection_sock', 'icsk_listen_portaddr_node');
      forEachBucket(k, 'tcp listening hash', lhash2, lhashMask + 1, stride, headOff, (hi, lo) => {
        hlistNullsForEach(k.space, k.warnings, 'tcp listening chain', hi, lo, linkOff, add, CHAIN_LIMIT);
      });
    }
    // Established, TIME_WAIT and SYN_RECV: the ehash chains.
    const ehashMask = r.u32(h, 'inet_hashinfo', 'ehash_mask');
    const ehash = r.ptr(h, 'inet_hashinfo', 'ehash');
    if (ehash !== 0n) {
      forEachBucket(k, 'tcp established hash', ehash, ehashMask + 1, r.sizeof('inet_ehash_bucket'), r.off('inet_ehash_bucket', 'chain'), (hi, lo) => {
        hlistNullsForEach(k.space, k.warnings, 'tcp established chain', hi, lo, nodeOff, add, CHAIN_LIMIT);
      });
    }
  }
  return out;
}

/** The UDP tables in use: per namespace (6.2+) or the global udp_table. */
function udpTables(k: Kernel, r: StructReader): bigint[] {
  const set = new Set<bigint>();
  if (r.has('netns_ipv4', 'udp_table')) {
    for (const net of forEachNet(k)) {
      const t = k.space.readU64Big(r.at(net, 'net', 'ipv4') + BigInt(r.off('netns_ipv4', 'udp_table')));
      if (t !== 0n) set.add(t);
    }
  }
  if (set.size === 0) set.add(k.symbol('udp_table'));
  return [...set];
}

/** Every bound UDP socket (IPv4 and IPv6), as /proc/net/udp{,6}. */
export function udpSockets(k: Kernel): InetSocket[] {
  const r = structReader(k);
  const out: InetSocket[] = [];
  const seen = new Set<bigint>();
  const nodeOff = r.off('sock_common', 'skc_node');
  for (const table of udpTables(k, r)) {
    const mask = r.u32(table, 'udp_table', 'mask');
    const hash = r.ptr(table, 'udp_table', 'hash');
    if (hash === 0n) continue;
    forEachBucket(k, 'udp hash', hash, mask + 1, r.sizeof('udp_hslot'), r.off('udp_hslot', 'head'), (hi, lo) => {
      hlistNullsForEach(k.space, k.warnings, 'udp chain', hi, lo, nodeOff, (h, l) => {
        const sk = vaFromParts(h, l);
        if (seen.has(sk)) return;
        seen.add(sk);
        try {
          out.push(readInet(k, r, sk, 'udp'));
        } catch (e) {
          k.warnings.warn('udp', `socket 0x${sk.toString(16)}: ${(e as Error).message}`);
        }
      }, CHAIN_LIMIT);
    });
  }
  return out;
}

function readInet(k: Kernel, r: StructReader, sk: bigint, protocol: 'tcp' | 'udp'): InetSocket {
  const C = 'sock_common';
  const family = r.u16(sk, C, 'skc_family');
  if (family !== AF_INET && family !== AF_INET6) throw new Error(`family ${family} in an internet hash`);
  const rawState = r.u8(sk, C, 'skc_state');
  const v6 = family === AF_INET6;
  const localAddr = v6 ? k.space.readBytes(r.at(sk, C, 'skc_v6_rcv_saddr'), 16) : k.space.readBytes(r.at(sk, C, 'skc_rcv_saddr'), 4);
  const remoteAddr = v6 ? k.space.readBytes(r.at(sk, C, 'skc_v6_daddr'), 16) : k.space.readBytes(r.at(sk, C, 'skc_daddr'), 4);
  const localPort = r.u16(sk, C, 'skc_num');
  const dport = r.u16(sk, C, 'skc_dport');
  const remotePort = ((dport & 0xff) << 8) | (dport >>> 8);
  const net = r.ptr(sk, C, 'skc_net.net');
  const netns = net === 0n ? 0 : netInum(k, net);
  const base = { sock: sk, protocol, family: family as typeof AF_INET | typeof AF_INET6, localAddr, localPort, remoteAddr, remotePort, netns };
  if (protocol === 'tcp' && rawState === TCP_TIME_WAIT) {
    return { ...base, kind: 'timewait', state: r.u8(sk, 'inet_timewait_sock', 'tw_substate'), inode: 0, uid: 0, txQueue: 0, rxQueue: 0 };
  }
  if (protocol === 'tcp' && rawState === TCP_NEW_SYN_RECV) {
    const listener = r.ptr(sk, 'request_sock', 'rsk_listener');
    return { ...base, kind: 'request', state: TCP_SYN_RECV, inode: 0, uid: listener === 0n ? 0 : sockUid(r, listener), txQueue: 0, rxQueue: 0 };
  }
  const inode = sockInode(k, sk);
  const uid = sockUid(r, sk);
  let txQueue: number;
  let rxQueue: number;
  if (protocol === 'tcp') {
    txQueue = (r.u32(sk, 'tcp_sock', 'write_seq') - r.u32(sk, 'tcp_sock', 'snd_una')) >>> 0;
    rxQueue = rawState === TCP_LISTEN ? r.u32(sk, 'sock', 'sk_ack_backlog') : Math.max(0, (r.u32(sk, 'tcp_sock', 'rcv_nxt') - r.u32(sk, 'tcp_sock', 'copied_seq')) | 0);
  } else {
    txQueue = (r.u32(sk, 'sock', 'sk_wmem_alloc') - 1) >>> 0;
    const deficit = r.has('udp_sock', 'forward_deficit') ? r.i32(sk, 'udp_sock', 'forward_deficit') : 0;
    rxQueue = (r.i32(sk, 'sock', 'sk_backlog.rmem_alloc') - deficit) >>> 0;
  }
  return { ...base, kind: 'socket', state: rawState, inode, uid, txQueue, rxQueue };
}

/** UNIX_HASH_SIZE of 5.19+ (bound and unbound halves), and of older kernels' global table. */
const UNIX_HASH_SIZE = 512;
const UNIX_HASH_SIZE_OLD = 257;
const SO_ACCEPTCON = 1 << 16;
const SS_UNCONNECTED = 1;
const SS_CONNECTING = 2;
const SS_CONNECTED = 3;
const SS_DISCONNECTING = 4;
const TCP_ESTABLISHED = 1;

/** Every UNIX socket of every namespace, as /proc/net/unix lists them. */
export function unixSockets(k: Kernel): UnixSocket[] {
  const r = structReader(k);
  const out: UnixSocket[] = [];
  const seen = new Set<bigint>();
  const nodeOff = r.off('sock_common', 'skc_node');
  const tables: { base: bigint; count: number }[] = [];
  if (r.has('netns_unix', 'table')) {
    for (const net of forEachNet(k)) {
      const buckets = r.ptr(r.at(net, 'net', 'unx'), 'netns_unix', 'table.buckets');
      if (buckets !== 0n) tables.push({ base: buckets, count: UNIX_HASH_SIZE });
    }
  } else {
    tables.push({ base: k.symbol('unix_socket_table'), count: UNIX_HASH_SIZE_OLD });
  }
  for (const t of tables) {
    forEachBucket(k, 'unix hash', t.base, t.count, 8, 0, (hi, lo) => {
      hlistNullsForEach(k.space, k.warnings, 'unix chain', hi, lo, nodeOff, (h, l) => {
        const sk = vaFromParts(h, l);
        if (seen.has(sk)) return;
        seen.add(sk);
        try {
          out.push(readUnix(k, r, sk));
        } catch (e) {
          k.warnings.warn('unix', `socket 0x${sk.toString(16)}: ${(e as Error).message}`);
        }
      }, CHAIN_LIMIT);
    });
  }
  return out;
}

function readUnix(k: Kernel, r: StructReader, sk: bigint): UnixSocket {
  const state = r.u8(sk, 'sock_common', 'skc_state');
  const hasSocket = r.ptr(sk, 'sock', 'sk_socket') !== 0n;
  const socketState = hasSocket ? (state === TCP_ESTABLISHED ? SS_CONNECTED : SS_UNCONNECTED) : state === TCP_ESTABLISHED ? SS_CONNECTING : SS_DISCONNECTING;
  const addr = r.ptr(sk, 'unix_sock', 'addr');
  let path = '';
  if (addr !== 0n) {
    // unix_address.len counts sun_family too; a path name's trailing NUL is not shown.
    const len = Math.min(Math.max(r.i32(addr, 'unix_address', 'len') - 2, 0), 108);
    const name = k.space.readBytes(r.at(addr, 'unix_address', 'name') + 2n, len);
    if (len > 0 && name[0] !== 0) {
      path = decodeSunPath(name.subarray(0, len - 1));
    } else {
      path = `@${decodeSunPath(name.subarray(1))}`;
    }
  }
  const net = r.ptr(sk, 'sock_common', 'skc_net.net');
  return {
    sock: sk,
    type: r.u16(sk, 'sock', 'sk_type'),
    state,
    socketState,
    flags: state === TCP_LISTEN ? SO_ACCEPTCON : 0,
    refCount: r.u32(sk, 'sock_common', 'skc_refcnt'),
    inode: sockInode(k, sk),
    path,
    peer: r.ptr(sk, 'unix_sock', 'peer'),
    netns: net === 0n ? 0 : netInum(k, net),
  };
}

/** sun_path bytes as /proc/net/unix prints them: NULs shown as '@'. */
function decodeSunPath(bytes: Uint8Array): string {
  const copy = Uint8Array.from(bytes, (b) => (b === 0 ? 0x40 : b));
  return new TextDecoder('utf-8').decode(copy);
}

/** An address in its usual text form: dotted quad, or RFC 5952 IPv6 (IPv4-mapped as ::ffff:a.b.c.d). */
export function formatAddress(addr: Uint8Array): string {
  if (addr.length === 4) return `${addr[0]}.${addr[1]}.${addr[2]}.${addr[3]}`;
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push((addr[i]! << 8) | addr[i + 1]!);
  if (words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff) {
    return `::ffff:${addr[12]}.${addr[13]}.${addr[14]}.${addr[15]}`;
  }
  // The longest run of two or more zero words becomes "::" (the first, on a tie).
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (ws: number[]) => ws.map((w) => w.toString(16)).join(':');
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLen))}`;
}

/** Name of a TCP state number. */
export function tcpStateName(state: number): string {
  return TCP_STATES[state] ?? `state ${state}`;
}
