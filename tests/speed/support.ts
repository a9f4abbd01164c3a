/**
 * Helpers for the speed tests: running the vmlens command line against a lab guest, and
 * attaching in-process while other test files may hold the guest's QMP monitor for a while
 * (QEMU serves one QMP client at a time; the next waits its turn).
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { attachQemu, type LiveSourceKind, type QemuMachine } from '../../src/machine/qemu.ts';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const VMLENS = `${ROOT}bin/vmlens`;

/** How long to wait for the QMP monitor when another test file holds it. */
export const MONITOR_WAIT_MS = 240_000;

export function attachWaiting(qmpSocket: string, source: LiveSourceKind = 'file'): Promise<QemuMachine> {
  return attachQemu(qmpSocket, { source, timeoutMs: MONITOR_WAIT_MS });
}

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run `vmlens ARGS` to completion. */
export function runCli(args: readonly string[], timeoutMs = 120_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(VMLENS, [...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Whether a failed command failed only because another client held the QMP monitor. */
export function monitorBusy(r: CliResult): boolean {
  return r.code !== 0 && /another client holds the monitor|no QMP greeting/.test(r.stderr);
}

/** `runCli`, retried while the monitor is busy (up to MONITOR_WAIT_MS). */
export async function runCliWhenFree(args: readonly string[], timeoutMs = 120_000): Promise<CliResult> {
  const deadline = Date.now() + MONITOR_WAIT_MS;
  for (;;) {
    const r = await runCli(args, timeoutMs);
    if (!monitorBusy(r) || Date.now() > deadline) return r;
    await new Promise((res) => setTimeout(res, 1000));
  }
}
