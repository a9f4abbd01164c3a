/**
 * The guest the call tests act on. It is a guest of its own, booted once per test run: these
 * tests kill processes, unload and reload modules and oops a task on purpose, hold the guest's
 * gdbstub and its QMP monitor (one client each) for long stretches — all of which would disturb
 * the files that compare the shared lab guest with its own /proc in parallel. It has two vCPUs,
 * so that a call can be seen to return on another vCPU than it started on. The default lab
 * configuration otherwise.
 */
import { GuestConsole } from '../../../src/lab/index.ts';
import { privateGuest, tempAuditLog as sharedTempAuditLog, type LabGuest } from '../../support/lab.ts';

export type CallsGuest = LabGuest;

export function callsGuest(): Promise<CallsGuest> {
  return privateGuest('calls', { cpus: 2 });
}

/** A private audit log file, removed by the returned cleanup. */
export function tempAuditLog(): { path: string; cleanup: () => void } {
  return sharedTempAuditLog('calls');
}

/** Poll the guest until `check` returns a value (not undefined), or fail after `timeoutMs`. */
export async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Start a marker process in the guest: `sleep` under a subshell that waits for it and writes
 * the exit status it saw to `<base>.status` (the parent's view of the child's death). Returns
 * the child's pid.
 */
export async function startMarker(con: GuestConsole, base: string, child = 'sleep 1000'): Promise<number> {
  await con.run(`rm -f ${base}.pid ${base}.status; (${child} & c=$!; echo $c > ${base}.pid; wait $c; echo "status $?" > ${base}.status) >/dev/null 2>&1 &`);
  return eventually(`${base}.pid`, async () => {
    const t = (await con.run(`cat ${base}.pid 2>/dev/null`)).trim();
    return /^[0-9]+$/.test(t) ? Number(t) : undefined;
  });
}
