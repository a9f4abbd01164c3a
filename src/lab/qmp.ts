import { connect } from 'node:net';
import { TargetError } from '../util/errors.ts';

/**
 * One QMP command over a fresh connection: greeting, capabilities negotiation, the command,
 * its answer, close. The lab uses it for its own few needs (status, quit, registers) on a
 * monitor socket of its own, so it never competes with a vmlens session holding the main one.
 */
export async function qmpExecute(
  socketPath: string,
  execute: string,
  args?: Readonly<Record<string, unknown>>,
  timeoutMs = 10_000,
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = connect(socketPath);
    let buffered = '';
    let stage: 'greeting' | 'capabilities' | 'command' = 'greeting';
    let settled = false;
    const finish = (err: Error | undefined, value?: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(() => finish(new TargetError(`QMP ${execute} on ${socketPath}: no answer within ${timeoutMs} ms`)), timeoutMs);
    sock.setEncoding('utf8');
    sock.on('error', (e: NodeJS.ErrnoException) => finish(new TargetError(`QMP socket ${socketPath}: ${e.code ?? e.message}`)));
    sock.on('close', () => finish(new TargetError(`QMP socket ${socketPath} closed before answering ${execute}`)));
    sock.on('data', (chunk: string) => {
      buffered += chunk;
      if (buffered.length > 16 * 1024 * 1024) return finish(new TargetError(`QMP ${execute}: answer too large`));
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        if (!line) continue;
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line) as Record<string, unknown>;
        } catch {
          return finish(new TargetError(`QMP socket ${socketPath}: not QMP (${line.slice(0, 60)})`));
        }
        if ('event' in msg) continue;
        if (stage === 'greeting') {
          if (!('QMP' in msg)) return finish(new TargetError(`QMP socket ${socketPath}: no QMP greeting`));
          stage = 'capabilities';
          sock.write('{"execute":"qmp_capabilities"}\n');
        } else if ('error' in msg) {
          const e = msg.error as { desc?: string };
          return finish(new TargetError(`QMP ${stage === 'command' ? execute : 'qmp_capabilities'}: ${e.desc ?? 'error'}`));
        } else if (stage === 'capabilities') {
          stage = 'command';
          sock.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
        } else {
          return finish(undefined, msg.return);
        }
      }
    });
  });
}

/** An HMP command (`info registers`, `info mtree -f`…) through QMP; returns its text output. */
export async function hmpCommand(socketPath: string, commandLine: string, timeoutMs?: number): Promise<string> {
  const out = await qmpExecute(socketPath, 'human-monitor-command', { 'command-line': commandLine }, timeoutMs);
  return typeof out === 'string' ? out : '';
}
