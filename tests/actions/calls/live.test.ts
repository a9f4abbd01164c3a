/**
 * Kernel calls, kill and rmmod against a real lab guest, checked with the guest's own view
 * through its console: results the guest's /proc agrees with, processes gone and their parents
 * told, modules gone and their exit functions run, refusals that change nothing — and a guest
 * that runs on afterwards with no oops in its log and no process seeing a wrong system call
 * result.
 *
 * One file on purpose: the guest's QMP monitor and gdbstub serve one client each, so the API
 * tests (one machine held open) and the CLI tests (subprocesses) must not run side by side.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAudit } from '../../../src/actions/audit.ts';
import { callKernelFunction, requireFunction } from '../../../src/actions/call/index.ts';
import { inProcess } from '../../../src/actions/call/safe-point.ts';
import { withKernelCalls } from '../../../src/actions/call/session.ts';
import { killProcesses } from '../../../src/actions/kill.ts';
import { removeModule } from '../../../src/actions/rmmod.ts';
import { VcpuControl } from '../../../src/actions/vcpu.ts';
import type { Kernel } from '../../../src/kernel/kernel.ts';
import { openKernel } from '../../../src/kernel/open.ts';
import { attachQemu, type QemuMachine } from '../../../src/machine/qemu.ts';
import { TargetError, UsageError } from '../../../src/util/errors.ts';
import { guestModules } from '../../support/ground-truth.ts';
import { callsGuest, eventually, startMarker, tempAuditLog, type CallsGuest } from './support.ts';

const VMLENS = fileURLToPath(new URL('../../../bin/vmlens', import.meta.url));
const TSX = fileURLToPath(new URL('../../../node_modules/.bin/tsx', import.meta.url));
const INTERRUPTED_WAIT = fileURLToPath(new URL('./fixtures/interrupted-wait.ts', import.meta.url));

/** A loaded module nothing uses, whose exit function removes /sys/firmware/qemu_fw_cfg. */
const SPARE_MODULE = 'qemu_fw_cfg';

let guest: CallsGuest;
let audit: ReturnType<typeof tempAuditLog>;
let savedAuditEnv: string | undefined;
/** Oopses in the guest's log before any test ran. */
let oopsesBefore: number;

const quiet = { notice: () => undefined };

async function oopses(g: CallsGuest): Promise<number> {
  return Number((await g.console.run('dmesg | grep -c -e "end trace" -e "BUG:" -e "segfault at"; true')).trim());
}

function auditEntries() {
  return readAudit(audit.path).entries;
}

beforeAll(async () => {
  guest = await callsGuest();
  audit = tempAuditLog();
  savedAuditEnv = process.env.VMLENS_AUDIT_LOG;
  process.env.VMLENS_AUDIT_LOG = audit.path;
  oopsesBefore = await oopses(guest);
  // A process that checks system call results all along: a task given back with a wrong
  // register would make it see a wrong value (or crash).
  await guest.console.run(
    'echo expected > /tmp/calls-check.in; rm -f /tmp/calls-check.bad /tmp/calls-check.stop /tmp/calls-check.done; ' +
      '(while [ ! -e /tmp/calls-check.stop ]; do v=$(cat /tmp/calls-check.in); [ "$v" = expected ] || echo "bad $v" >> /tmp/calls-check.bad; done; echo done > /tmp/calls-check.done) >/dev/null 2>&1 &',
  );
});

afterAll(async () => {
  await guest?.console.run('touch /tmp/calls-check.stop').catch(() => undefined);
  if (savedAuditEnv === undefined) delete process.env.VMLENS_AUDIT_LOG;
  else process.env.VMLENS_AUDIT_LOG = savedAuditEnv;
  audit?.cleanup();
});

describe('through the API, on a lab guest', () => {
  let machine: QemuMachine;
  let k: Kernel;

  beforeAll(async () => {
    machine = await attachQemu(guest.info.qmpSocket, { name: guest.info.name });
    k = await openKernel(machine);
  });
  afterAll(async () => {
    await machine?.close();
  });

  it('calls strlen and strncmp with string arguments, with the results C gives, and logs each call', async () => {
    const before = auditEntries().length;
    const r = await callKernelFunction(k, 'strlen', ['vmlens lab'], quiet);
    expect(r.returned).toMatchObject({ value: 10n, text: '10' });
    expect(r.prototype).toBe('size_t strlen(const char *s)');
    expect(r.task?.pid).toBeGreaterThan(1);
    expect((await callKernelFunction(k, 'strncmp', ['abc', 'abd', '2'], quiet)).returned?.value).toBe(0n);
    expect((await callKernelFunction(k, 'strncmp', ['abc', 'abd', '3'], quiet)).returned?.value).toBeLessThan(0n);
    const logged = auditEntries().slice(before);
    expect(logged).toHaveLength(3);
    expect(logged[0]).toMatchObject({ kind: 'call', command: 'call strlen vmlens lab', result: 'ok', target: { guest: guest.info.name } });
    expect(logged[0]!.details).toMatchObject({
      registersRestored: true,
      safePoint: { function: 'syscall_exit_to_user_mode' },
      calls: [{ function: 'strlen', return: '0xa' }],
    });
  });

  it('returns what the guest itself reports: get_max_files() is /proc/sys/fs/file-max', async () => {
    const r = await callKernelFunction(k, 'get_max_files', [], quiet);
    expect(r.returned?.value).toBe(BigInt((await guest.console.run('cat /proc/sys/fs/file-max')).trim()));
  });

  it('completes a call that sleeps: the task comes back when the function returns', async () => {
    const r = await callKernelFunction(k, 'msleep', ['1200'], quiet);
    expect(r.returned?.text).toBe('void');
    // msleep never returns early; the call came back only when it had slept.
    expect(r.ms).toBeGreaterThanOrEqual(1200);
  });

  it('gets a call back on whatever vCPU it returns on: one that moves its task to the other vCPU', async () => {
    const setaffinity = requireFunction(k, 'sched_setaffinity', ['integer', 'pointer']);
    const r = await withKernelCalls(k, { command: 'test: sched_setaffinity', ...quiet }, async (calls) => {
      const from = calls.point.thread - 1;
      const to = from ^ 1;
      // A cpumask with the other vCPU only (room for NR_CPUS bits; the kernel reads nr_cpu_ids).
      const mask = new Uint8Array(1024);
      mask[0] = 1 << to;
      const ret = await calls.call('sched_setaffinity', setaffinity.address, [{ kind: 'value', value: 0n }, { kind: 'bytes', bytes: mask }]);
      return { from, to, ret, returnedOn: calls.currentThread - 1, pid: calls.point.task.pid };
    });
    expect(r.ret).toBe(0n);
    expect(r.returnedOn).toBe(r.to);
    expect(r.returnedOn).not.toBe(r.from);
    expect(auditEntries().at(-1)!.details).toMatchObject({ registersRestored: true, calls: [{ function: 'sched_setaffinity', vcpu: r.to }] });
    // The task went on from where it was borrowed, on its new vCPU (or had exited by now).
    const affinity = (await guest.console.run(`taskset -p ${r.pid} 2>/dev/null || echo gone`)).trim();
    expect(affinity === 'gone' || affinity.endsWith(`: ${1 << r.to}`)).toBe(true);
  });

  it('refuses a wrong argument count or kind, an unknown function, an implausible pointer: nothing touched', async () => {
    const before = auditEntries().length;
    await expect(callKernelFunction(k, 'strlen', [], quiet)).rejects.toThrow(/strlen takes 1 argument, 0 given/);
    await expect(callKernelFunction(k, 'strlen', ['a', 'b'], quiet)).rejects.toThrow(UsageError);
    await expect(callKernelFunction(k, 'kill_pid', ['init_task', '9', '0'], quiet)).rejects.toThrow(/argument 1 \(struct pid \*pid\): 'init_task' is not an address/);
    await expect(callKernelFunction(k, 'kill_pid', ['1', '9', '0'], quiet)).rejects.toThrow(/0x1 is not a valid pointer/);
    await expect(callKernelFunction(k, 'msleep', ['-1'], quiet)).rejects.toThrow(/out of range for an unsigned 32-bit value/);
    await expect(callKernelFunction(k, 'vmlens_no_such_function', [], quiet)).rejects.toThrow(/no function 'vmlens_no_such_function'/);
    await expect(callKernelFunction(k, 'current_time', ['0'], quiet)).rejects.toThrow(/current_time returns struct timespec64 \(a struct by value\)/);
    expect(auditEntries().length).toBe(before);
    expect(await machine.isPaused()).toBe(false);
  });

  it('kills a process with SIGKILL: it is gone from /proc and its parent sees it killed', async () => {
    const pid = await startMarker(guest.console, '/tmp/calls-kill9');
    const [r] = await killProcesses(k, [pid], 9, quiet);
    expect(r).toMatchObject({ pid, comm: 'sleep', signal: 9, errno: 0 });
    const status = await eventually('the parent to see the exit', async () => (await guest.console.run('cat /tmp/calls-kill9.status 2>/dev/null')).trim() || undefined);
    expect(status).toBe('status 137');
    expect((await guest.console.run(`[ -e /proc/${pid} ] && echo alive || echo gone`)).trim()).toBe('gone');
    expect(auditEntries().at(-1)).toMatchObject({ kind: 'call', command: `kill -KILL ${pid}`, result: 'ok' });
    expect((auditEntries().at(-1)!.details as { calls: { function: string }[] }).calls.map((c) => c.function)).toEqual(['find_get_pid', 'kill_pid', 'put_pid']);
  });

  it('delivers a signal as a signal: a handler runs for SIGUSR1, SIGTERM ends the process', async () => {
    const pid = await startMarker(guest.console, '/tmp/calls-usr1', `sh -c 'trap "echo caught >> /tmp/calls-usr1.log" USR1; while :; do sleep 1; done'`);
    await guest.console.run('rm -f /tmp/calls-usr1.log');
    expect((await killProcesses(k, [pid], 10, quiet))[0]).toMatchObject({ errno: 0, comm: 'sh' });
    expect(await eventually('the handler to run', async () => (await guest.console.run('cat /tmp/calls-usr1.log 2>/dev/null')).trim() || undefined)).toBe('caught');
    expect((await guest.console.run(`[ -e /proc/${pid} ] && echo alive`)).trim()).toBe('alive');
    await killProcesses(k, [pid], 15, quiet);
    expect(await eventually('the parent to see the exit', async () => (await guest.console.run('cat /tmp/calls-usr1.status 2>/dev/null')).trim() || undefined)).toBe('status 143');
  });

  it('refuses a pid that does not exist, sending nothing to any pid given', async () => {
    const pid = await startMarker(guest.console, '/tmp/calls-nokill');
    const before = auditEntries().length;
    await expect(killProcesses(k, [pid, 4_000_000], 9, quiet)).rejects.toThrow(/no process with pid 4000000 in the guest; nothing was sent/);
    expect(auditEntries().length).toBe(before);
    expect((await guest.console.run(`[ -e /proc/${pid} ] && echo alive`)).trim()).toBe('alive');
    await killProcesses(k, [pid], 9, quiet);
  });

  it('unloads a module: gone from /proc/modules, its exit function run; it loads again after', async () => {
    expect((await guestModules(guest.console)).map((m) => m.name)).toContain(SPARE_MODULE);
    expect((await guest.console.run('ls /sys/firmware')).split('\n')).toContain(SPARE_MODULE);
    try {
      const r = await removeModule(k, SPARE_MODULE, quiet);
      expect(r).toMatchObject({ name: SPARE_MODULE, unloaded: true });
      expect((await guestModules(guest.console)).map((m) => m.name)).not.toContain(SPARE_MODULE);
      // The exit function unregisters the driver, whose sysfs directory goes with it.
      expect((await guest.console.run('ls /sys/firmware')).split('\n')).not.toContain(SPARE_MODULE);
      expect(auditEntries().at(-1)).toMatchObject({ command: `rmmod ${SPARE_MODULE}`, result: 'ok' });
      const calls = (auditEntries().at(-1)!.details as { calls: { function: string; return: string }[] }).calls;
      expect(calls.map((c) => c.function)).toEqual(['vm_mmap', '_copy_to_user', '__x64_sys_delete_module', 'vm_munmap']);
      expect(calls[2]!.return).toBe('0x0');
    } finally {
      await guest.console.run(`grep -q '^${SPARE_MODULE} ' /proc/modules || insmod /lib/modules/$(uname -r)/${SPARE_MODULE}.ko`);
    }
    expect((await guestModules(guest.console)).map((m) => m.name)).toContain(SPARE_MODULE);
  });

  it('refuses modules in use — by another module, or by references — and changes nothing', async () => {
    const before = await guestModules(guest.console);
    await expect(removeModule(k, 'fat', quiet)).rejects.toThrow(/module fat is in use by vfat; nothing was changed/);
    await expect(removeModule(k, 'nls_ascii', quiet)).rejects.toThrow(/module nls_ascii is in use \(1 reference\); nothing was changed/);
    expect(await guestModules(guest.console)).toEqual(before);
    expect(auditEntries().at(-1)).toMatchObject({ command: 'rmmod nls_ascii', result: 'failed' });
  });

  it('refuses a module that is not loaded without touching the guest', async () => {
    const before = auditEntries().length;
    await expect(removeModule(k, 'vmlens_not_a_module', quiet)).rejects.toThrow(/module vmlens_not_a_module is not loaded; nothing was changed/);
    await expect(removeModule(k, 'bad/name', quiet)).rejects.toThrow(UsageError);
    expect(auditEntries().length).toBe(before);
  });

  it('gives up when no task qualifies in time, leaving the guest running with no breakpoint', async () => {
    const refused = withKernelCalls(k, { command: 'test', taskFilter: () => 'refused by the test', safePointTimeoutMs: 1500, ...quiet }, async () => 0);
    await expect(refused).rejects.toThrow(/no task reached a safe point within 1.5 s; nothing was changed. Stops turned down: refused by the test/);
    expect(await machine.isPaused()).toBe(false);
    // A breakpoint left at the safe point would stop the guest at its next system call.
    expect((await guest.console.run('echo still running')).trim()).toBe('still running');
    expect(await machine.isPaused()).toBe(false);
  });

  it('puts a paused guest back as it was: paused, with no breakpoint left', async () => {
    await machine.pause();
    try {
      const control = await VcpuControl.open(machine);
      expect(control.wasRunning).toBe(false);
      const regs = await control.registers((await control.threads())[0]!);
      expect(regs.cr3).toBeGreaterThan(0n);
      await control.insertBreakpoint(k.symbol('syscall_exit_to_user_mode'));
      expect(await control.close()).toEqual([]);
      expect(await machine.isPaused()).toBe(true);
      await expect(withKernelCalls(k, { command: 'test', ...quiet }, async () => 0)).rejects.toThrow(/is paused: kernel calls run guest code, resume it first/);
      expect(await machine.isPaused()).toBe(true);
    } finally {
      await machine.resume();
    }
    expect((await guest.console.run('echo resumed')).trim()).toBe('resumed');
    expect(await machine.isPaused()).toBe(false);
  });

  it('leaves no trace in the guest: no oops, no process saw a wrong system call result', async () => {
    expect(await oopses(guest)).toBe(oopsesBefore);
    expect((await guest.console.run('cat /tmp/calls-check.bad 2>/dev/null; echo end')).trim()).toBe('end');
    expect((await guest.console.run('cat /tmp/calls-check.done 2>/dev/null; echo running')).trim()).toBe('running');
  });

  it('gives up at once on a call that kills its task, and the guest runs on', async () => {
    // strlen of an unmapped user address oopses the borrowed task — on purpose, in a process
    // started for it, and as the last API test.
    const victim = await startMarker(guest.console, '/tmp/calls-victim', `sh -c 'while :; do usleep 20000; done'`);
    const err = await callKernelFunction(k, 'strlen', ['0x1000'], { ...quiet, taskFilter: inProcess(victim) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TargetError);
    expect((err as Error).message).toMatch(new RegExp(`strlen did not return: task ${victim} \\(sh\\) died while running it`));
    expect(await eventually('the parent to see the victim die', async () => (await guest.console.run('cat /tmp/calls-victim.status 2>/dev/null')).trim() || undefined)).toBe('status 137');
    expect(auditEntries().at(-1)).toMatchObject({ command: 'call strlen 0x1000', result: 'failed' });
    expect(await oopses(guest)).toBeGreaterThan(oopsesBefore);
    expect((await guest.console.run('echo alive')).trim()).toBe('alive');
  });
});

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run a command, optionally sending it SIGINT once its stderr shows `interruptAfter`. */
function run(cmd: string, args: string[], interruptAfter?: RegExp): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMLENS_AUDIT_LOG: audit.path } });
    let stdout = '';
    let stderr = '';
    let sent = false;
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (interruptAfter && !sent && interruptAfter.test(stderr)) {
        sent = true;
        setTimeout(() => child.kill('SIGINT'), 300);
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('through the CLI', () => {
  const cli = (args: string[], interruptAfter?: RegExp) => run(VMLENS, ['--lab', guest.info.name, ...args], interruptAfter);

  it('vmlens call prints the result, or JSON with --json', async () => {
    const r = await cli(['call', 'strlen', 'hello']);
    expect(r, r.stderr).toMatchObject({ code: 0, stdout: 'strlen(hello) = 5\n' });
    expect(r.stderr).toMatch(/calling strlen in task [0-9]+ .* on vCPU [01]\n/);
    const j = await cli(['--json', 'call', 'strncmp', '"a\\tb"', 'str:a\tc', '3']);
    expect(j.code, j.stderr).toBe(0);
    const out = JSON.parse(j.stdout) as { function: string; prototype: string; return: number; args: string[] };
    expect(out).toMatchObject({ function: 'strncmp', prototype: 'int strncmp(const char *cs, const char *ct, size_t count)' });
    expect(out.return).toBeLessThan(0);
    expect(out.args).toHaveLength(3);
  });

  it('vmlens call refuses a bad call with one line and exit code 2', async () => {
    const r = await cli(['call', 'strlen']);
    expect(r, r.stderr).toMatchObject({ code: 2, stdout: '' });
    expect(r.stderr).toBe('vmlens: strlen takes 1 argument, 0 given: size_t strlen(const char *s)\n');
  });

  it('vmlens kill -KILL and kill -s TERM, as kill(1) takes them; an unknown pid is refused', async () => {
    const a = await startMarker(guest.console, '/tmp/calls-cli-a');
    const b = await startMarker(guest.console, '/tmp/calls-cli-b');
    expect(await cli(['kill', '-KILL', String(a)])).toMatchObject({ code: 0, stdout: `sent SIGKILL to ${a} (sleep)\n` });
    expect(await cli(['kill', '-s', 'TERM', String(b)])).toMatchObject({ code: 0, stdout: `sent SIGTERM to ${b} (sleep)\n` });
    expect(await eventually('both exits', async () => {
      const s = (await guest.console.run('cat /tmp/calls-cli-a.status /tmp/calls-cli-b.status 2>/dev/null')).trim();
      return s.split('\n').length === 2 ? s : undefined;
    })).toBe('status 137\nstatus 143');
    const bad = await cli(['kill', '-9', '4000000']);
    expect(bad, bad.stderr).toMatchObject({ code: 2, stdout: '' });
    expect(bad.stderr).toMatch(/no process with pid 4000000/);
  });

  it('vmlens rmmod explains a refusal, with nothing changed', async () => {
    const before = await guestModules(guest.console);
    const r = await cli(['rmmod', 'fat']);
    expect(r, r.stderr).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toBe('vmlens: module fat is in use by vfat; nothing was changed\n');
    expect(await guestModules(guest.console)).toEqual(before);
  });

  it('a Ctrl-C during a call lets the call finish and gives the task back', async () => {
    const r = await cli(['call', 'msleep', '2500'], /calling msleep/);
    expect(r.stderr).toMatch(/msleep is running in the guest and cannot be stopped; waiting for it to return/);
    expect(r, r.stderr).toMatchObject({ code: 0, stdout: 'msleep(2500) = void\n' });
    expect(auditEntries().at(-1)).toMatchObject({ command: 'call msleep 2500', result: 'ok', details: { registersRestored: true } });
  });

  it('a Ctrl-C while waiting for a safe point ends the session with nothing changed', async () => {
    const r = await run(TSX, [INTERRUPTED_WAIT, guest.info.qmpSocket, guest.info.name]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ error: 'interrupted by SIGINT while waiting for a safe point; nothing was changed', running: true });
    expect((await guest.console.run('echo still running')).trim()).toBe('still running');
  });

  it('leaves the guest answering on its console', async () => {
    expect((await guest.console.run('uname -n')).trim()).toBe(guest.info.hostname);
  });
});
