import { readFileSync } from 'node:fs';
import { TargetError } from '../util/errors.ts';
import { GuestConsole } from './console.ts';
import type { CpioEntry } from './cpio.ts';
import { NR_GETDENTS64, parseRootkitLoadLine, ROOTKIT_MODULE_NAME, rootkitInsmodArgs } from './rootkit.ts';
import type { LabRootkit } from './types.ts';

/**
 * A lab guest with vmlens_rootkit loaded (`vmlens lab up --rootkit`): the module and a helper
 * ride in the initramfs; once the guest is ready, a dedicated process is started, the module
 * is loaded to hide it, itself, and to replace one system call table entry, and the result
 * is checked from inside the guest before it is recorded as ground truth.
 */

/** Where the module lies in the guest. */
export const ROOTKIT_GUEST_PATH = `/root/${ROOTKIT_MODULE_NAME}.ko`;
/** The process the rootkit hides; its name says what it is for. */
export const HIDDEN_PROCESS_NAME = 'lab-hidden';
/** The system call whose table entry is replaced. */
export const HOOKED_SYSCALL = NR_GETDENTS64;

/**
 * A process that sleeps forever without children or threads: it waits to read a FIFO nobody
 * writes (a shell builtin, so no child), so it keeps one task and stays interruptible — the
 * rootkit runs its hiding work in the task itself, through task_work.
 */
const HIDDEN_PROCESS_SCRIPT = `#!/bin/sh
# A process for vmlens_rootkit to hide (vmlens lab up --rootkit).
fifo=/run/${HIDDEN_PROCESS_NAME}.hold
[ -p "$fifo" ] || mkfifo -m 600 "$fifo"
read -r _ <"$fifo"
`;

/** The files a rootkit guest adds to the lab's initramfs. */
export function rootkitInitramfsEntries(ko: string): CpioEntry[] {
  return [
    { type: 'file', path: ROOTKIT_GUEST_PATH.slice(1), data: readFileSync(ko), mode: 0o600 },
    { type: 'file', path: `bin/${HIDDEN_PROCESS_NAME}`, data: HIDDEN_PROCESS_SCRIPT, mode: 0o755 },
  ];
}

/** A number from a command's output, or a TargetError that shows what the guest said. */
function numberFrom(output: string, what: string): number {
  const n = Number(output.trim());
  if (!Number.isInteger(n)) throw new TargetError(`vmlens_rootkit: ${what}: the guest said '${output.trim().slice(0, 200)}'`);
  return n;
}

/**
 * Start the process to hide, load the module, and confirm from inside the guest that the
 * process and the module are gone from its own views while both still exist. Load once per
 * boot: a hidden module cannot be unloaded.
 */
export async function loadRootkit(guest: { readonly shellSocket: string; readonly dataSocket: string }): Promise<LabRootkit> {
  const con = await GuestConsole.forLab(guest);
  try {
    if ((await con.exec(`grep -q '^${ROOTKIT_MODULE_NAME} ' /proc/modules || test -d /sys/module/${ROOTKIT_MODULE_NAME}`)).exitCode === 0) {
      throw new TargetError(`${ROOTKIT_MODULE_NAME} is already loaded in this guest`);
    }
    const pid = numberFrom(await con.run(`/bin/${HIDDEN_PROCESS_NAME} </dev/null >/dev/null 2>&1 & echo $!`), 'starting the process to hide');
    // The process must have reached its read (one task, sleeping) before the module looks at it.
    const waited = await con.exec(`i=0; while [ $i -lt 100 ] && ! [ -p /run/${HIDDEN_PROCESS_NAME}.hold ]; do usleep 50000; i=$((i+1)); done; usleep 200000; test -d /proc/${pid}`);
    if (waited.exitCode !== 0) throw new TargetError(`vmlens_rootkit: ${HIDDEN_PROCESS_NAME} (pid ${pid}) did not start`);

    const args = rootkitInsmodArgs({ hidePid: pid, hookSyscall: HOOKED_SYSCALL }).join(' ');
    const insmod = await con.exec(`insmod ${ROOTKIT_GUEST_PATH} ${args}`, 60_000);
    if (insmod.exitCode !== 0) {
      const log = await con.run(`dmesg | grep '${ROOTKIT_MODULE_NAME}' | tail -n 5`);
      throw new TargetError(`insmod ${ROOTKIT_MODULE_NAME} ${args} failed (${insmod.exitCode}): ${insmod.output.trim()} ${log.trim()}`);
    }
    const record = parseRootkitLoadLine(await con.run(`dmesg | grep '${ROOTKIT_MODULE_NAME}: loaded:'`));
    if (!record || !record.hiddenProcess || !record.hook) throw new TargetError(`${ROOTKIT_MODULE_NAME} loaded but its log line is missing or incomplete`);
    if (record.hiddenProcess.pid !== pid || record.hook.syscall !== HOOKED_SYSCALL || !record.hiddenModule) {
      throw new TargetError(`${ROOTKIT_MODULE_NAME} reports pid ${record.hiddenProcess.pid}, syscall ${record.hook.syscall}; asked for pid ${pid}, syscall ${HOOKED_SYSCALL}`);
    }

    // The guest's own view: neither the process nor the module shows; both still exist.
    const inPs = numberFrom(await con.run(`ps | awk -v p=${pid} '$1 == p' | wc -l`), 'ps');
    const inModules = numberFrom(await con.run(`grep -c '^${ROOTKIT_MODULE_NAME} ' /proc/modules; true`), '/proc/modules');
    const inSysfs = (await con.exec(`test -d /sys/module/${ROOTKIT_MODULE_NAME}`)).exitCode === 0;
    const alive = (await con.exec(`kill -0 ${pid}`)).exitCode === 0;
    if (inPs !== 0 || inModules !== 0 || !inSysfs || !alive) {
      throw new TargetError(
        `${ROOTKIT_MODULE_NAME} did not hide as expected: ps lines for pid ${pid}: ${inPs}, /proc/modules lines: ${inModules}, /sys/module entry: ${inSysfs}, process alive: ${alive}`,
      );
    }
    const hex = (v: bigint): string => `0x${v.toString(16)}`;
    return {
      module: record.module,
      structModule: hex(record.structModule),
      hiddenProcess: { pid, comm: record.hiddenProcess.comm, task: hex(record.hiddenProcess.task) },
      hook: {
        syscall: record.hook.syscall,
        sysCallTable: hex(record.hook.sysCallTable),
        original: hex(record.hook.original),
        originalSymbol: record.hook.originalSymbol,
        handler: hex(record.hook.handler),
      },
      dispatch: record.dispatch,
    };
  } finally {
    con.close();
  }
}
