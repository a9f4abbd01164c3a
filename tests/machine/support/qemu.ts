import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient } from '../../../src/machine/qmp.ts';

/**
 * Real QEMUs for tests: TCG, no devices beyond the machine's own, stopped before the first
 * instruction (-S) unless asked otherwise. `blobs` are loaded into guest RAM by QEMU's generic
 * loader at reset, so tests know what is at a physical address without any source of ours.
 */
export interface QemuOptions {
  readonly memMiB: number;
  /** Back RAM with a shared file in /dev/shm (memory-backend-file) instead of anonymous memory. */
  readonly ramFile?: boolean;
  /** Back RAM with a shared memfd (memory-backend-memfd): a file with no name outside QEMU. */
  readonly memfd?: boolean;
  readonly smp?: number;
  readonly blobs?: readonly { readonly gpa: number; readonly bytes: Uint8Array }[];
  /** Start the vCPUs (default false: stay at the reset vector). */
  readonly run?: boolean;
  readonly extraArgs?: readonly string[];
}

export interface RunningQemu {
  readonly dir: string;
  readonly qmpPath: string;
  /** A second QMP socket for tests that attach twice (QEMU serves one client per monitor). */
  readonly qmpPath2: string;
  readonly ramPath: string | undefined;
  readonly child: ChildProcess;
  readonly pid: number;
  /** A second QMP client for ground truth (HMP xp), separate from the one under test. */
  readonly monitor: QmpClient;
  /** Guest bytes as QEMU itself reads them (HMP `xp`). */
  xp(gpa: number, len: number): Promise<Uint8Array>;
  stop(): Promise<void>;
}

export const QEMU_BINARY = 'qemu-system-x86_64';

/** QEMUs still running; killed if the test process exits without stopping them. */
const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

export function qemuAvailable(): boolean {
  return ['/usr/bin', '/usr/local/bin'].some((d) => existsSync(join(d, QEMU_BINARY)));
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function startQemu(o: QemuOptions): Promise<RunningQemu> {
  const dir = mkdtempSync(join(tmpdir(), 'vmlens-qemu-'));
  const qmpPath = join(dir, 'qmp.sock');
  const qmpPath2 = join(dir, 'qmp2.sock');
  const monPath = join(dir, 'mon.sock');
  const ramPath = o.ramFile ? `/dev/shm/vmlens-test-${process.pid}-${Math.random().toString(36).slice(2)}.ram` : undefined;
  const args = ['-accel', 'tcg', '-m', `${o.memMiB}M`, '-display', 'none', '-nodefaults', '-no-user-config'];
  for (const p of [qmpPath, qmpPath2, monPath]) args.push('-qmp', `unix:${p},server=on,wait=off`);
  if (o.smp) args.push('-smp', String(o.smp));
  if (ramPath) {
    args.push('-machine', 'pc,memory-backend=ram');
    args.push('-object', `memory-backend-file,id=ram,size=${o.memMiB}M,mem-path=${ramPath},share=on`);
  } else if (o.memfd) {
    args.push('-machine', 'pc,memory-backend=ram');
    args.push('-object', `memory-backend-memfd,id=ram,size=${o.memMiB}M,share=on`);
  } else args.push('-machine', 'pc');
  (o.blobs ?? []).forEach((b, i) => {
    const f = join(dir, `blob${i}.bin`);
    writeFileSync(f, b.bytes);
    args.push('-device', `loader,file=${f},addr=0x${b.gpa.toString(16)},force-raw=on`);
  });
  if (!o.run) args.push('-S');
  args.push(...(o.extraArgs ?? []));
  const child = spawn(QEMU_BINARY, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  running.add(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  child.on('exit', () => {
    exited = true;
    running.delete(child);
  });
  try {
    await waitFor(() => exited || (existsSync(qmpPath) && existsSync(monPath)), 15_000, 'QEMU sockets');
    if (exited) throw new Error(`QEMU exited: ${stderr.trim()}`);
  } catch (e) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    if (ramPath) rmSync(ramPath, { force: true });
    throw e;
  }
  const monitor = await QmpClient.connect(monPath);
  const stop = async (): Promise<void> => {
    await monitor.close().catch(() => undefined);
    if (!exited) {
      child.kill('SIGTERM');
      await waitFor(() => exited, 5_000, 'QEMU exit').catch(() => child.kill('SIGKILL'));
    }
    rmSync(dir, { recursive: true, force: true });
    if (ramPath) rmSync(ramPath, { force: true });
  };
  const xp = async (gpa: number, len: number): Promise<Uint8Array> => {
    const out = new Uint8Array(len);
    const text = await monitor.hmp(`xp /${len}xb 0x${gpa.toString(16)}`);
    let i = 0;
    for (const line of text.split('\n')) {
      const colon = line.indexOf(':');
      if (colon < 0) continue;
      for (const tok of line.slice(colon + 1).trim().split(/\s+/)) {
        if (tok.startsWith('0x') && i < len) out[i++] = parseInt(tok, 16);
      }
    }
    if (i !== len) throw new Error(`xp returned ${i} of ${len} bytes: ${text.slice(0, 200)}`);
    return out;
  };
  return { dir, qmpPath, qmpPath2, ramPath, child, pid: child.pid!, monitor, xp, stop };
}

/** Deterministic pseudo-random bytes (xorshift), so a failure is reproducible. */
export function patternBytes(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
