import { UsageError } from '../util/errors.ts';

/**
 * A writer for the cpio "newc" format, the one the kernel unpacks as an initramfs
 * (Documentation/driver-api/early-userspace/buffer-format.rst). Written here rather than by the
 * cpio tool so that images are byte-for-byte reproducible (fixed mtimes and owners) and can
 * hold device nodes and files owned by other users without root on the build host.
 */
export type CpioEntry =
  | { readonly type: 'dir'; readonly path: string; readonly mode?: number; readonly uid?: number; readonly gid?: number }
  | { readonly type: 'file'; readonly path: string; readonly data: Uint8Array | string; readonly mode?: number; readonly uid?: number; readonly gid?: number }
  | { readonly type: 'symlink'; readonly path: string; readonly target: string }
  | { readonly type: 'char'; readonly path: string; readonly major: number; readonly minor: number; readonly mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const HEADER_SIZE = 110;

/** One archive from the entries, in order (a directory must come before what it holds). */
export function buildCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let offset = 0;
  const push = (b: Buffer) => {
    parts.push(b);
    offset += b.length;
  };
  const pad = () => {
    const n = (4 - (offset % 4)) % 4;
    if (n) push(Buffer.alloc(n));
  };
  let ino = 1;
  const seen = new Set<string>();
  for (const e of entries) {
    const path = e.path.replace(/^\/+/, '');
    if (!path || path.split('/').some((c) => c === '..' || c === '')) throw new UsageError(`cpio: bad path '${e.path}'`);
    if (seen.has(path)) throw new UsageError(`cpio: duplicate path '${path}'`);
    seen.add(path);
    let mode: number;
    let data: Buffer = Buffer.alloc(0);
    let rdev = [0, 0];
    let owner = [0, 0];
    switch (e.type) {
      case 'dir':
        mode = S_IFDIR | (e.mode ?? 0o755);
        owner = [e.uid ?? 0, e.gid ?? 0];
        break;
      case 'file':
        mode = S_IFREG | (e.mode ?? 0o644);
        data = typeof e.data === 'string' ? Buffer.from(e.data, 'utf8') : Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength);
        owner = [e.uid ?? 0, e.gid ?? 0];
        break;
      case 'symlink':
        mode = S_IFLNK | 0o777;
        data = Buffer.from(e.target, 'utf8');
        break;
      case 'char':
        mode = S_IFCHR | (e.mode ?? 0o600);
        rdev = [e.major, e.minor];
        break;
    }
    writeRecord(push, { ino: ino++, mode, uid: owner[0]!, gid: owner[1]!, nlink: e.type === 'dir' ? 2 : 1, size: data.length, rdev, name: path });
    pad();
    if (data.length) push(data);
    pad();
  }
  writeRecord(push, { ino: 0, mode: 0, uid: 0, gid: 0, nlink: 1, size: 0, rdev: [0, 0], name: 'TRAILER!!!' });
  pad();
  return Buffer.concat(parts, offset);
}

interface Record {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  size: number;
  rdev: number[];
  name: string;
}

function writeRecord(push: (b: Buffer) => void, r: Record): void {
  const name = Buffer.from(`${r.name}\0`, 'utf8');
  // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
  const fields = [r.ino, r.mode, r.uid, r.gid, r.nlink, 0, r.size, 0, 0, r.rdev[0]!, r.rdev[1]!, name.length, 0];
  const header = `070701${fields.map((f) => hex8(f)).join('')}`;
  if (header.length !== HEADER_SIZE) throw new UsageError(`cpio: field out of range in '${r.name}'`);
  push(Buffer.from(header, 'latin1'));
  push(name);
}

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new UsageError(`cpio: value ${n} does not fit a newc field`);
  return n.toString(16).padStart(8, '0');
}
