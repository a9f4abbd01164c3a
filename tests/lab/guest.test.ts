import { Command } from 'commander';
import { statSync } from 'node:fs';
import { connect } from 'node:net';
import { beforeAll, describe, expect, it } from 'vitest';
import { register } from '../../src/cli/commands/lab.ts';
import { findLab, hmpCommand, labList, labUp, qmpExecute } from '../../src/lab/index.ts';
import { LAB_CONFIGS, labGuest, type LabGuest } from '../support/lab.ts';

/** CR4 of vCPU 0 from QEMU's own `info registers`. */
async function cr4(qmpSocket: string): Promise<bigint> {
  const regs = await hmpCommand(qmpSocket, 'info registers');
  const m = /\bCR4=([0-9a-f]+)/i.exec(regs);
  if (!m) throw new Error(`no CR4 in: ${regs.slice(0, 200)}`);
  return BigInt(`0x${m[1]}`);
}
const LA57 = 1n << 12n;

describe('the default lab guest (5-level paging)', () => {
  let g: LabGuest;
  beforeAll(async () => {
    g = await labGuest('default');
  });

  it('runs the kernel release of its package', async () => {
    expect(await g.console.run('uname -r')).toBe(`${g.info.kernelRelease}\n`);
    expect(g.info.kernelPackage).toBe(`linux-image-${g.info.kernelRelease}`);
    expect(await g.console.run('hostname')).toBe(`${g.info.hostname}\n`);
  });

  it('runs the processes it reports, with their names, pids and users', async () => {
    const workers = g.info.processes.filter((p) => p.comm.startsWith('lab-worker-'));
    expect(workers).toHaveLength(LAB_CONFIGS.default.processes!);
    expect(new Set(workers.map((p) => p.user))).toEqual(new Set(['root', 'alice', 'bob']));
    // pid, comm and real uid of every reported process, as the guest's /proc has them.
    const pids = g.info.processes.map((p) => p.pid).join(' ');
    const out = await g.console.run(
      `for p in ${pids}; do echo "$p $(cat /proc/$p/comm) $(awk '/^Uid:/ {print $2}' /proc/$p/status)"; done`,
    );
    const expected = g.info.processes.map((p) => `${p.pid} ${p.comm} ${p.uid}`).join('\n');
    expect(out.trim()).toBe(expected);
  });

  it('has a multi-threaded process with named threads', async () => {
    const t = g.info.processes.find((p) => p.comm === 'lab-threads')!;
    const names = await g.console.run(`cat /proc/${t.pid}/task/*/comm`);
    expect(names.trim().split('\n').sort()).toEqual(['lab-threads', ...t.threads!].sort());
  });

  it('has loaded the modules it reports', async () => {
    // Other test files share this guest and may load modules of their own: a subset, then.
    const mods = await g.console.run('cut -d" " -f1 /proc/modules');
    expect(mods.trim().split('\n')).toEqual(expect.arrayContaining([...g.info.modules]));
    expect(g.info.modules).toEqual(expect.arrayContaining(['dummy', 'tun', 'loop', 'fat', 'vfat', 'qemu_fw_cfg']));
  });

  it('puts its modules to use', async () => {
    expect(await g.console.run('ls /sys/class/net')).toMatch(/\blab0\b[\s\S]*\blabtap0\b/);
    expect(await g.console.run('cat /mnt/fat/hello.txt')).toBe('written by the vmlens lab\n');
    expect(await g.console.run('grep -c " /mnt/fat vfat " /proc/mounts')).toBe('1\n');
    // -device vmcoreinfo is visible to the guest through qemu_fw_cfg.
    expect((await g.console.exec('test -d /sys/firmware/qemu_fw_cfg/by_name/etc/vmcoreinfo')).exitCode).toBe(0);
  });

  it('keeps some activity going (the ticker rewrites a file)', async () => {
    const a = await g.console.run('cat /tmp/lab-tick; usleep 1500000; cat /tmp/lab-tick');
    const [first, second] = a.trim().split('\n').map((l) => Number(l.split(' ')[1]));
    expect(second).toBeGreaterThan(first!);
  });

  it('has its RAM in a shared file of the configured size', () => {
    expect(statSync(g.info.ramFile).size).toBe(g.info.memoryMiB * 1024 * 1024);
  });

  it('answers on its QMP socket, runs with LA57 (CR4 bit 12) set', async () => {
    expect(await qmpExecute(g.info.qmpSocket, 'query-status')).toMatchObject({ status: 'running' });
    expect((await cr4(g.info.qmpSocket)) & LA57).toBe(LA57);
    expect(await g.console.run('grep -c la57 /proc/cpuinfo')).toBe(`${g.info.cpus}\n`);
  });

  it('serves a gdbstub on its port (and runs on after gdb detaches)', async () => {
    // QEMU stops the guest when gdb attaches; detaching (D) lets it run again.
    const reply = await new Promise<string>((resolve, reject) => {
      const s = connect(g.info.gdbPort, '127.0.0.1');
      let got = '';
      let asked = false;
      s.on('connect', () => s.write('$?#3f'));
      s.on('data', (d) => {
        got += d.toString('latin1');
        if (!asked && /\$[ST][0-9a-f]{2}[^#]*#[0-9a-f]{2}/.test(got)) {
          asked = true;
          s.write('+$D#44');
        } else if (asked && got.includes('$OK#9a')) {
          s.end('+');
          resolve(got);
        }
      });
      s.on('error', reject);
      setTimeout(() => reject(new Error(`gdbstub said only '${got}'`)), 10_000);
    });
    expect(reply).toMatch(/\$T[0-9a-f]{2}thread:/);
    expect(await qmpExecute(g.info.qmpSocket, 'query-status')).toMatchObject({ status: 'running' });
  });

  it('is found by name and listed as running', async () => {
    expect(await findLab(g.info.name)).toEqual(g.info);
    const listed = (await labList()).find((l) => l.name === g.info.name);
    expect(listed).toMatchObject({ running: true, pid: g.info.pid });
  });

  it('is returned as is by labUp with the same options, refused with conflicting ones', async () => {
    const again = await labUp({ ...LAB_CONFIGS.default, name: g.info.name });
    expect(again).toEqual(g.info);
    await expect(labUp({ name: g.info.name, memoryMiB: 2048 })).rejects.toThrow(/already running with memory MiB 1024 \(asked 2048\)/);
  });

  it('is shown by `vmlens lab list` (text and --json)', async () => {
    const listed = JSON.parse(await cli(['lab', 'list', '--json'])) as { name: string; state: string; pid: number }[];
    expect(listed.find((l) => l.name === g.info.name)).toMatchObject({ state: 'running', pid: g.info.pid });
    const row = (await cli(['lab', 'list'])).split('\n').find((l) => l.startsWith(`${g.info.name} `));
    expect(row?.split(/\s+/).slice(0, 3)).toEqual([g.info.name, 'running', g.info.kernelRelease]);
  });
});

/** Run the lab commands as the CLI does (its global --json included), capturing stdout. */
async function cli(args: string[]): Promise<string> {
  const program = new Command('vmlens').option('--json').exitOverride();
  register(program);
  let out = '';
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string | Uint8Array) => {
    out += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
    return true;
  }) as typeof process.stdout.write;
  try {
    await program.parseAsync(args, { from: 'user' });
  } finally {
    process.stdout.write = write;
  }
  return out;
}

describe('the 4-level lab guest', () => {
  let g: LabGuest;
  beforeAll(async () => {
    g = await labGuest('4level');
  });

  it('runs with LA57 (CR4 bit 12) clear', async () => {
    expect(g.info.paging).toBe(4);
    expect((await cr4(g.info.qmpSocket)) & LA57).toBe(0n);
    expect(await g.console.run('grep -c la57 /proc/cpuinfo; true')).toBe('0\n');
  });

  it('has the same lab inside', async () => {
    expect(await g.console.run('uname -r')).toBe(`${g.info.kernelRelease}\n`);
    expect(g.info.processes.filter((p) => p.comm.startsWith('lab-worker-'))).toHaveLength(LAB_CONFIGS['4level'].processes!);
  });
});
