/**
 * The guest the call tests act on. It is a guest of its own, booted once per test run: these
 * tests kill processes, unload and reload modules and oops a task on purpose, hold the guest's
 * gdbstub and its QMP monitor (one client each) for long stretches — all of which would disturb
 * the files that compare the shared lab guest with its own /proc in parallel. It has two vCPUs,
 * so that a call can be seen to return on another vCPU than it started on. The default lab
 * configuration otherwise.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inject } from 'vitest';
import { GuestConsole, labUp, type LabInfo } from '../../../src/lab/index.ts';
import { keepGuests, LAB_CONFIGS, labPrefix } from '../../support/lab.ts';

export interface CallsGuest {
  readonly info: LabInfo;
  readonly console: GuestConsole;
}

let guest: Promise<CallsGuest> | undefined;

function ownerPid(): number | undefined {
  if (keepGuests()) return undefined;
  try {
    return inject('vmlensLabOwner');
  } catch {
    return undefined;
  }
}

export function callsGuest(): Promise<CallsGuest> {
  guest ??= (async () => {
    const owner = ownerPid();
    const info = await labUp({ ...LAB_CONFIGS.default, cpus: 2, name: `${labPrefix()}-calls`, ...(owner !== undefined ? { ownerPid: owner } : {}) });
    return { info, console: await GuestConsole.forLab(info) };
  })();
  guest.catch(() => (guest = undefined));
  return guest;
}

/** A private audit log file, removed by the returned cleanup. */
export function tempAuditLog(): { path: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'vmlens-calls-audit-'));
  return { path: join(dir, 'audit.jsonl'), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
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
