import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Real Debian kernel images for the tests, fetched and unpacked once into the repository's
 * .cache (ignored by git). A kernel package's /boot/vmlinuz is a bzImage whose payload is the
 * compressed vmlinux ELF followed by its relocation table; this unpacks it with the ordinary
 * tools (xz, zstd, lz4), fetching a Debian tool package into the cache if one is missing.
 */

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
export const CACHE = join(REPO, '.cache', 'kallsyms-tests');

export interface KernelFlavour {
  /** Short name used in test titles. */
  readonly id: string;
  /** Debian meta-package that depends on the current image of this line. */
  readonly meta: string;
  /** Where an already unpacked copy of the package may be lying around. */
  readonly unpacked?: string;
}

export const FLAVOURS = {
  '6.1': { id: '6.1', meta: 'linux-image-amd64' },
  '6.1-cloud': { id: '6.1-cloud', meta: 'linux-image-cloud-amd64' },
  '6.12': { id: '6.12', meta: 'linux-image-6.12-amd64' },
} as const satisfies Record<string, KernelFlavour>;

function run(cmd: string, args: string[], opts: { cwd?: string; input?: Buffer } = {}): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, input: opts.input, maxBuffer: 1 << 30 });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

/** The concrete image package a meta-package depends on now, e.g. linux-image-6.1.0-56-amd64. */
const resolved = new Map<string, string>();
function resolvePackage(meta: string): string {
  const known = resolved.get(meta);
  if (known) return known;
  const r = run('apt-cache', ['depends', meta]);
  const m = /Depends:\s+(linux-image-\S+)/.exec(r.stdout.toString());
  if (r.status !== 0 || !m) throw new Error(`cannot resolve ${meta} with apt-cache (run apt-get update?)`);
  resolved.set(meta, m[1]!);
  return m[1]!;
}

/** Download a package into `dir` (once). Test files run in parallel: download privately, then rename. */
function fetchDeb(pkg: string, dir: string): string {
  mkdirSync(dir, { recursive: true });
  const find = (d: string) => readdirSync(d).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
  const existing = find(dir);
  if (existing) return join(dir, existing);
  const tmp = mkdtempSync(join(dir, '.download-'));
  try {
    const r = run('apt-get', ['download', pkg], { cwd: tmp });
    const deb = find(tmp);
    if (r.status !== 0 || !deb) throw new Error(`apt-get download ${pkg} failed: ${r.stderr.trim()}`);
    renameSync(join(tmp, deb), join(dir, deb));
    return join(dir, deb);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** One file out of a .deb, without installing it. */
function extractFromDeb(deb: string, pathPattern: RegExp): { path: string; data: Buffer } {
  const list = run('dpkg-deb', ['--fsys-tarfile', deb]);
  if (list.status !== 0) throw new Error(`dpkg-deb ${deb}: ${list.stderr}`);
  const names = run('tar', ['-t'], { input: list.stdout }).stdout.toString().split('\n');
  const path = names.find((n) => pathPattern.test(n));
  if (!path) throw new Error(`${deb} has no file matching ${pathPattern}`);
  const data = run('tar', ['-xO', path], { input: list.stdout }).stdout;
  return { path, data };
}

/** A decompression tool, from PATH or else unpacked from its Debian package into the cache. */
function tool(name: 'xz' | 'zstd' | 'lz4'): string {
  if (run('sh', ['-c', `command -v ${name}`]).status === 0) return name;
  const pkg = name === 'xz' ? 'xz-utils' : name;
  const dir = join(CACHE, 'tools', pkg);
  const bin = join(dir, 'usr', 'bin', name);
  if (!existsSync(bin)) {
    const deb = fetchDeb(pkg, join(CACHE, 'debs'));
    mkdirSync(dirname(dir), { recursive: true });
    const tmp = mkdtempSync(`${dir}.`);
    const r = run('dpkg-deb', ['-x', deb, tmp]);
    if (r.status !== 0) throw new Error(`dpkg-deb -x ${deb}: ${r.stderr}`);
    try {
      renameSync(tmp, dir);
    } catch {
      rmSync(tmp, { recursive: true, force: true }); // another worker got there first
    }
  }
  return bin;
}

/**
 * The vmlinux inside a bzImage. The setup header says where the payload is
 * (Documentation/arch/x86/boot.rst: setup_sects at 0x1f1, payload_offset and payload_length at
 * 0x248, relative to the protected-mode code after the setup sectors).
 */
export function unpackBzImage(bz: Buffer): Buffer {
  if (bz.readUInt32LE(0x202) !== 0x53726448) throw new Error('not a bzImage (no HdrS)');
  const setupSects = bz[0x1f1] || 4;
  const pm = (setupSects + 1) * 512;
  const payloadOffset = bz.readUInt32LE(0x248);
  const payloadLength = bz.readUInt32LE(0x24c);
  const payload = bz.subarray(pm + payloadOffset, pm + payloadOffset + payloadLength);
  let cmd: string;
  let args: string[];
  if (payload.readUInt32BE(0) === 0xfd377a58) [cmd, args] = [tool('xz'), ['-dc', '--single-stream']];
  else if (payload.readUInt32LE(0) === 0xfd2fb528) [cmd, args] = [tool('zstd'), ['-dc']];
  else if (payload.readUInt32LE(0) === 0x184c2102) [cmd, args] = [tool('lz4'), ['-dc']];
  else if (payload[0] === 0x1f && payload[1] === 0x8b) [cmd, args] = ['gzip', ['-dc']];
  else throw new Error(`unknown bzImage payload compression ${payload.subarray(0, 4).toString('hex')}`);
  // The payload ends with the decompressed size (4 bytes), which some tools call trailing
  // garbage and exit non-zero over; the output is checked instead.
  const out = run(cmd, args, { input: payload }).stdout;
  if (out.length < 64 || out.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${cmd} did not produce an ELF from the bzImage`);
  return out;
}

export interface PreparedKernel {
  readonly flavour: KernelFlavour;
  readonly package: string;
  /** The decompressed vmlinux (ELF followed by its relocation table). */
  readonly vmlinux: string;
  /** The package's kernel config, for the tests to read facts from. */
  readonly config: string;
}

/**
 * Fetch (once) and unpack the current kernel of a flavour. Works offline once cached; if apt
 * cannot resolve the meta-package, the newest cached image of the flavour is used.
 */
export function prepareKernel(flavour: KernelFlavour): PreparedKernel {
  mkdirSync(CACHE, { recursive: true });
  let pkg: string;
  try {
    pkg = resolvePackage(flavour.meta);
  } catch (e) {
    const cached = readdirSync(CACHE).filter((f) => f.startsWith(`${flavour.id}--`) && f.endsWith('.vmlinux')).sort();
    if (cached.length === 0) throw e;
    pkg = cached[cached.length - 1]!.slice(flavour.id.length + 2, -'.vmlinux'.length);
  }
  const vmlinux = join(CACHE, `${flavour.id}--${pkg}.vmlinux`);
  const config = join(CACHE, `${flavour.id}--${pkg}.config`);
  if (!existsSync(vmlinux) || !existsSync(config)) {
    const release = pkg.replace(/^linux-image-/, '').replace(/-unsigned$/, '');
    const local = flavour.unpacked && join(flavour.unpacked, 'boot', `vmlinuz-${release}`);
    let bz: Buffer;
    let cfg: Buffer;
    if (local && existsSync(local) && existsSync(join(flavour.unpacked!, 'boot', `config-${release}`))) {
      bz = readFileSync(local);
      cfg = readFileSync(join(flavour.unpacked!, 'boot', `config-${release}`));
    } else {
      const deb = fetchDeb(pkg, join(CACHE, 'debs'));
      bz = extractFromDeb(deb, /^\.\/boot\/vmlinuz-/).data;
      cfg = extractFromDeb(deb, /^\.\/boot\/config-/).data;
    }
    atomicWrite(vmlinux, unpackBzImage(bz));
    atomicWrite(config, cfg);
  }
  return { flavour, package: pkg, vmlinux, config };
}

/** Test files run in parallel workers: write under a private name, then rename into place. */
function atomicWrite(path: string, data: Buffer): void {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, path);
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** `CONFIG_X=value` lines of a kernel config. */
export function readConfig(path: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const m = /^(CONFIG_\w+)=(.*)$/.exec(line);
    if (m) out.set(m[1]!, m[2]!);
  }
  return out;
}
