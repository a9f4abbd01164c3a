import { closeSync, openSync } from 'node:fs';
import koffi from 'koffi';
import { TargetError } from '../util/errors.ts';

/**
 * Advisory locks between vmlens processes (parallel test workers, two `lab up` at once).
 * flock(2) rather than lock files: the kernel drops the lock when its holder dies, so a
 * crashed process never leaves a stale lock behind.
 */

const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;
const POLL_MS = 100;

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
 * Run `fn` holding an exclusive lock on `path` (created if missing). Polls without blocking the
 * event loop; gives up with a TargetError after `timeoutMs`, naming `what` is being waited for.
 */
export async function withLock<T>(path: string, what: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  const fd = openSync(path, 'a', 0o644);
  try {
    const deadline = Date.now() + timeoutMs;
    while (flock()(fd, LOCK_EX | LOCK_NB) !== 0) {
      if (Date.now() > deadline) throw new TargetError(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what} (lock ${path})`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    try {
      return await fn();
    } finally {
      flock()(fd, LOCK_UN);
    }
  } finally {
    closeSync(fd);
  }
}
