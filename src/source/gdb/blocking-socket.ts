/**
 * A TCP connection with blocking, deadline-bounded send and receive, through libc (koffi).
 *
 * The PhysicalMemory interface is synchronous (the translation layer reads page tables in a
 * tight loop), and node:net offers no synchronous reads. A socket driven with poll(2) and
 * recv(2) directly gives synchronous requests at the cost of blocking the event loop for one
 * round trip (~100 µs against QEMU's gdbstub), which is what a synchronous source means.
 */
import net from 'node:net';
import { getSystemErrorName } from 'node:util';
import koffi from 'koffi';
import { TargetError } from '../../util/errors.ts';

// Linux x86-64 ABI constants.
const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const SOL_SOCKET = 1;
const SO_ERROR = 4;
const POLLIN = 0x1;
const POLLOUT = 0x4;
const POLLERR = 0x8;
const POLLHUP = 0x10;
const POLLNVAL = 0x20;
const MSG_NOSIGNAL = 0x4000;
const EINTR = 4;
const EAGAIN = 11;
const EINPROGRESS = 115;

interface Libc {
  socket: (domain: number, type: number, protocol: number) => number;
  connect: (fd: number, addr: Uint8Array, len: number) => number;
  poll: (fds: Uint8Array, n: number, timeoutMs: number) => number;
  recv: (fd: number, buf: Uint8Array, len: number, flags: number) => number;
  send: (fd: number, buf: Uint8Array, len: number, flags: number) => number;
  setsockopt: (fd: number, level: number, name: number, value: Int32Array, len: number) => number;
  getsockopt: (fd: number, level: number, name: number, value: Int32Array, len: Int32Array) => number;
  close: (fd: number) => number;
}

let libc: Libc | undefined;

function load(): Libc {
  if (libc) return libc;
  const lib = koffi.load('libc.so.6');
  libc = {
    socket: lib.func('int socket(int, int, int)'),
    connect: lib.func('int connect(int, const uint8_t *, uint32_t)'),
    poll: lib.func('int poll(uint8_t *, uint64_t, int)'),
    recv: lib.func('int64_t recv(int, uint8_t *, uint64_t, int)'),
    send: lib.func('int64_t send(int, const uint8_t *, uint64_t, int)'),
    setsockopt: lib.func('int setsockopt(int, int, int, const int32_t *, uint32_t)'),
    getsockopt: lib.func('int getsockopt(int, int, int, int32_t *, int32_t *)'),
    close: lib.func('int close(int)'),
  };
  return libc;
}

function errnoText(errno: number): string {
  try {
    return getSystemErrorName(-errno);
  } catch {
    return `errno ${errno}`;
  }
}

/** sockaddr_in / sockaddr_in6 for an IP literal. */
function sockaddr(ip: string, port: number): Uint8Array {
  const family = net.isIP(ip);
  if (family === 4) {
    const a = new Uint8Array(16);
    new DataView(a.buffer).setUint16(0, AF_INET, true);
    new DataView(a.buffer).setUint16(2, port, false);
    ip.split('.').forEach((part, i) => (a[4 + i] = Number(part)));
    return a;
  }
  const a = new Uint8Array(28);
  new DataView(a.buffer).setUint16(0, AF_INET6, true);
  new DataView(a.buffer).setUint16(2, port, false);
  a.set(ipv6Bytes(ip), 8);
  return a;
}

function ipv6Bytes(ip: string): Uint8Array {
  const out = new Uint8Array(16);
  let text = ip;
  const zone = text.indexOf('%');
  if (zone >= 0) text = text.slice(0, zone);
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const p = v4[1]!.split('.').map(Number);
    text = text.slice(0, -v4[1]!.length) + `${((p[0]! << 8) | p[1]!).toString(16)}:${((p[2]! << 8) | p[3]!).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...new Array<string>(8 - h.length - t.length).fill('0'), ...t];
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    out[2 * i] = v >> 8;
    out[2 * i + 1] = v & 0xff;
  });
  return out;
}

export class BlockingSocket {
  private readonly pfd = new Uint8Array(8);
  private readonly pfdView = new DataView(this.pfd.buffer);
  private fd: number;

  private constructor(
    fd: number,
    private readonly lib: Libc,
    readonly where: string,
  ) {
    this.fd = fd;
  }

  /**
   * Connect to an IP literal (or 'localhost') within `timeoutMs`. Errors are TargetErrors that
   * name the peer (`label`, default host:port) and say why (refused, timed out…).
   */
  static connect(host: string, port: number, timeoutMs: number, label = `${host}:${port}`): BlockingSocket {
    const ip = host === 'localhost' ? '127.0.0.1' : host;
    const where = label;
    if (!net.isIP(ip)) throw new TargetError(`cannot connect to ${where}: give an IP address (host names are not resolved)`);
    const lib = load();
    const family = net.isIP(ip) === 4 ? AF_INET : AF_INET6;
    const fd = lib.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new TargetError(`cannot create a socket: ${errnoText(koffi.errno())}`);
    const sock = new BlockingSocket(fd, lib, where);
    try {
      const addr = sockaddr(ip, port);
      if (lib.connect(fd, addr, addr.length) !== 0) {
        const e = koffi.errno();
        if (e !== EINPROGRESS) throw new TargetError(`cannot connect to ${where}: ${describe(e)}`);
        const deadline = performance.now() + timeoutMs;
        if (!sock.waitFor(POLLOUT, deadline)) throw new TargetError(`cannot connect to ${where}: timed out after ${timeoutMs} ms`);
        const err = new Int32Array(1);
        const len = new Int32Array([4]);
        lib.getsockopt(fd, SOL_SOCKET, SO_ERROR, err, len);
        if (err[0] !== 0) throw new TargetError(`cannot connect to ${where}: ${describe(err[0]!)}`);
      }
      lib.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, new Int32Array([1]), 4);
      return sock;
    } catch (e) {
      sock.close();
      throw e;
    }
  }

  get closed(): boolean {
    return this.fd < 0;
  }

  /** poll() one event until the deadline; true when ready (or in error, which the next call reports). */
  private waitFor(events: number, deadline: number): boolean {
    for (;;) {
      const left = Math.ceil(deadline - performance.now());
      if (left < 0) return false;
      this.pfdView.setInt32(0, this.fd, true);
      this.pfdView.setInt16(4, events, true);
      this.pfdView.setInt16(6, 0, true);
      const n = this.lib.poll(this.pfd, 1, left);
      if (n > 0) {
        const rev = this.pfdView.getInt16(6, true);
        if (rev & POLLNVAL) throw new TargetError(`connection to ${this.where} is closed`);
        return (rev & (events | POLLERR | POLLHUP)) !== 0;
      }
      if (n < 0 && koffi.errno() !== EINTR) throw new TargetError(`poll on ${this.where} failed: ${errnoText(koffi.errno())}`);
    }
  }

  private checkOpen(): void {
    if (this.fd < 0) throw new TargetError(`connection to ${this.where} is closed`);
  }

  /** Send all of `data`, or throw. */
  sendAll(data: Uint8Array, deadline: number): void {
    this.checkOpen();
    let off = 0;
    while (off < data.length) {
      const part = off === 0 ? data : data.subarray(off);
      const n = this.lib.send(this.fd, part, part.length, MSG_NOSIGNAL);
      if (n > 0) {
        off += n;
        continue;
      }
      const e = koffi.errno();
      if (n < 0 && (e === EAGAIN || e === EINTR)) {
        if (!this.waitFor(POLLOUT, deadline)) throw new TargetError(`sending to ${this.where} timed out`);
        continue;
      }
      throw new TargetError(`connection to ${this.where} failed: ${describe(e)}`);
    }
  }

  /**
   * Receive what is available into `buf` (at least one byte), waiting until `deadline`.
   * Returns the count, or -1 on timeout. A closed connection throws.
   */
  receive(buf: Uint8Array, deadline: number): number {
    this.checkOpen();
    for (;;) {
      // Wait first: callers receive right after sending a request, when nothing is there yet.
      if (!this.waitFor(POLLIN, deadline)) return -1;
      const n = this.lib.recv(this.fd, buf, buf.length, 0);
      if (n > 0) return n;
      if (n === 0) throw new TargetError(`${this.where} closed the connection`);
      const e = koffi.errno();
      if (e !== EAGAIN && e !== EINTR) throw new TargetError(`connection to ${this.where} failed: ${describe(e)}`);
    }
  }

  close(): void {
    if (this.fd >= 0) {
      this.lib.close(this.fd);
      this.fd = -1;
    }
  }
}

function describe(errno: number): string {
  const name = errnoText(errno);
  switch (name) {
    case 'ECONNREFUSED':
      return 'connection refused (is a gdbstub listening there?)';
    case 'ECONNRESET':
      return 'connection reset by peer';
    case 'EPIPE':
      return 'connection closed by peer';
    case 'ETIMEDOUT':
      return 'timed out';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'host unreachable';
    default:
      return name;
  }
}
