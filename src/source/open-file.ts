import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { TargetError, UsageError } from '../util/errors.ts';

const OPEN_ERRORS: Record<string, string> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EISDIR: 'is a directory',
};

function openFailure(path: string, e: unknown): Error {
  const code = (e as NodeJS.ErrnoException).code ?? '';
  const why = OPEN_ERRORS[code] ?? `cannot open (${code || String(e)})`;
  return code === 'ENOENT' || code === 'EISDIR' ? new UsageError(`${path}: ${why}`) : new TargetError(`${path}: ${why}`);
}

/** Open a regular file for reading; a clear one-line error otherwise. */
export function openReadOnly(path: string): number {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw openFailure(path, e);
  }
  if (!fstatSync(fd).isFile()) {
    closeSync(fd);
    throw new UsageError(`${path}: not a regular file`);
  }
  return fd;
}

/** Open read-write, or read-only when writing is refused and `fallback` allows it. */
export function openReadWrite(path: string, fallback: boolean): { fd: number; writable: boolean } {
  try {
    return { fd: openSync(path, 'r+'), writable: true };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (fallback && (code === 'EACCES' || code === 'EPERM' || code === 'EROFS')) return { fd: openReadOnly(path), writable: false };
    throw openFailure(path, e);
  }
}

/** Read exactly `len` bytes at `offset`, or fewer only at end of file. */
export function preadUpTo(fd: number, len: number, offset: number): Buffer {
  const buf = Buffer.alloc(len);
  let done = 0;
  while (done < len) {
    const n = readSync(fd, buf, done, len - done, offset + done);
    if (n === 0) break;
    done += n;
  }
  return done === len ? buf : buf.subarray(0, done);
}

/** Close, ignoring errors (on a failure path that is already throwing). */
export function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // nothing more to do
  }
}
