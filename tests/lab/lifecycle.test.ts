import { spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { inject, describe, expect, it } from 'vitest';
import { findLab, GuestConsole, hmpCommand, labDown, labList, labUp } from '../../src/lab/index.ts';
import { isAlive, isQemuOf, labPaths } from '../../src/lab/state.ts';
import { TargetError } from '../../src/util/errors.ts';
import { labPrefix } from '../support/lab.ts';

// A guest of its own, since this file stops it: 4 GiB, so that part of its RAM sits above
// the PCI hole, and only two workers.
describe('a lab guest from up to down', () => {
  it('boots with 4 GiB split around the PCI hole, and is gone after labDown', async () => {
    const name = `${labPrefix()}-life`;
    const info = await labUp({ name, memoryMiB: 4096, processes: 2, ownerPid: inject('vmlensLabOwner') });
    try {
      expect(statSync(info.ramFile).size).toBe(4096 * 1024 * 1024);
      const mtree = await hmpCommand(info.qmpSocket, 'info mtree -f');
      // The first 3 GiB of the file are guest-physical 0-3G; the last GiB sits at 4G.
      expect(mtree).toMatch(/^\s*0000000000100000-00000000bfffffff \(prio 0, ram\): ram @0000000000100000\r?$/m);
      expect(mtree).toMatch(/^\s*0000000100000000-000000013fffffff \(prio 0, ram\): ram @00000000c0000000\r?$/m);
      const guest = await GuestConsole.forLab(info);
      const memTotalKiB = Number(/MemTotal:\s+(\d+)/.exec(await guest.run('cat /proc/meminfo'))?.[1]);
      expect(memTotalKiB).toBeGreaterThan(3.5 * 1024 * 1024);
      expect(await guest.run('ls /proc | grep -c .; pidof lab-worker-0 lab-worker-1 | wc -w')).toMatch(/\n2\n$/);
      guest.close();
    } finally {
      await labDown(name);
    }
    expect(isAlive(info.pid)).toBe(false);
    expect(existsSync(info.ramFile)).toBe(false);
    expect(existsSync(info.runtimeDir)).toBe(false);
    expect((await labList()).some((l) => l.name === name)).toBe(false);
    await expect(findLab(name)).rejects.toThrow(TargetError);
    await expect(labDown(name)).rejects.toThrow(/no lab guest named/);
  });

  it('cleans up after a guest whose QEMU was killed', async () => {
    const name = `${labPrefix()}-killed`;
    const info = await labUp({ name, memoryMiB: 256, processes: 0, ownerPid: inject('vmlensLabOwner') });
    process.kill(info.pid, 'SIGKILL');
    for (let i = 0; i < 100 && isAlive(info.pid); i++) await new Promise((r) => setTimeout(r, 50));
    await expect(findLab(name)).rejects.toThrow(/is not running/);
    expect((await labList()).find((l) => l.name === name)).toMatchObject({ running: false, state: 'stopped' });
    await labDown(name);
    expect(existsSync(info.ramFile)).toBe(false);
    expect(existsSync(info.runtimeDir)).toBe(false);
  });

  it('stops a guest whose state was lost, found by the RAM file on its command line', async () => {
    const name = `${labPrefix()}-lost`;
    const ramFile = labPaths(name).ramFile;
    // Stands in for a QEMU whose lab.json is gone: only its command line names the guest.
    const stray = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', `mem-path=${ramFile},share=on`], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 100 && !isQemuOf(stray.pid!, ramFile); i++) await new Promise((r) => setTimeout(r, 20));
      expect((await labList()).some((l) => l.name === name)).toBe(false);
      await labDown(name);
      expect(isAlive(stray.pid!)).toBe(false);
      await expect(labDown(name)).rejects.toThrow(/no lab guest named/);
    } finally {
      stray.kill('SIGKILL');
    }
  });

  it('stops QEMU and says so, with the console tail, when the guest is not ready in time', async () => {
    const name = `${labPrefix()}-slow`;
    const err = await labUp({ name, memoryMiB: 256, processes: 0, bootTimeoutMs: 1500, ownerPid: inject('vmlensLabOwner') }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TargetError);
    expect((err as Error).message).toMatch(new RegExp(`^lab guest '${name}' did not boot: guest not ready after 2 s; (console tail:|the console printed nothing)`));
    expect((await labList()).some((l) => l.name === name)).toBe(false);
    expect(existsSync(labPaths(name).ramFile)).toBe(false);
  });

  it('refuses bad options with one clear line', async () => {
    await expect(labUp({ name: 'Bad Name' })).rejects.toThrow(/bad lab guest name/);
    await expect(labUp({ name: `${labPrefix()}-x`, memoryMiB: 100 })).rejects.toThrow(/memory \(MiB\) must be an integer from 128/);
    await expect(labUp({ name: `${labPrefix()}-x`, paging: 3 as 4 })).rejects.toThrow(/paging must be 4 or 5/);
    await expect(labUp({ name: `${labPrefix()}-x`, kernel: 'bash' })).rejects.toThrow(/not a kernel image package/);
  });
});
