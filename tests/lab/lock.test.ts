import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { acquireLock, removeLockFile, withLock } from '../../src/lab/lock.ts';
import { TargetError } from '../../src/util/errors.ts';

// flock(2) treats each open of the file as its own holder, so one process can play several.
describe('lock files', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlens-lock-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('lets one holder in at a time, in turn', async () => {
    const path = join(dir, 'a.lock');
    const order: string[] = [];
    const job = (name: string) =>
      withLock(path, name, 5000, async () => {
        order.push(`${name} in`);
        await new Promise((r) => setTimeout(r, 30));
        order.push(`${name} out`);
      });
    await Promise.all([job('x'), job('y'), job('z')]);
    for (let i = 0; i < order.length; i += 2) expect(order[i + 1]).toBe(order[i]!.replace(' in', ' out'));
  });

  it('gives up after its timeout, naming what it waited for', async () => {
    const path = join(dir, 'b.lock');
    const release = await acquireLock(path, 'first', 1000);
    await expect(acquireLock(path, 'the test guest', 200)).rejects.toThrow(TargetError);
    await expect(acquireLock(path, 'the test guest', 200)).rejects.toThrow(/waiting for the test guest/);
    release();
    (await acquireLock(path, 'after', 200))();
  });

  it('stays exclusive when a holder removes the file while others wait', async () => {
    const path = join(dir, 'c.lock');
    const a = await acquireLock(path, 'a', 1000);
    const bPromise = acquireLock(path, 'b', 5000);
    await new Promise((r) => setTimeout(r, 120));
    removeLockFile(path);
    a();
    const b = await bPromise;
    expect(existsSync(path)).toBe(true);
    // A newcomer opens the file b holds now, so it must wait.
    await expect(acquireLock(path, 'c', 300)).rejects.toThrow(TargetError);
    b();
    (await acquireLock(path, 'c', 300))();
  });
});
