import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient, QmpError } from '../../src/machine/qmp.ts';
import { TargetError } from '../../src/util/errors.ts';
import { qemuAvailable, type RunningQemu, startQemu } from './support/qemu.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmlens-qmp-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function serve(name: string, onConnect: (s: import('node:net').Socket) => void): Promise<{ path: string; server: Server }> {
  const path = join(dir, name);
  const server = createServer(onConnect);
  return new Promise((resolve) => server.listen(path, () => resolve({ path, server })));
}

describe('QMP client against things that are not QMP', () => {
  it('a socket that speaks something else', async () => {
    const { path, server } = await serve('hello.sock', (s) => s.end('SSH-2.0-OpenSSH_9.2\r\n'));
    const e = await QmpClient.connect(path).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(TargetError);
    expect((e as Error).message).toMatch(/not a QMP socket/);
    server.close();
  });

  it('a socket that says nothing (or a monitor busy with another client)', async () => {
    const { path, server } = await serve('silent.sock', () => undefined);
    await expect(QmpClient.connect(path, { timeoutMs: 300 })).rejects.toThrow(/no QMP greeting within 300 ms/);
    server.close();
  });

  it('a missing socket and a plain file', async () => {
    await expect(QmpClient.connect(join(dir, 'none.sock'))).rejects.toThrow(/no such socket/);
    const plain = join(dir, 'plain');
    writeFileSync(plain, 'x');
    await expect(QmpClient.connect(plain)).rejects.toThrow(/refused|nothing is listening|not a socket/);
  });

  it('a peer that greets and then answers garbage fails pending commands', async () => {
    const { path, server } = await serve('garbage.sock', (s) => {
      s.write('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}\n');
      s.on('data', () => s.write('not json\n'));
    });
    await expect(QmpClient.connect(path)).rejects.toThrow(/not JSON/);
    server.close();
  });
});

describe.skipIf(!qemuAvailable())('QMP client against a real QEMU', () => {
  let q: RunningQemu;
  let c: QmpClient;
  beforeAll(async () => {
    q = await startQemu({ memMiB: 64 });
    c = await QmpClient.connect(q.qmpPath);
  });
  afterAll(async () => {
    await c?.close();
    await q?.stop();
  });

  it('greets with the version and runs commands', async () => {
    expect(c.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
    const status = await c.execute<{ running: boolean; status: string }>('query-status');
    expect(status).toMatchObject({ running: false, status: 'prelaunch' });
    expect(await c.hmp('info status')).toMatch(/paused|prelaunch/);
  });

  it('turns QEMU refusals into QmpError with the class', async () => {
    const e = await c.execute('no-such-command').catch((x: unknown) => x);
    expect(e).toBeInstanceOf(QmpError);
    expect((e as QmpError).errorClass).toBe('CommandNotFound');
    // Still usable afterwards, and replies stay matched to their commands.
    const [a, b] = await Promise.all([c.execute('query-status'), c.execute<{ qemu: unknown }>('query-version')]);
    expect(a).toHaveProperty('status');
    expect(b).toHaveProperty('qemu');
  });

  it('delivers events', async () => {
    const resumed = c.waitForEvent('RESUME', 5000);
    await c.execute('cont');
    await resumed;
    const stopped = c.waitForEvent('STOP', 5000);
    await c.execute('stop');
    await stopped;
  });

  it('fails pending and later commands clearly when QEMU dies', async () => {
    const other = await startQemu({ memMiB: 32 });
    const d = await QmpClient.connect(other.qmpPath);
    other.child.kill('SIGKILL');
    await new Promise((r) => other.child.once('exit', r));
    await expect(d.execute('query-status')).rejects.toThrow(/closed \(QEMU exited\?\)|QMP/);
    expect(d.closed).toBe(true);
    await d.close();
    // A killed QEMU leaves its socket file behind, with nobody listening.
    await expect(QmpClient.connect(other.qmpPath)).rejects.toThrow(/nothing is listening/);
    await other.stop();
  });
});
