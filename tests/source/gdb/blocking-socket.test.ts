/**
 * The libc-driven blocking socket against an in-process server. The kernel completes the TCP
 * handshake and buffers data while the event loop is blocked, so the test interleaves blocking
 * calls with awaits that let the server run.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockingSocket } from '../../../src/source/gdb/blocking-socket.ts';
import { TargetError } from '../../../src/util/errors.ts';
import { freePort } from './qemu.ts';

const servers: net.Server[] = [];
const tick = () => new Promise((r) => setTimeout(r, 20));

async function server(host: string, onConnection: (s: net.Socket) => void): Promise<number> {
  const srv = net.createServer(onConnection);
  servers.push(srv);
  await new Promise<void>((resolve) => srv.listen(0, host, resolve));
  return (srv.address() as net.AddressInfo).port;
}

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

describe('BlockingSocket', () => {
  for (const host of ['127.0.0.1', '::1', '::ffff:127.0.0.1', 'localhost']) {
    it(`sends and receives over ${host}`, async () => {
      const received: Buffer[] = [];
      const port = await server(host === '::1' ? '::1' : host === 'localhost' ? '127.0.0.1' : '::', (s) => {
        s.on('data', (d) => received.push(d));
        s.write('hello');
      });
      const sock = BlockingSocket.connect(host, port, 2000);
      sock.sendAll(Buffer.from('ping'), performance.now() + 2000);
      await tick();
      const buf = new Uint8Array(64);
      const n = sock.receive(buf, performance.now() + 2000);
      expect(Buffer.from(buf.subarray(0, n)).toString()).toBe('hello');
      expect(Buffer.concat(received).toString()).toBe('ping');
      sock.close();
      expect(sock.closed).toBe(true);
    });
  }

  it('times out a receive with nothing to read, then reports the peer closing', async () => {
    let peer: net.Socket | undefined;
    const port = await server('127.0.0.1', (s) => (peer = s));
    const sock = BlockingSocket.connect('127.0.0.1', port, 2000, 'test peer');
    expect(sock.receive(new Uint8Array(8), performance.now() + 50)).toBe(-1);
    await tick();
    peer!.end();
    await tick();
    expect(() => sock.receive(new Uint8Array(8), performance.now() + 2000)).toThrow(/test peer closed the connection/);
    sock.close();
    expect(() => sock.sendAll(Buffer.from('x'), performance.now() + 10)).toThrow(/is closed/);
  });

  it('reports refusal and rejects host names it would have to resolve', async () => {
    const port = await freePort();
    expect(() => BlockingSocket.connect('127.0.0.1', port, 2000)).toThrow(new RegExp(`cannot connect to 127\\.0\\.0\\.1:${port}: connection refused`));
    expect(() => BlockingSocket.connect('example.invalid', port, 2000)).toThrow(TargetError);
  });
});
