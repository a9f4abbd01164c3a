import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { TargetError, UsageError } from '../util/errors.ts';
import { APT_LISTS, aptListsEmpty } from './deps.ts';
import { withLock } from './lock.ts';
import { readModInfo } from './modinfo.ts';
import { cacheDir, ensureDir } from './paths.ts';
import { silentProgress, type Progress } from './progress.ts';
import { runTool } from './run.ts';

/**
 * Guest kernels come from Debian's own packages: downloaded with apt-get (nothing is installed
 * on the host), unpacked, and reduced to what a lab boot needs — the kernel image, its config,
 * and the few modules the lab loads — so that the cache stays a few megabytes per kernel.
 */

export const DEFAULT_KERNEL_PACKAGE = 'linux-image-amd64';

/**
 * Modules the lab guest loads, in order. Small, dependency-light, present in the generic and
 * cloud flavours of both 6.1 and 6.12 (as modules, or built in where noted), and each of them
 * used by the guest after loading:
 * - virtio_pci, virtio_console: a virtio console (hvc0) for the host's command shell, far
 *   faster than the 16550 UART under TCG (built into 6.12; 6.1 loads them with virtio_ring…);
 * - qemu_fw_cfg: makes -device vmcoreinfo work;
 * - dummy, tun: a dummy interface and a tap device;
 * - loop, vfat: a FAT image mounted through a loop device. vfat pulls in fat and needs the code
 *   page and character set FAT mounts use by default, which it loads on demand rather than
 *   declaring them as dependencies.
 */
export const LAB_MODULES: readonly string[] = [
  'virtio_pci',
  'virtio_console',
  'qemu_fw_cfg',
  'dummy',
  'tun',
  'loop',
  'nls_cp437',
  'nls_ascii',
  'vfat',
];

export interface KernelModule {
  /** Name as /proc/modules shows it. */
  readonly name: string;
  /** Uncompressed module file in the cache. */
  readonly file: string;
  readonly depends: readonly string[];
}

export interface CachedKernel {
  /** The exact image package, e.g. linux-image-6.1.0-56-amd64. */
  readonly package: string;
  /** Its Debian version, e.g. 6.1.192-2. */
  readonly version: string;
  /** What `uname -r` prints in the guest, e.g. 6.1.0-56-amd64. */
  readonly release: string;
  readonly dir: string;
  readonly vmlinuz: string;
  readonly config: string;
  /** Modules to load, dependencies before their users. */
  readonly modules: readonly KernelModule[];
  /** Requested modules that this kernel has built in (nothing to load). */
  readonly builtin: readonly string[];
}

interface Manifest {
  readonly format: 1;
  readonly package: string;
  readonly version: string;
  readonly release: string;
  readonly modules: readonly { name: string; file: string; depends: string[] }[];
  readonly builtin: readonly string[];
}

const MANIFEST = 'manifest.json';
const PACKAGE_NAME = /^[a-z0-9][a-z0-9.+-]{1,120}$/;
/** Meta-packages nest (linux-image-6.12-amd64 → linux-image-6.12.x+deb12-amd64); never endlessly. */
const MAX_META_HOPS = 4;
const MAX_MODULE_DEPTH = 16;

/**
 * The exact kernel image package for a user's choice: a meta-package (linux-image-amd64,
 * linux-image-cloud-amd64, linux-image-6.12-amd64) is followed through `apt-cache depends`
 * to the image it currently stands for; an exact name is returned as is.
 */
export async function resolveKernelPackage(spec: string = DEFAULT_KERNEL_PACKAGE): Promise<string> {
  if (!PACKAGE_NAME.test(spec) || !spec.startsWith('linux-image-')) {
    throw new UsageError(`not a kernel image package name: '${spec}' (e.g. linux-image-amd64, linux-image-cloud-amd64)`);
  }
  // apt-cache takes a second or more per question on a busy host, and its answers change only
  // when the package lists do: remember them, keyed by the lists' modification time.
  const stamp = aptListsStamp();
  const memo = readResolved();
  const known = memo.stamp === stamp ? memo.packages[spec] : undefined;
  if (known) return known;
  let name = spec;
  for (let hop = 0; hop < MAX_META_HOPS; hop++) {
    const next = imageDependency(name, await aptDepends(name));
    if (!next) {
      writeResolved(stamp, memo.stamp === stamp ? { ...memo.packages, [spec]: name } : { [spec]: name });
      return name;
    }
    name = next;
  }
  throw new TargetError(`kernel package ${spec}: meta-packages nest deeper than ${MAX_META_HOPS}`);
}

interface ResolvedMemo {
  readonly stamp: number;
  readonly packages: Readonly<Record<string, string>>;
}

function resolvedFile(): string {
  return join(ensureDir(join(cacheDir(), 'kernels')), 'resolved.json');
}

function readResolved(): ResolvedMemo {
  try {
    const m = JSON.parse(readFileSync(resolvedFile(), 'utf8')) as ResolvedMemo;
    if (typeof m.stamp === 'number' && m.packages && typeof m.packages === 'object') return m;
  } catch {
    /* absent or unreadable: ask apt */
  }
  return { stamp: -1, packages: {} };
}

function writeResolved(stamp: number, packages: Record<string, string>): void {
  if (stamp < 0) return;
  const file = resolvedFile();
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify({ stamp, packages }, null, 2)}\n`);
  renameSync(tmp, file);
}

/** Changes whenever `apt-get update` replaces package lists; -1 when there are none. */
function aptListsStamp(): number {
  try {
    return statSync(APT_LISTS).mtimeMs;
  } catch {
    return -1;
  }
}

/** The linux-image-* package a meta-package depends on, if `name` is one. */
export function imageDependency(name: string, dependsOutput: string): string | undefined {
  for (const line of dependsOutput.split('\n')) {
    const m = /^\s*\|?Depends:\s*(\S+)/.exec(line);
    const dep = m?.[1];
    if (dep && dep !== name && dep.startsWith('linux-image-') && !dep.endsWith('-dbg') && PACKAGE_NAME.test(dep)) return dep;
  }
  return undefined;
}

async function aptDepends(name: string): Promise<string> {
  const ask = () => runTool('apt-cache', ['depends', name], { allowFailure: true });
  let r = await ask();
  if ((r.code !== 0 || !r.stdout.trim()) && aptListsEmpty() && process.getuid?.() === 0) {
    // A fresh host may never have fetched package lists.
    await runTool('apt-get', ['update', '-q'], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    r = await ask();
  }
  if (r.code !== 0 || !r.stdout.trim()) throw new UsageError(`no such kernel package: ${name} (apt-cache knows nothing of it)`);
  return r.stdout;
}

export interface EnsureKernelOptions {
  readonly modules?: readonly string[];
  readonly progress?: Progress;
}

/**
 * The kernel `spec` resolves to, from the cache, downloading and unpacking it on first use
 * (or when the cache lacks a requested module). Concurrent callers wait for one download.
 */
export async function ensureKernel(spec?: string, opts: EnsureKernelOptions = {}): Promise<CachedKernel> {
  const pkg = await resolveKernelPackage(spec);
  const wanted = opts.modules ?? LAB_MODULES;
  const root = ensureDir(join(cacheDir(), 'kernels'));
  const dir = join(root, pkg);
  const cached = loadCachedKernel(dir, wanted);
  if (cached) return cached;
  return withLock(join(root, `${pkg}.lock`), `the download of ${pkg}`, 15 * 60_000, async () => {
    const again = loadCachedKernel(dir, wanted);
    if (again) return again;
    await downloadKernel(pkg, dir, wanted, opts.progress ?? silentProgress);
    const fresh = loadCachedKernel(dir, wanted);
    if (!fresh) throw new TargetError(`kernel cache ${dir} is incomplete after unpacking ${pkg}`);
    return fresh;
  });
}

/** The cached kernel in `dir` if it is complete and has every module in `wanted`. */
export function loadCachedKernel(dir: string, wanted: readonly string[]): CachedKernel | undefined {
  let m: Manifest;
  try {
    m = JSON.parse(readFileSync(join(dir, MANIFEST), 'utf8')) as Manifest;
  } catch {
    return undefined;
  }
  if (m.format !== 1) return undefined;
  const have = new Set([...m.modules.map((x) => x.name), ...m.builtin]);
  if (!wanted.every((w) => have.has(moduleKey(w)))) return undefined;
  const files = [join(dir, 'vmlinuz'), join(dir, 'config'), ...m.modules.map((x) => join(dir, 'modules', x.file))];
  if (!files.every((f) => existsSync(f))) return undefined;
  // Only what was asked for, in an order where every module follows its dependencies.
  const byName = new Map(m.modules.map((x) => [x.name, x]));
  const order: KernelModule[] = [];
  const seen = new Set<string>();
  const visit = (name: string, depth: number): void => {
    const mod = byName.get(name);
    if (!mod || seen.has(name) || depth > MAX_MODULE_DEPTH) return;
    seen.add(name);
    for (const d of mod.depends) visit(moduleKey(d), depth + 1);
    order.push({ name: mod.name, file: join(dir, 'modules', mod.file), depends: mod.depends });
  };
  for (const w of wanted) visit(moduleKey(w), 0);
  return {
    package: m.package,
    version: m.version,
    release: m.release,
    dir,
    vmlinuz: join(dir, 'vmlinuz'),
    config: join(dir, 'config'),
    modules: order,
    builtin: m.builtin.filter((b) => wanted.some((w) => moduleKey(w) === b)),
  };
}

/** Module names compare with '-' and '_' as one (the kernel does the same). */
export function moduleKey(name: string): string {
  return name.replace(/-/g, '_');
}

async function downloadKernel(pkg: string, dir: string, wanted: readonly string[], progress: Progress): Promise<void> {
  const root = join(dir, '..');
  // An unpacked package is some 400 MB: drop what an interrupted run left (we hold the lock).
  for (const f of readdirSync(root)) if (f.startsWith(`.unpack-${pkg}@`)) rmSync(join(root, f), { recursive: true, force: true });
  const work = mkdtempSync(join(root, `.unpack-${pkg}@`));
  try {
    const tty = process.stderr.isTTY === true;
    progress.phase(`downloading ${pkg}`);
    if (tty) progress.suspend();
    // Run in the target directory: apt-get download writes there. As root, apt drops to the
    // _apt user, which cannot write our cache; do the download as root instead of warning.
    await runTool('apt-get', ['download', '-o', 'APT::Sandbox::User=root', ...(tty ? [] : ['-q']), pkg], {
      cwd: work,
      passThrough: tty,
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
    const deb = readdirSync(work).find((f) => f.endsWith('.deb'));
    if (!deb) throw new TargetError(`apt-get download ${pkg} produced no .deb`);
    progress.phase(`unpacking ${pkg}`);
    const debPath = join(work, deb);
    const version = (await runTool('dpkg-deb', ['-f', debPath, 'Version'])).stdout.trim();
    const tree = join(work, 'tree');
    await runTool('dpkg-deb', ['-x', debPath, tree]);
    rmSync(debPath);
    const release = onlyEntry(join(tree, 'lib', 'modules'), pkg);
    const stage = join(work, 'stage');
    ensureDir(join(stage, 'modules'));
    copyFileSync(join(tree, 'boot', `vmlinuz-${release}`), join(stage, 'vmlinuz'));
    copyFileSync(join(tree, 'boot', `config-${release}`), join(stage, 'config'));
    const modRoot = join(tree, 'lib', 'modules', release);
    const { modules, builtin } = collectModules(modRoot, wanted, join(stage, 'modules'), pkg);
    const manifest: Manifest = { format: 1, package: pkg, version, release, modules, builtin };
    writeFileSync(join(stage, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
    rmSync(dir, { recursive: true, force: true });
    renameSync(stage, dir);
    progress.done();
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function onlyEntry(dir: string, pkg: string): string {
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    throw new TargetError(`${pkg} is not a kernel image package (no lib/modules)`);
  }
  if (entries.length !== 1) throw new TargetError(`${pkg}: expected one kernel release in lib/modules, found ${entries.length}`);
  return entries[0]!;
}

/**
 * Copy the wanted modules and everything they depend on (read from each module's .modinfo)
 * into `dest`, uncompressed: busybox insmod reads plain ELF only.
 */
function collectModules(
  modRoot: string,
  wanted: readonly string[],
  dest: string,
  pkg: string,
): { modules: { name: string; file: string; depends: string[] }[]; builtin: string[] } {
  const files = indexModuleFiles(join(modRoot, 'kernel'));
  const builtin = new Set(
    readLines(join(modRoot, 'modules.builtin')).map((l) => moduleKey(basename(l).replace(/\.ko$/, ''))),
  );
  const modules: { name: string; file: string; depends: string[] }[] = [];
  const done = new Set<string>();
  const skipped: string[] = [];
  const add = (name: string, depth: number, neededBy?: string): void => {
    const key = moduleKey(name);
    if (done.has(key)) return;
    if (depth > MAX_MODULE_DEPTH) throw new TargetError(`${pkg}: module dependencies of ${name} nest too deep`);
    done.add(key);
    const src = files.get(key);
    if (!src) {
      if (builtin.has(key)) {
        skipped.push(key);
        return;
      }
      throw new TargetError(`${pkg} has no module ${key}${neededBy ? ` (needed by ${neededBy})` : ''}`);
    }
    const bytes = decompressModule(src);
    const info = readModInfo(bytes, basename(src));
    const file = `${info.name}.ko`;
    writeFileSync(join(dest, file), bytes);
    modules.push({ name: info.name, file, depends: [...info.depends] });
    for (const d of info.depends) add(d, depth + 1, info.name);
  };
  for (const w of wanted) add(w, 0);
  return { modules, builtin: skipped };
}

/** module name (underscores) → path of its .ko / .ko.xz / .ko.zst under `dir`. */
function indexModuleFiles(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const m = /^(.+)\.ko(\.xz|\.zst)?$/.exec(entry.name);
    if (m) out.set(moduleKey(m[1]!), join(entry.parentPath, entry.name));
  }
  return out;
}

function decompressModule(path: string): Buffer {
  const tool = path.endsWith('.xz') ? 'xz' : path.endsWith('.zst') ? 'zstd' : undefined;
  if (!tool) return readFileSync(path);
  try {
    return execFileSync(tool, ['-dc', path], { maxBuffer: 256 * 1024 * 1024, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    throw new TargetError(`cannot decompress ${basename(path)} with ${tool}: ${(e as Error).message.split('\n')[0]}`);
  }
}

function readLines(path: string): string[] {
  try {
    return readFileSync(path, 'utf8').split('\n').filter((l) => l.length > 0);
  } catch {
    return [];
  }
}
