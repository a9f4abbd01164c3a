/**
 * Real inputs for BTF tests: the host kernel's BTF, the Debian lab kernel's vmlinux (unpacked
 * from its bzImage once and cached), its modules, and bpftool as an outside ground truth.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureKernel } from '../../../src/lab/kernels.ts';

export const HOST_BTF = '/sys/kernel/btf/vmlinux';
/** The lab's default Debian kernel, fetched and cached by the lab on first use. */
const labKernel = await ensureKernel();
export const LAB_KERNEL = labKernel.release;
export const LAB_VMLINUZ = labKernel.vmlinuz;
/** The lab keeps the modules it loads, flat: vfat.ko, fat.ko… */
export const LAB_MODULES = join(labKernel.dir, 'modules');
const CACHE_DIR = join(tmpdir(), 'vmlens-test-cache');

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);

export function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/**
 * Path of the lab kernel's decompressed vmlinux, or undefined when the image or `xz` is
 * missing. The bzImage payload is an xz stream after the setup code; `xz --single-stream`
 * stops at its end and ignores what the image has after it.
 */
export function labVmlinux(): string | undefined {
  const out = join(CACHE_DIR, `vmlinux-${LAB_KERNEL}`);
  if (existsSync(out)) return out;
  if (!existsSync(LAB_VMLINUZ) || !hasCommand('xz')) return undefined;
  const image = readFileSync(LAB_VMLINUZ);
  const at = image.indexOf(XZ_MAGIC);
  if (at < 0) throw new Error(`${LAB_VMLINUZ}: no xz payload`);
  const r = spawnSync('xz', ['-dc', '--single-stream'], { input: image.subarray(at), maxBuffer: 512 << 20 });
  if (r.status !== 0) throw new Error(`xz failed: ${r.stderr.toString()}`);
  mkdirSync(CACHE_DIR, { recursive: true });
  // Write then rename, so a concurrent test run never reads half a file.
  const tmp = `${out}.${process.pid}.tmp`;
  writeFileSync(tmp, r.stdout);
  renameSync(tmp, out);
  return out;
}

/** `bpftool btf dump … format raw`, or undefined without bpftool. */
export function bpftoolRaw(file: string, base?: string): string | undefined {
  if (!hasCommand('bpftool')) return undefined;
  const args = ['btf', 'dump', ...(base ? ['-B', base] : []), 'file', file, 'format', 'raw'];
  const r = spawnSync('bpftool', args, { maxBuffer: 256 << 20, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bpftool ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** One type as bpftool prints it: the header fields and the indented lines below it. */
export interface RawType {
  id: number;
  kind: string;
  name: string;
  fields: Record<string, string>;
  items: { name?: string; fields: Record<string, string> }[];
}

const HEAD = /^\[(\d+)\] (\w+) '([^']*)'(.*)$/;
const ITEM_NAMED = /^\t'([^']*)'(.*)$/;
const FIELD = /([a-z_]+)=(\S+?),?(?=\s|$)/g;

function fieldsOf(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of text.matchAll(FIELD)) out[m[1]!] = m[2]!;
  return out;
}

export function parseBpftoolRaw(text: string): RawType[] {
  const types: RawType[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const h = HEAD.exec(line);
    if (h) {
      types.push({ id: Number(h[1]), kind: h[2]!, name: h[3] === '(anon)' ? '' : h[3]!, fields: fieldsOf(h[4]!), items: [] });
      continue;
    }
    const cur = types[types.length - 1];
    if (!cur || !line.startsWith('\t')) throw new Error(`unexpected bpftool line: ${line}`);
    const named = ITEM_NAMED.exec(line);
    // DATASEC entries have no leading name: "type_id=N offset=N size=N (VAR 'x')".
    if (named) cur.items.push({ name: named[1] === '(anon)' ? '' : named[1]!, fields: fieldsOf(named[2]!) });
    else cur.items.push({ fields: fieldsOf(line.replace(/\(.*\)$/, '')) });
  }
  return types;
}
