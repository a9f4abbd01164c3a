import { freeLoopbackPort } from '../util/net.ts';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { TargetError } from '../util/errors.ts';
import { qmpExecute } from './qmp.ts';
import { runTool } from './run.ts';
import { isAlive, type LabPaths } from './state.ts';
import type { Accel, LabProcess, Paging } from './types.ts';
import { THREADS, THREAD_NAME_PREFIX } from './threads-elf.ts';

/**
 * Running a lab guest under QEMU: the command line, starting it detached (it outlives the
 * command that started it), watching the serial console until the guest's /init reports
 * ready, and stopping it.
 */

export interface QemuConfig {
  readonly paths: LabPaths;
  readonly vmlinuz: string;
  readonly initramfs: string;
  readonly cmdline: string;
  readonly memoryMiB: number;
  readonly cpus: number;
  readonly paging: Paging;
  readonly accel: Accel;
  readonly gdbPort: number;
  readonly guestName: string;
}

export const QEMU_BINARY = 'qemu-system-x86_64';
/** Name of the virtio port carrying command output; the guest's /init looks for it. */
export const DATA_PORT_NAME = 'vmlens.data';

export function qemuArgs(c: QemuConfig): string[] {
  const p = c.paths;
  return [
    '-name', `vmlens-lab-${c.guestName}`,
    '-machine', 'pc,memory-backend=ram',
    '-accel', c.accel,
    // `max` exposes LA57 under TCG; the kernel then runs with 5-level paging.
    '-cpu', c.paging === 5 ? 'max' : 'max,la57=off',
    '-smp', String(c.cpus),
    '-m', `${c.memoryMiB}M`,
    // Guest RAM in a file the host can map; QEMU splits it around the PCI hole itself.
    '-object', `memory-backend-file,id=ram,size=${c.memoryMiB}M,mem-path=${p.ramFile},share=on`,
    '-kernel', c.vmlinuz,
    '-initrd', c.initramfs,
    '-append', c.cmdline,
    '-nodefaults',
    '-display', 'none',
    '-no-reboot',
    '-chardev', `socket,id=con,path=${p.consoleSocket},server=on,wait=off`,
    '-serial', 'chardev:con',
    // The host's command shell: a virtio console (hvc0) to type into, and a raw virtio port
    // for what commands print (bulk transfers; the UART moves a byte per emulated write).
    '-device', 'virtio-serial-pci,id=vser',
    '-chardev', `socket,id=shell,path=${p.shellSocket},server=on,wait=off`,
    '-device', 'virtconsole,chardev=shell,bus=vser.0',
    '-chardev', `socket,id=data,path=${p.dataSocket},server=on,wait=off`,
    '-device', `virtserialport,chardev=data,bus=vser.0,name=${DATA_PORT_NAME}`,
    '-qmp', `unix:${p.qmpSocket},server=on,wait=off`,
    '-qmp', `unix:${p.labQmpSocket},server=on,wait=off`,
    '-gdb', `tcp:127.0.0.1:${c.gdbPort}`,
    '-device', 'vmcoreinfo',
    '-daemonize',
    '-pidfile', p.pidFile,
  ];
}

/**
 * Start QEMU daemonized: the call returns once QEMU has set up its devices and sockets (or
 * failed to, with its error). Returns QEMU's pid. A gdb port taken in the meantime is retried.
 */
export async function startQemu(config: Omit<QemuConfig, 'gdbPort'>): Promise<{ pid: number; gdbPort: number }> {
  for (let attempt = 0; ; attempt++) {
    const gdbPort = await freeLoopbackPort();
    const r = await runTool(QEMU_BINARY, qemuArgs({ ...config, gdbPort }), { allowFailure: true, timeoutMs: 60_000 });
    if (r.code === 0) {
      const pid = Number(readFileSync(config.paths.pidFile, 'utf8').trim());
      if (!Number.isInteger(pid) || pid <= 0) throw new TargetError(`QEMU wrote no pid to ${config.paths.pidFile}`);
      return { pid, gdbPort };
    }
    const portTaken = /gdbstub|Address already in use/i.test(r.stderr);
    if (!portTaken || attempt >= 3) {
      const msg = r.stderr.trim().split('\n').filter(Boolean).slice(-3).join('; ');
      throw new TargetError(`QEMU did not start (exit ${r.code}): ${msg || 'no message'}`);
    }
  }
}

export interface BootReport {
  readonly modules: string[];
  readonly processes: LabProcess[];
  readonly errors: string[];
  readonly bootMs: number;
  /** The last console lines, ready to append to a message. */
  readonly consoleTail: string;
}

/** Console text kept for error messages. */
const TAIL_BYTES = 64 * 1024;
const TAIL_LINES = 25;

/**
 * Follow the guest's console from boot until /init prints `VMLENS-LAB-READY <nonce>`,
 * collecting what it reports on the way. Fails (with the end of the console in the message)
 * when QEMU exits, the console goes away, or `timeoutMs` passes.
 */
export function watchBoot(
  consoleSocket: string,
  qemuPid: number,
  nonce: string,
  timeoutMs: number,
  startedAt: number,
  onInitStarted: () => void = () => undefined,
): Promise<BootReport> {
  return new Promise((resolve, reject) => {
    let text = '';
    let socket: Socket | undefined;
    let settled = false;
    const report = { modules: [] as string[], processes: [] as LabProcess[], errors: [] as string[] };
    const marker = `VMLENS-LAB-READY ${nonce}`;
    const finish = (err?: string) => {
      if (settled) return;
      settled = true;
      clearInterval(poll);
      clearTimeout(timer);
      socket?.destroy();
      if (err) reject(new TargetError(`${err}${consoleTail(text)}`));
      else resolve({ ...report, bootMs: Date.now() - startedAt, consoleTail: consoleTail(text) });
    };
    const poll = setInterval(() => {
      if (!isAlive(qemuPid)) finish('QEMU exited during boot');
    }, 250);
    const timer = setTimeout(() => finish(`guest not ready after ${Math.round(timeoutMs / 1000)} s`), timeoutMs);
    let parsed = 0;
    let initStarted = false;
    const onText = (chunk: string) => {
      text += chunk;
      // Parse complete lines only; the marker line may arrive in pieces.
      const lastNl = text.lastIndexOf('\n');
      if (lastNl >= parsed) {
        for (const line of text.slice(parsed, lastNl).split('\n')) {
          const l = line.replace(/\r$/, '');
          if (l.startsWith('vmlens-lab: ')) {
            if (!initStarted) onInitStarted();
            initStarted = true;
            parseReport(l.slice(12), report);
          }
          if (l.trim() === marker) return finish();
        }
        parsed = lastNl + 1;
      }
      if (text.length > 2 * TAIL_BYTES) {
        const cut = text.length - TAIL_BYTES;
        text = text.slice(cut);
        parsed = Math.max(0, parsed - cut);
      }
    };
    const attach = (retries: number) => {
      const s = connect(consoleSocket);
      socket = s;
      s.setEncoding('utf8');
      s.on('data', onText);
      s.on('error', (e: NodeJS.ErrnoException) => {
        if (settled) return;
        if (retries > 0 && (e.code === 'ENOENT' || e.code === 'ECONNREFUSED' || e.code === 'EAGAIN')) {
          setTimeout(() => attach(retries - 1), 100);
        } else finish(`guest console ${consoleSocket}: ${e.code ?? e.message}`);
      });
      s.on('close', () => {
        if (!settled && s === socket && s.bytesRead > 0) finish('guest console closed during boot');
      });
    };
    attach(50);
  });
}

function parseReport(line: string, report: Pick<BootReport, 'modules' | 'processes' | 'errors'>): void {
  const words = line.trim().split(/\s+/);
  if (words[0] === 'module' && words[1]) report.modules.push(words[1]);
  else if (words[0] === 'process' && words.length >= 5) {
    const [, comm, pid, user, uid] = words as [string, string, string, string, string];
    const threads = comm === 'lab-threads' ? Array.from({ length: THREADS }, (_, i) => `${THREAD_NAME_PREFIX}${i + 1}`) : undefined;
    report.processes.push({ comm, pid: Number(pid), user, uid: Number(uid), ...(threads ? { threads } : {}) });
  } else if (words[0] === 'error') report.errors.push(words.slice(1).join(' '));
}

function consoleTail(text: string): string {
  const lines = text.replace(/\r/g, '').split('\n').filter((l) => l.trim().length > 0).slice(-TAIL_LINES);
  return lines.length ? `; console tail:\n  ${lines.join('\n  ')}` : '; the console printed nothing';
}

/**
 * Stop a guest's QEMU: `quit` over the lab's own monitor, then SIGTERM, then SIGKILL, each
 * given a moment. Resolves once the process is gone.
 */
export async function stopQemu(pid: number, labQmpSocket: string): Promise<void> {
  if (!isAlive(pid)) return;
  const quitting = await qmpExecute(labQmpSocket, 'quit', undefined, 3000).then(
    () => true,
    () => false,
  );
  if (quitting && (await exited(pid, 5000))) return;
  signal(pid, 'SIGTERM');
  if (await exited(pid, 5000)) return;
  signal(pid, 'SIGKILL');
  if (!(await exited(pid, 5000))) throw new TargetError(`QEMU (pid ${pid}) does not exit`);
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

async function exited(pid: number, withinMs: number): Promise<boolean> {
  const deadline = Date.now() + withinMs;
  while (isAlive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}
