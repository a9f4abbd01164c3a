/**
 * `--consistent` pauses a running guest for one command and resumes it, and leaves a guest that
 * was already paused paused. Ground truth: QEMU's own run state (QMP query-status).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { QmpClient } from '../../src/machine/qmp.ts';
import { labGuest, type LabGuest } from '../support/lab.ts';
import { MONITOR_WAIT_MS, runCliWhenFree } from './support.ts';

/** One QMP command on a connection of its own, waiting for the monitor if another client has it. */
async function qmp<T>(socket: string, command: string): Promise<T> {
  const c = await QmpClient.connect(socket, { timeoutMs: MONITOR_WAIT_MS });
  try {
    return await c.execute<T>(command);
  } finally {
    await c.close();
  }
}

async function running(socket: string): Promise<boolean> {
  return (await qmp<{ running: boolean }>(socket, 'query-status')).running;
}

describe('--consistent', () => {
  let guest: LabGuest;
  beforeAll(async () => {
    guest = await labGuest('default');
  });

  it('pauses a running guest for the command, reports the pause, and leaves it running', async () => {
    const sock = guest.info.qmpSocket;
    if (!(await running(sock))) await qmp(sock, 'cont');
    const r = await runCliWhenFree(['--qmp', sock, '--consistent', 'ps']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/lab-worker-0/);
    expect(r.stderr).toMatch(/guest paused for [0-9.]+ ms/);
    expect(await running(sock)).toBe(true);
  });

  it('leaves a paused guest paused', async () => {
    const sock = guest.info.qmpSocket;
    await qmp(sock, 'stop');
    try {
      expect(await running(sock)).toBe(false);
      const r = await runCliWhenFree(['--qmp', sock, '--consistent', 'ps']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/lab-worker-0/);
      // Nothing was paused by the command, so no pause to report.
      expect(r.stderr).not.toMatch(/guest paused for/);
      expect(await running(sock)).toBe(false);
    } finally {
      await qmp(sock, 'cont');
    }
    expect(await running(sock)).toBe(true);
  });
});
