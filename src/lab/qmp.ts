import { QmpClient } from '../machine/qmp.ts';

/**
 * One QMP command over a fresh connection, closed at once: the lab's few needs (status, quit,
 * registers in tests) on a monitor socket of its own, so it never competes with a vmlens
 * session holding the main one. The protocol itself is the machine layer's client.
 */
export async function qmpExecute(
  socketPath: string,
  execute: string,
  args?: Readonly<Record<string, unknown>>,
  timeoutMs = 10_000,
): Promise<unknown> {
  const client = await QmpClient.connect(socketPath, { timeoutMs, commandTimeoutMs: timeoutMs });
  try {
    return await client.execute(execute, args);
  } finally {
    await client.close();
  }
}

/** An HMP command (`info registers`, `info mtree -f`…) through QMP; returns its text output. */
export async function hmpCommand(socketPath: string, commandLine: string, timeoutMs?: number): Promise<string> {
  const out = await qmpExecute(socketPath, 'human-monitor-command', { 'command-line': commandLine }, timeoutMs);
  return typeof out === 'string' ? out : '';
}
