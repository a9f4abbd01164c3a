import { closeSync, fstatSync, openSync, rmSync, statSync } from 'node:fs';
import koffi from 'koffi';
import { TargetError } from '../util/errors.ts';

/**
 * Advisory locks between vmlens processes (parallel test workers, two `lab up` at once).
 * flock(2) rather than lock files: the kernel drops the lock when its holder dies, so a
 * crashed process never leaves a stale lock behind.
 */

const LOCK_EX = 2;
const LOCK_NB = 4;
const POLL_MS = 50;

type FlockFn = (fd: number, operation: number) => number;
let flockFn: FlockFn | undefined;

function flock(): FlockFn {
  if (!flockFn) {
    const libc = koffi.load('libc.so.6');
    flockFn = libc.func('int flock(int fd, int operation)') as FlockFn;
  }
  return flockFn;
}

/**
 * Take an exclusive lock on `path` (created if missing); resolves to the function that
 * releases it. Polls without blocking the event loop; gives up with a TargetError after
 * `timeoutMs`, naming `what` is being waited for.
 */
export async function acquireLock(path: string, what: string, timeoutMs: number): Promise<() => void> {
  const deadline = Date.now() + timeoutMs;
  let fd = openSync(path, 'a', 0o644);
  for (;;) {
    if (flock()(fd, LOCK_EX | LOCK_NB) === 0) {
      // The holder before us may have removed the file (see removeLockFile): then we locked a
      // file nobody else will see, and must lock the one now at `path` instead.
      if (sameFile(fd, path)) break;
      closeSync(fd);
      fd = openSync(path, 'a', 0o644);
      continue;
    }
    if (Date.now() > deadline) {
      closeSync(fd);
      throw new TargetError(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what} (lock ${path})`);
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  let held = true;
  // Closing the descriptor releases the lock.
  return () => {
    if (held) closeSync(fd);
    held = false;
  };
}

function sameFile(fd: number, path: string): boolean {
  try {
    const a = fstatSync(fd);
    const b = statSync(path);
    return a.ino === b.ino && a.dev === b.dev;
  } catch {
    return false;
  }
}

/**
 * Remove a lock file that has no further use; only while holding its lock. Waiters notice
 * (acquireLock checks the file is still the one at the path) and lock a fresh file.
 */
export function removeLockFile(path: string): void {
  rmSync(path, { force: true });
}

/** Run `fn` holding the lock on `path`. */
export async function withLock<T>(path: string, what: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  const release = await acquireLock(path, what, timeoutMs);
  try {
    return await fn();
  } finally {
    release();
  }
}
