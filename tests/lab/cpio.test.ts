import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildCpio } from '../../src/lab/cpio.ts';
import { UsageError } from '../../src/util/errors.ts';

// The archive is checked with the real cpio tool, the reference for the newc format.
describe('buildCpio', () => {
  const archive = buildCpio([
    { type: 'dir', path: 'etc' },
    { type: 'dir', path: 'home/alice', mode: 0o700, uid: 1000, gid: 1000 },
    { type: 'file', path: '/etc/hostname', data: 'vmlens-lab\n' },
    { type: 'file', path: 'bin/odd', data: new Uint8Array([1, 2, 3]), mode: 0o755 },
    { type: 'symlink', path: 'bin/sh', target: 'busybox' },
    { type: 'char', path: 'dev/console', major: 5, minor: 1 },
  ]);

  it('is listed by cpio with names, modes, owners, sizes and link targets', () => {
    const listing = execFileSync('cpio', ['-itv', '--quiet', '--numeric-uid-gid'], { input: archive }).toString();
    const lines = listing.trim().split('\n');
    expect(lines).toHaveLength(6);
    expect(lines[0]).toMatch(/^drwxr-xr-x\s+2\s+0\s+0\s+0 .* etc$/);
    expect(lines[1]).toMatch(/^drwx------\s+2\s+1000\s+1000\s+0 .* home\/alice$/);
    expect(lines[2]).toMatch(/^-rw-r--r--\s+1\s+0\s+0\s+11 .* etc\/hostname$/);
    expect(lines[3]).toMatch(/^-rwxr-xr-x\s+1\s+0\s+0\s+3 .* bin\/odd$/);
    expect(lines[4]).toMatch(/^lrwxrwxrwx .* bin\/sh -> busybox$/);
    expect(lines[5]).toMatch(/^crw-------\s+1\s+0\s+0\s+5,\s+1 .* dev\/console$/);
  });

  it('extracts to the same bytes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmlens-cpio-'));
    try {
      // Without the device node: mknod is not what this checks.
      const small = buildCpio([
        { type: 'dir', path: 'etc' },
        { type: 'file', path: 'etc/hostname', data: 'vmlens-lab\n' },
        { type: 'file', path: 'etc/empty', data: '' },
        { type: 'file', path: 'etc/odd', data: new Uint8Array([0, 255, 7, 9, 1]), mode: 0o600 },
        { type: 'symlink', path: 'etc/link', target: 'hostname' },
      ]);
      execFileSync('cpio', ['-id', '--quiet'], { input: small, cwd: dir });
      expect(readFileSync(join(dir, 'etc/hostname'), 'utf8')).toBe('vmlens-lab\n');
      expect(readFileSync(join(dir, 'etc/empty')).length).toBe(0);
      expect([...readFileSync(join(dir, 'etc/odd'))]).toEqual([0, 255, 7, 9, 1]);
      expect(statSync(join(dir, 'etc/odd')).mode & 0o777).toBe(0o600);
      expect(readlinkSync(join(dir, 'etc/link'))).toBe('hostname');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('keeps every record 4-byte aligned and ends with the trailer', () => {
    expect(archive.length % 4).toBe(0);
    expect(archive.subarray(0, 6).toString()).toBe('070701');
    expect(archive.includes(Buffer.from('TRAILER!!!\0'))).toBe(true);
  });

  it('is reproducible', () => {
    const entries = [{ type: 'file' as const, path: 'a', data: 'x' }];
    expect(buildCpio(entries).equals(buildCpio(entries))).toBe(true);
  });

  it('rejects paths that could escape or collide', () => {
    expect(() => buildCpio([{ type: 'dir', path: '../etc' }])).toThrow(UsageError);
    expect(() => buildCpio([{ type: 'dir', path: 'a//b' }])).toThrow(UsageError);
    expect(() => buildCpio([{ type: 'dir', path: '/' }])).toThrow(UsageError);
    expect(() => buildCpio([{ type: 'dir', path: 'a' }, { type: 'dir', path: '/a' }])).toThrow(/duplicate/);
  });
});
