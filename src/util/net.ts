import { createServer } from 'node:net';
import { TargetError } from './errors.ts';

/**
 * A TCP port on 127.0.0.1 that nothing listens on right now (for a gdbstub QEMU is asked to
 * open). Another process may take it before QEMU does: callers retry on a bind failure.
 */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new TargetError('no free TCP port on 127.0.0.1'))));
    });
  });
}
