import { describe, expect, it } from 'vitest';
import { ensureHostPackages, findOnPath, isStaticElf, missingHostPackages } from '../../src/lab/deps.ts';

describe('host dependencies', () => {
  it('ensureHostPackages leaves nothing missing, and is quiet and quick the second time', async () => {
    await ensureHostPackages();
    expect(missingHostPackages()).toEqual([]);
    await ensureHostPackages();
  }, 600_000);

  it('reports the Debian package of a missing tool', () => {
    expect(
      missingHostPackages([
        { need: 'vmlens-no-such-tool', debianPackage: 'pkg-a', why: 'test' },
        { need: '/bin/sh', debianPackage: 'pkg-b', why: 'test' },
        { need: '/bin/sh', debianPackage: 'pkg-c', check: () => false, why: 'test' },
      ]),
    ).toEqual(['pkg-a', 'pkg-c']);
  });

  it('tells the static busybox from dynamic executables', () => {
    expect(isStaticElf('/bin/busybox')).toBe(true);
    expect(isStaticElf(findOnPath('ls')!)).toBe(false);
    expect(isStaticElf('/etc/hostname')).toBe(false);
    expect(isStaticElf('/nonexistent')).toBe(false);
  });
});
