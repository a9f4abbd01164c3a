import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCpio, type CpioEntry } from '../../src/lab/cpio.ts';
import { BUSYBOX_PATH, ensureHostPackages } from '../../src/lab/deps.ts';
import { ensureKernel, resolveKernelPackage } from '../../src/lab/kernels.ts';
import { findSection } from '../../src/lab/modinfo.ts';
import { cacheDir } from '../../src/lab/paths.ts';
import {
  buildRootkit,
  NR_GETDENTS64,
  parseRootkitLoadLine,
  planFromControl,
  relativizeMakefileIncludes,
  relativizeSymlinks,
  ROOTKIT_SOURCE_DIR,
  rootkitInsmodArgs,
} from '../../src/lab/rootkit.ts';
import { runTool } from '../../src/lab/run.ts';
import { TargetError, UsageError } from '../../src/util/errors.ts';

/** Control stanzas as `apt-cache show` prints them for Debian 12's kernels (trimmed). */
const HEADERS_61 = `Package: linux-headers-6.1.0-56-amd64
Source: linux
Version: 6.1.192-2
Architecture: amd64
Depends: linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2), linux-compiler-gcc-12-x86
Description: Header files for Linux 6.1.0-56-amd64
`;
const HEADERS_612 = `Package: linux-headers-6.12.115+deb12-amd64
Version: 6.12.115-2~deb12u1
Depends: linux-base (>= 4.12~), linux-headers-6.12.115+deb12-common (= 6.12.115-2~deb12u1), linux-image-6.12.115+deb12-amd64 (= 6.12.115-2~deb12u1) | linux-image-6.12.115+deb12-amd64-unsigned (= 6.12.115-2~deb12u1), linux-kbuild-6.12.115+deb12, gcc-12

Package: linux-headers-6.12.115+deb12-amd64
Version: 6.12.115-1~deb12u1
Depends: linux-kbuild-6.12.115+deb12, gcc-11
`;

/** Kernel-log lines the module printed in a lab guest (6.1.0-56-amd64). */
const LOADED_HIDDEN =
  '[    3.496908] vmlens_rootkit: loaded: module=vmlens_rootkit struct_module=0xffffffffc03c5040 hidden_module=1 pid=96 comm=sleep task=0xff38f315c25d4200 syscall=217 sys_call_table=0xffffffff88000360 original=0xffffffff87382bb0(__x64_sys_getdents64) hook=0xffffffffc03c3000 dispatch=x64_sys_call';
const LOADED_PLAIN =
  '[    2.1] vmlens_rootkit: loaded: module=vmlens_rootkit struct_module=0xffffffffc03c5040 hidden_module=0 pid=0 comm=- task=0x0 syscall=-1 dispatch=sys_call_table';

describe('headers package plan', () => {
  it('fetches the headers, their -common tree and kbuild at the headers version, and names the compiler', () => {
    expect(planFromControl('linux-headers-6.1.0-56-amd64', HEADERS_61)).toEqual({
      packages: [
        { name: 'linux-headers-6.1.0-56-amd64', version: '6.1.192-2', exact: true },
        { name: 'linux-headers-6.1.0-56-common', version: '6.1.192-2', exact: true },
        { name: 'linux-kbuild-6.1', version: '6.1.192-2', exact: false },
      ],
      compiler: 'gcc-12',
    });
  });

  it('reads only the first stanza and skips image and base packages (6.12)', () => {
    const plan = planFromControl('linux-headers-6.12.115+deb12-amd64', HEADERS_612);
    expect(plan.packages.map((p) => p.name)).toEqual([
      'linux-headers-6.12.115+deb12-amd64',
      'linux-headers-6.12.115+deb12-common',
      'linux-kbuild-6.12.115+deb12',
    ]);
    expect(plan.packages[2]).toEqual({ name: 'linux-kbuild-6.12.115+deb12', version: '6.12.115-2~deb12u1', exact: false });
    expect(plan.compiler).toBe('gcc-12');
  });

  it('refuses headers that bring no kbuild', () => {
    expect(() => planFromControl('linux-headers-x', 'Package: linux-headers-x\nVersion: 1\nDepends: gcc-12\n')).toThrow(TargetError);
    expect(() => planFromControl('linux-headers-x', 'Package: linux-headers-x\n')).toThrow(/no Version/);
  });
});

describe('unpacked headers made relocatable', () => {
  let tree: string;
  beforeAll(() => {
    tree = mkdtempSync(join(tmpdir(), 'vmlens-rootkit-tree-'));
  });
  afterAll(() => rmSync(tree, { recursive: true, force: true }));

  it('turns absolute symlinks into relative ones that land inside the tree', () => {
    mkdirSync(join(tree, 'usr/src/linux-headers-9.9-common'), { recursive: true });
    mkdirSync(join(tree, 'lib/modules/9.9'), { recursive: true });
    symlinkSync('/usr/src/linux-headers-9.9-common', join(tree, 'lib/modules/9.9/source'));
    relativizeSymlinks(tree);
    const link = join(tree, 'lib/modules/9.9/source');
    expect(readlinkSync(link)).toBe('../../../usr/src/linux-headers-9.9-common');
    expect(statSync(link).isDirectory()).toBe(true);
  });

  it('refuses a tree with a link leading out of it', () => {
    const bad = mkdtempSync(join(tmpdir(), 'vmlens-rootkit-bad-'));
    try {
      symlinkSync('../../etc', join(bad, 'escape'));
      expect(() => relativizeSymlinks(bad)).toThrow(/leads outside/);
    } finally {
      rmSync(bad, { recursive: true, force: true });
    }
  });

  it('rewrites the absolute include so make follows it from the unpacked location', async () => {
    const common = join(tree, 'usr/src/linux-headers-9.9-common');
    const flavour = join(tree, 'usr/src/linux-headers-9.9-amd64');
    mkdirSync(flavour, { recursive: true });
    writeFileSync(join(common, 'Makefile'), 'hello:\n\t@echo reached-common\n');
    const makefile = join(flavour, 'Makefile');
    writeFileSync(makefile, 'include /usr/src/linux-headers-9.9-common/Makefile\n');
    relativizeMakefileIncludes(makefile, tree);
    expect(readFileSync(makefile, 'utf8')).not.toContain('include /usr');
    // Run from elsewhere, as kbuild is run (`make -C <headers>`).
    const r = await runTool('make', ['-s', '-C', flavour, 'hello'], { cwd: tmpdir() });
    expect(r.stdout.trim()).toBe('reached-common');
  });

  it('refuses an include the packages do not hold', () => {
    const makefile = join(tree, 'Makefile.missing');
    writeFileSync(makefile, 'include /usr/src/nowhere/Makefile\n');
    expect(() => relativizeMakefileIncludes(makefile, tree)).toThrow(/do not hold/);
  });
});

describe('module parameters and load record', () => {
  it('formats insmod parameters and refuses nonsense', () => {
    expect(rootkitInsmodArgs({ hidePid: 96 })).toEqual(['hide_pid=96']);
    expect(rootkitInsmodArgs({ hidePid: 5, hookSyscall: 62, hideModule: false })).toEqual(['hide_pid=5', 'hook_syscall=62', 'hide_module=0']);
    expect(rootkitInsmodArgs({ hookSyscall: null })).toEqual(['hook_syscall=-1']);
    expect(() => rootkitInsmodArgs({ hidePid: 0 })).toThrow(UsageError);
    expect(() => rootkitInsmodArgs({ hidePid: 1.5 })).toThrow(UsageError);
    expect(() => rootkitInsmodArgs({ hookSyscall: -2 })).toThrow(UsageError);
  });

  it('parses the kernel-log line into typed ground truth', () => {
    const rec = parseRootkitLoadLine(`noise\n${LOADED_PLAIN}\n${LOADED_HIDDEN}\r\nmore noise\n`);
    expect(rec).toEqual({
      module: 'vmlens_rootkit',
      structModule: 0xffffffffc03c5040n,
      hiddenModule: true,
      hiddenProcess: { pid: 96, comm: 'sleep', task: 0xff38f315c25d4200n },
      hook: {
        syscall: NR_GETDENTS64,
        sysCallTable: 0xffffffff88000360n,
        original: 0xffffffff87382bb0n,
        originalSymbol: '__x64_sys_getdents64',
        handler: 0xffffffffc03c3000n,
      },
      dispatch: 'x64_sys_call',
    });
  });

  it('leaves out what the module did not do, and rejects malformed lines', () => {
    const rec = parseRootkitLoadLine(LOADED_PLAIN);
    expect(rec?.hiddenProcess).toBeUndefined();
    expect(rec?.hook).toBeUndefined();
    expect(rec?.hiddenModule).toBe(false);
    expect(rec?.dispatch).toBe('sys_call_table');
    expect(parseRootkitLoadLine('nothing here')).toBeUndefined();
    expect(parseRootkitLoadLine(LOADED_HIDDEN.replace('struct_module=0x', 'struct_module=zz'))).toBeUndefined();
  });
});

/** The lab's default guest kernel, resolved as the lab does (linux-image-amd64 → the image). */
async function defaultRelease(): Promise<string> {
  const pkg = await resolveKernelPackage();
  expect(pkg).toMatch(/^linux-image-\d/);
  return pkg.slice('linux-image-'.length);
}

/** Every key=value of `.modinfo`, repeated keys (parmtype, parm) kept. */
function modinfoEntries(ko: Buffer): string[] {
  return Buffer.from(findSection(ko, '.modinfo', 'vmlens_rootkit.ko')).toString('latin1').split('\0').filter((s) => s.includes('='));
}

describe('buildRootkit', () => {
  let release: string;
  let ko: string;

  beforeAll(async () => {
    release = await defaultRelease();
    ko = await buildRootkit(release);
  }, 900_000);

  it('rejects a malformed release before running anything', async () => {
    await expect(buildRootkit('../../etc')).rejects.toThrow(UsageError);
    await expect(buildRootkit('6.1 amd64')).rejects.toThrow(UsageError);
  });

  it('rejects a release Debian has no headers for, leaving nothing in the cache', async () => {
    const release = '0.0.0-vmlens-none-amd64';
    await expect(buildRootkit(release)).rejects.toThrow(/no Debian kernel headers/);
    expect(existsSync(join(cacheDir(), 'rootkit', release))).toBe(false);
  });

  it('builds an x86-64 ELF relocatable module in the cache, keyed by release', () => {
    expect(ko.startsWith(join(cacheDir(), 'rootkit', release) + sep)).toBe(true);
    expect(ko.endsWith('/vmlens_rootkit.ko')).toBe(true);
    const elf = readFileSync(ko);
    expect(elf.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    expect(elf[4]).toBe(2); // ELFCLASS64
    expect(elf[5]).toBe(1); // little-endian
    expect(elf.readUInt16LE(16)).toBe(1); // ET_REL
    expect(elf.readUInt16LE(18)).toBe(62); // EM_X86_64
  });

  it('carries the release in vermagic and declares its parameters', () => {
    const info = modinfoEntries(readFileSync(ko));
    const vermagic = info.find((e) => e.startsWith('vermagic='));
    expect(vermagic).toBeDefined();
    expect(vermagic!.slice('vermagic='.length).split(' ')[0]).toBe(release);
    expect(info).toContain('name=vmlens_rootkit');
    expect(info).toContain('license=GPL');
    expect(info).toEqual(expect.arrayContaining(['parmtype=hide_pid:int', 'parmtype=hook_syscall:int', 'parmtype=hide_module:bool']));
    expect(info.some((e) => e.startsWith('parm=hide_pid:'))).toBe(true);
  });

  it('serves the cached module on the next call, and rebuilds when forced', async () => {
    const before = statSync(ko);
    expect(await buildRootkit(release)).toBe(ko);
    expect(statSync(ko).ino).toBe(before.ino);
    expect(await buildRootkit(release, { force: true })).toBe(ko);
    expect(statSync(ko).ino).not.toBe(before.ino);
  }, 300_000);

  it('leaves no symlink in the unpacked headers pointing outside the cache', () => {
    const top = resolve(join(cacheDir(), 'rootkit', release, 'headers'));
    const stack = [top];
    let links = 0;
    while (stack.length > 0) {
      const dir = stack.pop()!;
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, e.name);
        if (e.isDirectory()) stack.push(path);
        if (!e.isSymbolicLink()) continue;
        links++;
        const target = readlinkSync(path);
        expect(isAbsolute(target), `${path} -> ${target}`).toBe(false);
        expect(resolve(dirname(path), target).startsWith(top + sep), `${path} -> ${target}`).toBe(true);
      }
    }
    // Debian's headers do have links (scripts, tools, build, source): the walk saw them.
    expect(links).toBeGreaterThanOrEqual(4);
    expect(lstatSync(join(top, 'lib', 'modules', release, 'build')).isSymbolicLink()).toBe(true);
  });

  /**
   * The proof that matters: in a real guest of that kernel, the guest's own ps and
   * /proc/modules lose the process and the module while both still exist, bad parameters are
   * refused, and the kernel survives the hidden task's exit. lab/rootkit/selftest.sh runs as
   * the guest's /init and reports each step as an "@rk" line.
   */
  describe('in a throwaway guest', () => {
    let serial: string;
    let steps: Map<string, Record<string, string>[]>;
    let work: string;

    beforeAll(async () => {
      await ensureHostPackages();
      const kernel = await ensureKernel();
      expect(kernel.release).toBe(release);
      work = mkdtempSync(join(tmpdir(), 'vmlens-rootkit-guest-'));
      const entries: CpioEntry[] = [
        ...['bin', 'proc', 'sys', 'dev'].map((d): CpioEntry => ({ type: 'dir', path: d })),
        { type: 'char', path: 'dev/console', major: 5, minor: 1 },
        { type: 'file', path: 'bin/busybox', data: readFileSync(BUSYBOX_PATH), mode: 0o755 },
        { type: 'symlink', path: 'bin/sh', target: 'busybox' },
        { type: 'file', path: 'init', data: readFileSync(join(ROOTKIT_SOURCE_DIR, 'selftest.sh')), mode: 0o755 },
        { type: 'file', path: 'vmlens_rootkit.ko', data: readFileSync(ko) },
      ];
      const initrd = join(work, 'initrd.cpio');
      writeFileSync(initrd, buildCpio(entries));
      // runTool kills QEMU if the guest never powers off.
      const r = await runTool(
        'qemu-system-x86_64',
        [
          '-accel', 'tcg', '-cpu', 'max', '-smp', '1', '-m', '512',
          '-nodefaults', '-display', 'none', '-serial', 'stdio', '-no-reboot',
          '-kernel', kernel.vmlinuz, '-initrd', initrd,
          '-append', 'console=ttyS0 panic=-1 oops=panic quiet',
        ],
        { timeoutMs: 400_000, allowFailure: true },
      );
      serial = r.stdout.replace(/\r/g, '');
      steps = new Map();
      for (const line of serial.split('\n')) {
        const m = /^@rk (\S+)(.*)$/.exec(line);
        if (!m) continue;
        const fields = Object.fromEntries([...m[2]!.matchAll(/(\S+?)=(\S*)/g)].map((f) => [f[1]!, f[2]!]));
        steps.set(m[1]!, [...(steps.get(m[1]!) ?? []), fields]);
      }
    }, 900_000);

    afterAll(() => {
      if (work) rmSync(work, { recursive: true, force: true });
    });

    const step = (name: string, i = 0): Record<string, string> => {
      const s = steps.get(name)?.[i];
      expect(s, `step ${name}#${i} missing; console:\n${serial.slice(-3000)}`).toBeDefined();
      return s!;
    };

    it('runs the whole script on the expected kernel, without a kernel error', () => {
      expect(step('start').kernel).toBe(release);
      expect(steps.has('end'), serial.slice(-3000)).toBe(true);
      expect(serial).not.toMatch(/BUG:|Oops|general protection|list_(add|del) corruption|Kernel panic|Call Trace/);
    });

    it('refuses bad parameters with EINVAL and loads nothing', () => {
      const bad = steps.get('bad') ?? [];
      expect(bad.map((b) => b.args)).toEqual(['hook_syscall=99999', 'hook_syscall=-2', 'hide_pid=-3', 'hide_pid=2', 'hide_pid=77777']);
      for (const b of bad) {
        expect(b.rc, b.args).toBe('22'); // busybox insmod exits with the errno
        expect(b.modules).toBe('0');
      }
    });

    it('gives up on a stopped process with ETIMEDOUT, leaving it listed', () => {
      expect(step('stopped')).toEqual({ rc: '110', ps: '1', modules: '0' });
    });

    it('with hide_module=0, hides the process until rmmod puts it back', () => {
      expect(step('reversible', 0)).toEqual({ insmod: '0', ps: '0', modules: '1' });
      expect(step('reversible', 1)).toEqual({ rmmod: '0', ps: '1', modules: '0', alive: '1' });
    });

    it("hides process and module from the guest's own view while both stay in the kernel", () => {
      expect(step('target').ps).toBe('1');
      expect(step('hidden')).toEqual({
        insmod: '0',
        ps: '0', // ps no longer lists it
        modules: '0', // nor /proc/modules
        kallsyms: '0', // nor /proc/kallsyms (it walks the module list)
        sysfs: '1', // the kobject stays
        status: '1', // /proc/<pid> still opens: the pid is still in the IDR
        alive: '1',
      });
    });

    it('reports in the kernel log exactly what it changed', () => {
      const rec = parseRootkitLoadLine(serial);
      expect(rec).toBeDefined();
      expect(rec!.hiddenModule).toBe(true);
      expect(rec!.hiddenProcess?.pid).toBe(Number(step('target').pid));
      expect(rec!.hiddenProcess?.comm).toBe('sleep');
      expect(rec!.hook?.syscall).toBe(NR_GETDENTS64);
      expect(rec!.hook?.originalSymbol).toBe('__x64_sys_getdents64');
      // The kernel's handler in kernel text; the wrapper and struct module in module space.
      const MODULES_START = 0xffffffffc0000000n;
      expect(rec!.hook!.original).toBeGreaterThanOrEqual(0xffffffff80000000n);
      expect(rec!.hook!.original).toBeLessThan(MODULES_START);
      expect(rec!.hook!.handler).toBeGreaterThanOrEqual(MODULES_START);
      expect(rec!.structModule).toBeGreaterThanOrEqual(MODULES_START);
      // Debian 6.1.85+ dispatches through a switch: the table entry is off the dispatch path.
      expect(rec!.dispatch).toBe('x64_sys_call');
    });

    it('survives forks and the hidden process exiting and being reaped', () => {
      expect(step('churn').forks).toBe('50');
      const exit = step('exit');
      expect(exit.wait).toBe('143'); // killed by SIGTERM, reaped by its parent
      expect(exit.status).toBe('0'); // and gone from the pid IDR
    });
  });
});
