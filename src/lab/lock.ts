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
  const fd = openSync(path, 'a', 0o644);
  const deadline = Date.now() + timeoutMs;
  while (flock()(fd, LOCK_EX | LOCK_NB) !== 0) {
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

/** Run `fn` holding the lock on `path`. */
export async function withLock<T>(path: string, what: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  const release = await acquireLock(path, what, timeoutMs);
  try {
    return await fn();
  } finally {
    release();
  }
}
