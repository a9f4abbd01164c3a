import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureKernel, imageDependency, LAB_MODULES, moduleKey, resolveKernelPackage, type CachedKernel } from '../../src/lab/kernels.ts';
import { findSection, readModInfo } from '../../src/lab/modinfo.ts';
import { TargetError, UsageError } from '../../src/util/errors.ts';

describe('imageDependency', () => {
  it('follows a meta-package to its image', () => {
    const out = 'linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n';
    expect(imageDependency('linux-image-amd64', out)).toBe('linux-image-6.1.0-56-amd64');
  });
  it('treats an image package (no linux-image dependency) as final', () => {
    const out = 'linux-image-6.1.0-56-amd64\n  Depends: kmod\n  Depends: linux-base\n |Depends: initramfs-tools\n  Depends: <linux-initramfs-tool>\n';
    expect(imageDependency('linux-image-6.1.0-56-amd64', out)).toBeUndefined();
  });
  it('ignores debug-symbol packages and malformed names', () => {
    expect(imageDependency('x', '  Depends: linux-image-6.1.0-56-amd64-dbg\n  Depends: linux-image-$(x)\n')).toBeUndefined();
  });
});

describe('resolveKernelPackage (apt-cache on this host)', () => {
  // A cache of its own, so that apt-cache is really asked rather than the remembered answers.
  let cache: string;
  const saved = process.env.VMLENS_CACHE_DIR;
  beforeAll(() => {
    cache = mkdtempSync(join(tmpdir(), 'vmlens-cache-'));
    process.env.VMLENS_CACHE_DIR = cache;
  });
  afterAll(() => {
    if (saved === undefined) delete process.env.VMLENS_CACHE_DIR;
    else process.env.VMLENS_CACHE_DIR = saved;
    rmSync(cache, { recursive: true, force: true });
  });

  it('resolves the default meta-package to an exact image', async () => {
    expect(await resolveKernelPackage()).toMatch(/^linux-image-\d+\.\d+[.\d+a-z-]*-amd64$/);
  });
  it('resolves a nested meta-package (6.12 → exact 6.12 image)', async () => {
    expect(await resolveKernelPackage('linux-image-6.12-amd64')).toMatch(/^linux-image-6\.12\.\d+\+deb12-amd64$/);
  });
  it('keeps an exact name, and remembers its answers until the package lists change', async () => {
    const exact = await resolveKernelPackage();
    expect(await resolveKernelPackage(exact)).toBe(exact);
    const memo = JSON.parse(readFileSync(join(cache, 'kernels', 'resolved.json'), 'utf8')) as { stamp: number; packages: Record<string, string> };
    expect(memo.packages).toMatchObject({ 'linux-image-amd64': exact, [exact]: exact });
    expect(memo.stamp).toBe(statSync('/var/lib/apt/lists').mtimeMs);
  });
  it('rejects what is not a kernel package name, and unknown packages', async () => {
    await expect(resolveKernelPackage('bash')).rejects.toThrow(UsageError);
    await expect(resolveKernelPackage('linux-image-$(reboot)')).rejects.toThrow(UsageError);
    await expect(resolveKernelPackage('linux-image-0.0.0-nosuch-amd64')).rejects.toThrow(/no such kernel package/);
  });
});

describe('ensureKernel (the real Debian package, cached)', () => {
  let k: CachedKernel;
  beforeAll(async () => {
    k = await ensureKernel();
  }, 600_000);

  it('keeps the image, its config and only the lab modules', () => {
    expect(statSync(k.vmlinuz).size).toBeGreaterThan(4 << 20);
    expect(readFileSync(k.config, 'utf8')).toContain('CONFIG_X86_5LEVEL=y');
    expect(k.release).toMatch(/^\d+\.\d+\.\d+/);
    const total = k.modules.reduce((n, m) => n + statSync(m.file).size, 0);
    expect(total).toBeLessThan(8 << 20);
  });

  it('lists every wanted module (or knows it is built in), dependencies first', () => {
    const names = k.modules.map((m) => m.name);
    for (const w of LAB_MODULES) expect(names.includes(moduleKey(w)) || k.builtin.includes(moduleKey(w))).toBe(true);
    for (const [i, m] of k.modules.entries()) {
      for (const d of m.depends) expect(names.indexOf(moduleKey(d))).toBeLessThan(i);
    }
    expect(names.indexOf('fat')).toBeLessThan(names.indexOf('vfat'));
  });

  it('stores plain ELF modules built for this release', () => {
    for (const m of k.modules) {
      const info = readModInfo(readFileSync(m.file), m.file);
      expect(info.name).toBe(m.name);
      expect(info.vermagic.split(' ')[0]).toBe(k.release);
    }
  });

  it('is served from the cache the second time', async () => {
    const t = Date.now();
    const again = await ensureKernel(k.package);
    expect(again).toEqual(k);
    expect(Date.now() - t).toBeLessThan(30_000);
  });
});

describe('readModInfo / findSection', () => {
  it('rejects truncated and non-ELF input', () => {
    expect(() => readModInfo(new Uint8Array(10))).toThrow(TargetError);
    const fake = new Uint8Array(64);
    fake.set([0x7f, 0x45, 0x4c, 0x46, 2, 1]);
    // A section table that points past the end of the file.
    new DataView(fake.buffer).setBigUint64(0x28, 1n << 40n, true);
    new DataView(fake.buffer).setUint16(0x3a, 64, true);
    new DataView(fake.buffer).setUint16(0x3c, 3, true);
    expect(() => findSection(fake, '.modinfo')).toThrow(/out of bounds/);
  });
});
