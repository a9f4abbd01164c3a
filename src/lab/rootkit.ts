import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { TargetError, UsageError } from '../util/errors.ts';
import { withLock } from './lock.ts';
import { cacheDir, checkoutPath, ensureDir } from './paths.ts';
import { terminalProgress, type Progress } from './progress.ts';
import { lastLine, runTool } from './run.ts';

/**
 * vmlens_rootkit (lab/rootkit/): a rootkit-like kernel module that lab guests load so that
 * detection can be proved against a real kernel. This file builds it for a Debian kernel
 * release against Debian's own header packages, downloaded and unpacked into the vmlens cache
 * (nothing is installed on the host but the compiler), and reads back what it reports.
 *
 * Cache layout, under `cacheDir()/rootkit/<release>/`:
 *   headers/                 the unpacked header packages (usr/src, usr/lib/linux-kbuild-*)
 *   <source hash>/vmlens_rootkit.ko
 *   last-build.log           output of the latest build, kept for failures
 */

export const ROOTKIT_MODULE_NAME = 'vmlens_rootkit';
/** The module's source directory in the vmlens tree. */
export const ROOTKIT_SOURCE_DIR = checkoutPath('lab/rootkit/');
/** What goes into a build (and into the cache key). */
const SOURCE_FILES = ['vmlens_rootkit.c', 'Makefile'] as const;

/** x86-64 system call numbers the module is typically pointed at. */
export const NR_GETDENTS64 = 217;
export const NR_KILL = 62;

/** Debian release names: 6.1.0-56-amd64, 6.12.57+deb12-cloud-amd64, … */
const RELEASE = /^[0-9]+\.[0-9]+[A-Za-z0-9.+~_-]{0,100}$/;
const PACKAGE_NAME = /^[a-z0-9][a-z0-9.+~-]{1,120}$/;
const HEADERS_MARKER = '.vmlens-headers-complete';
const LOCK_TIMEOUT_MS = 20 * 60_000;
const BUILD_TIMEOUT_MS = 10 * 60_000;
const MAX_HEADER_ENTRIES = 200_000;

export interface BuildRootkitOptions {
  /** Rebuild the module even if the cache has it (the headers are still reused). */
  readonly force?: boolean;
  /** Phase lines; default: on stderr when it is a terminal. */
  readonly progress?: Progress;
}

/**
 * Path of vmlens_rootkit.ko built for `kernelRelease` (what `uname -r` prints in the guest,
 * e.g. 6.1.0-56-amd64): from the cache when this source was built for that release before,
 * otherwise after fetching Debian's headers for it and running kbuild. Concurrent callers
 * wait for one build.
 */
export async function buildRootkit(kernelRelease: string, opts: BuildRootkitOptions = {}): Promise<string> {
  if (!RELEASE.test(kernelRelease)) {
    throw new UsageError(`not a kernel release: '${kernelRelease}' (e.g. 6.1.0-56-amd64)`);
  }
  const sources = readSources();
  const dir = join(cacheDir(), 'rootkit', kernelRelease);
  const ko = join(dir, sources.hash, `${ROOTKIT_MODULE_NAME}.ko`);
  if (!opts.force && existsSync(ko)) return ko;
  // Before anything is written: an unknown release leaves no trace in the cache.
  const plan = await headersPlan(kernelRelease);
  const progress = opts.progress ?? terminalProgress();
  ensureDir(dir);
  return withLock(join(dir, '.lock'), `the build of ${ROOTKIT_MODULE_NAME} for ${kernelRelease}`, LOCK_TIMEOUT_MS, async () => {
    if (!opts.force && existsSync(ko)) return ko;
    // libelf1: the prebuilt objtool in linux-kbuild-* links it.
    await ensureBuildPackages(['make', plan.compiler, 'libelf1']);
    const kbuildDir = await ensureHeaders(kernelRelease, dir, plan, progress);
    progress.phase(`building ${ROOTKIT_MODULE_NAME} for ${kernelRelease}`);
    await compileModule(kernelRelease, sources, kbuildDir, dir, ko);
    progress.done();
    return ko;
  });
}

interface Sources {
  readonly files: ReadonlyMap<string, Buffer>;
  /** First 16 hex digits of a SHA-256 over the names and contents. */
  readonly hash: string;
}

function readSources(): Sources {
  const files = new Map<string, Buffer>();
  const hash = createHash('sha256');
  for (const name of SOURCE_FILES) {
    let data: Buffer;
    try {
      data = readFileSync(join(ROOTKIT_SOURCE_DIR, name));
    } catch {
      throw new TargetError(`${ROOTKIT_MODULE_NAME} source missing: ${join(ROOTKIT_SOURCE_DIR, name)}`);
    }
    files.set(name, data);
    hash.update(`${name}\0${data.length}\0`).update(data);
  }
  return { files, hash: hash.digest('hex').slice(0, 16) };
}

// ---- Debian's header packages ------------------------------------------------------------

interface PackageRef {
  readonly name: string;
  /** Exact version to fetch first; the candidate version is the fallback when absent. */
  readonly version?: string;
  readonly exact: boolean;
}

export interface HeadersPlan {
  /** linux-headers-<release>, its -common package and the matching linux-kbuild-*. */
  readonly packages: readonly PackageRef[];
  /** The compiler package the kernel was built with (gcc-12 for Debian 12's kernels). */
  readonly compiler: string;
}

async function headersPlan(release: string): Promise<HeadersPlan> {
  const name = `linux-headers-${release}`;
  const ask = () => runTool('apt-cache', ['show', '--no-all-versions', name], { allowFailure: true });
  let r = await ask();
  if ((r.code !== 0 || !r.stdout.trim()) && process.getuid?.() === 0) {
    // A fresh host may never have fetched package lists.
    await runTool('apt-get', ['update', '-q'], { env: aptEnv() });
    r = await ask();
  }
  if (r.code !== 0 || !r.stdout.trim()) {
    throw new UsageError(`no Debian kernel headers for release ${release} (apt-cache knows no ${name})`);
  }
  return planFromControl(name, r.stdout);
}

/**
 * Which packages to fetch, from the `apt-cache show` stanza of linux-headers-<release>: the
 * package itself, every linux-headers-* it depends on (the -common tree it includes) and the
 * linux-kbuild-* package (its scripts and host tools), each at the headers' own version when
 * the dependency allows.
 */
export function planFromControl(name: string, control: string): HeadersPlan {
  const stanza = control.split(/\n\s*\n/)[0] ?? '';
  const field = (key: string): string | undefined => {
    const m = new RegExp(`^${key}:[ \\t]*(.*(?:\\n[ \\t]+.*)*)`, 'm').exec(stanza);
    return m?.[1]?.replace(/\n[ \t]+/g, ' ').trim();
  };
  const version = field('Version');
  if (!version) throw new TargetError(`apt-cache show ${name}: no Version field`);
  const packages: PackageRef[] = [{ name, version, exact: true }];
  let compiler = 'gcc';
  for (const clause of (field('Depends') ?? '').split(',')) {
    const first = clause.split('|')[0]?.trim() ?? '';
    const m = /^([a-z0-9][a-z0-9.+~-]*)(?::\S+)?\s*(?:\(\s*([<>=]+)\s*([^)\s]+)\s*\))?$/.exec(first);
    if (!m) continue;
    const dep = m[1]!;
    const op = m[2];
    const depVersion = m[3];
    if (dep.startsWith('linux-headers-') || dep.startsWith('linux-kbuild-')) {
      if (!PACKAGE_NAME.test(dep)) continue;
      // `(= v)` must be honoured; `(>= v)` is met best by the headers' own version.
      if (op === '=') packages.push({ name: dep, version: depVersion, exact: true });
      else packages.push({ name: dep, version, exact: false });
    }
    const gcc = /(?:^|-)gcc-(\d+)(?:-|$)/.exec(dep);
    if (gcc) compiler = `gcc-${gcc[1]}`;
  }
  if (!packages.some((p) => p.name.startsWith('linux-kbuild-'))) {
    throw new TargetError(`${name} depends on no linux-kbuild-* package; cannot build modules with it`);
  }
  return { packages, compiler };
}

/**
 * The unpacked kbuild directory (usr/src/linux-headers-<release>) in the cache, downloading
 * and unpacking the packages on first use. The packages are written for /usr: their absolute
 * symlinks and the absolute include in the top Makefile are made relative, so the tree works
 * where it lies and nothing refers outside the cache.
 */
async function ensureHeaders(release: string, dir: string, plan: HeadersPlan, progress: Progress): Promise<string> {
  const root = join(dir, 'headers');
  const kbuildDir = join(root, 'usr', 'src', `linux-headers-${release}`);
  if (existsSync(join(root, HEADERS_MARKER))) return kbuildDir;
  const work = mkdtempSync(join(dir, '.headers-'));
  try {
    progress.phase(`downloading kernel headers for ${release}`);
    const debs = join(work, 'debs');
    ensureDir(debs);
    for (const p of plan.packages) await downloadPackage(p, debs);
    progress.phase(`unpacking kernel headers for ${release}`);
    const tree = join(work, 'tree');
    for (const deb of readdirSync(debs).filter((f) => f.endsWith('.deb')).sort()) {
      await runTool('dpkg-deb', ['-x', join(debs, deb), tree]);
    }
    relativizeSymlinks(tree);
    relativizeMakefileIncludes(join(tree, 'usr', 'src', `linux-headers-${release}`, 'Makefile'), tree);
    writeFileSync(join(tree, HEADERS_MARKER), `${plan.packages.map((p) => p.name).join('\n')}\n`);
    rmSync(root, { recursive: true, force: true });
    renameSync(tree, root);
    progress.done();
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  if (!existsSync(join(kbuildDir, 'Makefile'))) {
    throw new TargetError(`linux-headers-${release} has no usr/src/linux-headers-${release}/Makefile`);
  }
  return kbuildDir;
}

async function downloadPackage(p: PackageRef, into: string): Promise<void> {
  // As root, apt drops to the _apt user, which cannot write the cache: download as root.
  const get = (spec: string) =>
    runTool('apt-get', ['download', '-q', '-o', 'APT::Sandbox::User=root', spec], { cwd: into, env: aptEnv(), allowFailure: true });
  let r = await get(p.version ? `${p.name}=${p.version}` : p.name);
  if (r.code !== 0 && p.version && !p.exact) r = await get(p.name);
  if (r.code !== 0) {
    throw new TargetError(`apt-get download ${p.name}${p.version ? `=${p.version}` : ''} failed: ${lastLine(r.stderr) || lastLine(r.stdout)}`);
  }
}

/** Every entry of `tree`, bounded: a package with absurdly many files is refused. */
function* walk(tree: string): Generator<{ path: string; isSymlink: boolean }> {
  const stack = [tree];
  let count = 0;
  while (stack.length > 0) {
    const dir = stack.pop()!;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (++count > MAX_HEADER_ENTRIES) throw new TargetError(`kernel headers in ${tree}: more than ${MAX_HEADER_ENTRIES} files`);
      const path = join(dir, e.name);
      if (e.isDirectory()) stack.push(path);
      yield { path, isSymlink: e.isSymbolicLink() };
    }
  }
}

/**
 * Point every absolute symlink (lib/modules/<release>/build → /usr/src/…) at the same place
 * inside `tree`, and refuse a tree whose links lead out of it.
 */
export function relativizeSymlinks(tree: string): void {
  const top = resolve(tree);
  for (const { path, isSymlink } of walk(top)) {
    if (!isSymlink) continue;
    let target = readlinkSync(path);
    if (isAbsolute(target)) {
      target = relative(dirname(path), join(top, target)) || '.';
      unlinkSync(path);
      symlinkSync(target, path);
    }
    const lands = resolve(dirname(path), target);
    if (lands !== top && !lands.startsWith(top + sep)) {
      throw new TargetError(`kernel headers: symlink ${relative(top, path)} leads outside the unpacked tree (${target})`);
    }
  }
}

/**
 * Debian's linux-headers-<release>/Makefile is one line, `include /usr/src/linux-headers-…-common/Makefile`.
 * Rewrite such absolute includes relative to the Makefile's own location (make resolves a
 * relative include against its working directory, so the path is anchored with MAKEFILE_LIST).
 */
export function relativizeMakefileIncludes(makefile: string, tree: string): void {
  let text: string;
  try {
    text = readFileSync(makefile, 'utf8');
  } catch {
    throw new TargetError(`kernel headers: no ${makefile}`);
  }
  const here = dirname(makefile);
  const fixed = text.replace(/^(-?include[ \t]+)(\/\S+)/gm, (_all, keyword: string, abs: string) => {
    const inTree = join(tree, abs);
    if (!existsSync(inTree)) throw new TargetError(`kernel headers: ${makefile} includes ${abs}, which the packages do not hold`);
    return `${keyword}$(dir $(realpath $(lastword $(MAKEFILE_LIST))))${relative(here, inTree)}`;
  });
  if (fixed !== text) writeFileSync(makefile, fixed);
}

// ---- Compiler and build ------------------------------------------------------------------------

async function ensureBuildPackages(packages: readonly string[]): Promise<void> {
  const r = await runTool('dpkg-query', ['-W', '-f', '${Package} ${db:Status-Status}\n', ...packages], { allowFailure: true });
  const installed = new Set(
    r.stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f[1] === 'installed')
      .map((f) => f[0]!.replace(/:.*$/, '')),
  );
  const missing = packages.filter((p) => !installed.has(p));
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) {
    throw new TargetError(`building ${ROOTKIT_MODULE_NAME} needs these packages (install them as root): apt-get install ${missing.join(' ')}`);
  }
  const install = () =>
    runTool('apt-get', ['install', '-y', '-q', '--no-install-recommends', '-o', 'DPkg::Lock::Timeout=300', ...missing], {
      env: aptEnv(),
      allowFailure: true,
    });
  let res = await install();
  if (res.code !== 0) {
    // Stale or missing package lists are the usual reason ("Unable to locate package").
    await runTool('apt-get', ['update', '-q'], { env: aptEnv() });
    res = await install();
    if (res.code !== 0) throw new TargetError(`apt-get install ${missing.join(' ')} failed: ${lastLine(res.stderr)}`);
  }
}

async function compileModule(release: string, sources: Sources, kbuildDir: string, dir: string, ko: string): Promise<void> {
  const build = mkdtempSync(join(dir, '.build-'));
  try {
    for (const [name, data] of sources.files) writeFileSync(join(build, name), data);
    // No BTF for the module: generating it needs pahole matched to the kernel (6.12's headers
    // ship a BTF base), and a module whose BTF the kernel rejects fails to load.
    const r = await runTool('make', ['-C', kbuildDir, `M=${build}`, 'CONFIG_DEBUG_INFO_BTF_MODULES=', 'modules'], {
      env: buildEnv(),
      allowFailure: true,
      timeoutMs: BUILD_TIMEOUT_MS,
    });
    const log = join(dir, 'last-build.log');
    writeFileSync(log, `${r.stdout}${r.stderr}`);
    const built = join(build, `${ROOTKIT_MODULE_NAME}.ko`);
    if (r.code !== 0 || !existsSync(built)) {
      const why = firstErrorLine(`${r.stderr}\n${r.stdout}`) || `make exited ${r.code}`;
      throw new TargetError(`building ${ROOTKIT_MODULE_NAME} for ${release} failed: ${why} (full log: ${log})`);
    }
    ensureDir(dirname(ko));
    const tmp = `${ko}.${process.pid}.tmp`;
    copyFileSync(built, tmp);
    renameSync(tmp, ko);
  } finally {
    rmSync(build, { recursive: true, force: true });
  }
}

function firstErrorLine(output: string): string {
  const lines = output.split('\n').map((l) => l.trim());
  return lines.find((l) => /\berror\b|\*\*\*|undefined!/i.test(l)) ?? lastLine(output);
}

/** kbuild reads many variables from the environment; none of the caller's may leak into it. */
function buildEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C' };
  for (const v of ['ARCH', 'CROSS_COMPILE', 'CC', 'LD', 'O', 'M', 'KBUILD_OUTPUT', 'KBUILD_EXTMOD', 'KCFLAGS', 'KCPPFLAGS', 'MAKEFLAGS', 'MFLAGS', 'MAKELEVEL', 'MAKEOVERRIDES', 'V']) {
    delete env[v];
  }
  return env;
}

function aptEnv(): NodeJS.ProcessEnv {
  return { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
}

// ---- Loading it, and what it reports ----------------------------------------------------------

export interface RootkitParams {
  /** Process to hide (a single-threaded user process); omitted: none. */
  readonly hidePid?: number;
  /** Syscall number whose sys_call_table entry is replaced; default getdents64; null: none. */
  readonly hookSyscall?: number | null;
  /** Hide the module itself (default true; it then cannot be unloaded). */
  readonly hideModule?: boolean;
}

/** The module parameters for `insmod vmlens_rootkit.ko …`. */
export function rootkitInsmodArgs(p: RootkitParams = {}): string[] {
  const args: string[] = [];
  if (p.hidePid !== undefined) {
    if (!Number.isInteger(p.hidePid) || p.hidePid <= 0 || p.hidePid > 0x3fffffff) throw new UsageError(`hide_pid must be a positive pid, not ${p.hidePid}`);
    args.push(`hide_pid=${p.hidePid}`);
  }
  if (p.hookSyscall !== undefined) {
    const nr = p.hookSyscall ?? -1;
    if (!Number.isInteger(nr) || nr < -1 || nr > 1023) throw new UsageError(`hook_syscall must be a syscall number, not ${p.hookSyscall}`);
    args.push(`hook_syscall=${nr}`);
  }
  if (p.hideModule !== undefined) args.push(`hide_module=${p.hideModule ? 1 : 0}`);
  return args;
}

/** Ground truth: what the module changed, from its one kernel-log line. */
export interface RootkitLoadRecord {
  readonly module: string;
  /** Address of its struct module (still in the module address tree, off the module list). */
  readonly structModule: bigint;
  readonly hiddenModule: boolean;
  /** The hidden process, if any. */
  readonly hiddenProcess?: { readonly pid: number; readonly comm: string; readonly task: bigint };
  /** The replaced sys_call_table entry, if any. */
  readonly hook?: {
    readonly syscall: number;
    readonly sysCallTable: bigint;
    /** The entry before: the kernel's own handler, and its symbol as the kernel printed it. */
    readonly original: bigint;
    readonly originalSymbol: string;
    /** The entry now: the wrapper in the module. */
    readonly handler: bigint;
  };
  /**
   * How this kernel dispatches system calls: `x64_sys_call` (a switch; the table entry is
   * not on the path, so the hook changes no behaviour) or `sys_call_table` (the hook runs).
   */
  readonly dispatch: 'x64_sys_call' | 'sys_call_table';
}

const LOAD_LINE =
  /vmlens_rootkit: loaded: module=(\S+) struct_module=0x([0-9a-f]+) hidden_module=([01]) pid=(\d+) comm=(.{1,16}?) task=0x([0-9a-f]+) syscall=(-1|\d+)(?: sys_call_table=0x([0-9a-f]+) original=0x([0-9a-f]+)\(([^)]*)\) hook=0x([0-9a-f]+))? dispatch=(x64_sys_call|sys_call_table)\s*$/;

/**
 * The record of the last `vmlens_rootkit: loaded:` line in kernel-log text (dmesg output, a
 * serial console capture), or undefined if there is none or it is malformed.
 */
export function parseRootkitLoadLine(log: string): RootkitLoadRecord | undefined {
  const lines = log.split('\n').filter((l) => l.includes('vmlens_rootkit: loaded:'));
  const line = lines[lines.length - 1];
  const m = line === undefined ? null : LOAD_LINE.exec(line.replace(/\r$/, ''));
  if (!m) return undefined;
  const pid = Number(m[4]);
  const syscall = Number(m[7]);
  return {
    module: m[1]!,
    structModule: BigInt(`0x${m[2]}`),
    hiddenModule: m[3] === '1',
    ...(pid > 0 ? { hiddenProcess: { pid, comm: m[5]!, task: BigInt(`0x${m[6]}`) } } : {}),
    ...(syscall >= 0 && m[8] !== undefined
      ? {
          hook: {
            syscall,
            sysCallTable: BigInt(`0x${m[8]}`),
            original: BigInt(`0x${m[9]}`),
            originalSymbol: m[10]!,
            handler: BigInt(`0x${m[11]}`),
          },
        }
      : {}),
    dispatch: m[12] as 'x64_sys_call' | 'sys_call_table',
  };
}
