/**
 * Test helper: a small QEMU (no firmware boot needed, 128 MiB, TCG) with a gdbstub and a QMP
 * socket, plus a minimal QMP client for ground truth (`xp`, `query-status`, `gdbserver`).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const GUEST_RAM = 128 << 20;
/** RAM as the pc machine lays it out below 1 MiB: 640 KiB low memory, then the VGA/ROM hole. */
export const GUEST_RANGES = [
  { start: 0, size: 0xa0000 },
  { start: 0x100000, size: GUEST_RAM - 0x100000 },
];

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

class Qmp {
  private buf = '';
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        if (!line.trim()) continue;
        const msg = JSON.parse(line) as { id?: number; return?: unknown; error?: { desc: string } };
        if (msg.id === undefined) continue; // greeting and events
        const w = this.waiting.get(msg.id);
        this.waiting.delete(msg.id);
        if (msg.error) w?.reject(new Error(`QMP: ${msg.error.desc}`));
        else w?.resolve(msg.return);
      }
    });
    const gone = (): void => {
      for (const w of this.waiting.values()) w.reject(new Error('QMP connection closed'));
      this.waiting.clear();
    };
    sock.on('close', gone);
    sock.on('error', gone);
  }

  command(execute: string, args?: object): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.sock.write(JSON.stringify({ execute, ...(args ? { arguments: args } : {}), id }) + '\n');
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

export interface QemuOptions {
  /** Start a gdbstub on a free port from the command line. Default true. */
  readonly gdb?: boolean;
  /** Start with vCPUs stopped (-S). Default true. */
  readonly paused?: boolean;
  readonly smp?: number;
}

export class TestQemu {
  private constructor(
    readonly proc: ChildProcess,
    readonly dir: string,
    readonly qmp: Qmp,
    readonly gdbPort: number | undefined,
  ) {}

  static async start(opts: QemuOptions = {}): Promise<TestQemu> {
    const dir = mkdtempSync(join(tmpdir(), 'vmlens-gdb-'));
    const qmpPath = join(dir, 'qmp.sock');
    const gdbPort = opts.gdb === false ? undefined : await freePort();
    const args = [
      '-accel', 'tcg', '-machine', 'pc', '-m', String(GUEST_RAM >> 20), '-smp', String(opts.smp ?? 1),
      '-display', 'none', '-nodefaults', '-qmp', `unix:${qmpPath},server=on,wait=off`,
    ];
    if (opts.paused !== false) args.push('-S');
    if (gdbPort !== undefined) args.push('-gdb', `tcp:127.0.0.1:${gdbPort}`);
    const proc = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`qemu exited: ${stderr}`);
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(qmpPath);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        const qmp = new Qmp(sock);
        await qmp.command('qmp_capabilities');
        return new TestQemu(proc, dir, qmp, gdbPort);
      } catch (e) {
        if (Date.now() > deadline) {
          proc.kill('SIGKILL');
          throw new Error(`qemu did not open its QMP socket: ${String(e)} ${stderr}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  async hmp(command: string): Promise<string> {
    return (await this.qmp.command('human-monitor-command', { 'command-line': command })) as string;
  }

  async status(): Promise<string> {
    return ((await this.qmp.command('query-status')) as { status: string }).status;
  }

  /** QEMU's own view of guest-physical memory: `xp /Ngx`, as 64-bit little-endian words. */
  async physicalWords(gpa: number, count: number): Promise<bigint[]> {
    const out = await this.hmp(`xp /${count}gx 0x${gpa.toString(16)}`);
    return [...out.matchAll(/0x([0-9a-f]{16})/g)].map((m) => BigInt('0x' + m[1]));
  }

  /** Start a gdbstub at run time, as vmlens does for a guest launched without -gdb. */
  async startGdbServer(): Promise<number> {
    const port = await freePort();
    const out = await this.hmp(`gdbserver tcp:127.0.0.1:${port}`);
    if (!/Waiting for gdb connection/i.test(out)) throw new Error(`gdbserver: ${out}`);
    return port;
  }

  /** SIGKILL and wait for the process to be gone. */
  async kill(): Promise<void> {
    this.qmp.close();
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      const exited = new Promise((r) => this.proc.once('exit', r));
      this.proc.kill('SIGKILL');
      await exited;
    }
  }

  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
