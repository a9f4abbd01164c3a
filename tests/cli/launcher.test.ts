/**
 * bin/vmlens runs a bundle of the sources, rebuilt whenever a source is newer, and falls back to
 * tsx. Exercised on a copy of the checkout so that editing a source does not touch the real one.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = process.cwd();

describe('bin/vmlens', () => {
  let copy: string;
  const run = (args: string[], env: Record<string, string> = {}) =>
    spawnSync(join(copy, 'bin/vmlens'), args, { encoding: 'utf8', timeout: 120_000, env: { ...process.env, ...env } });

  beforeAll(() => {
    copy = mkdtempSync(join(tmpdir(), 'vmlens-launcher-'));
    for (const part of ['bin', 'src', 'lab', 'package.json']) cpSync(join(ROOT, part), join(copy, part), { recursive: true });
    symlinkSync(join(ROOT, 'node_modules'), join(copy, 'node_modules'));
  });
  afterAll(() => {
    if (copy) rmSync(copy, { recursive: true, force: true });
  });

  it('builds the bundle on first use; bundle and sources give the same program', () => {
    const bundled = run(['--help']);
    expect(bundled.status, bundled.stderr).toBe(0);
    expect(existsSync(join(copy, '.cache/cli/vmlens.mjs'))).toBe(true);
    const direct = run(['--help'], { VMLENS_NO_BUNDLE: '1' });
    expect(direct.status, direct.stderr).toBe(0);
    expect(bundled.stdout).toBe(direct.stdout);
    expect(bundled.stdout).toMatch(/Agentless introspection/);
    // Bad input: one line and exit code 2, either way.
    const envs: Record<string, string>[] = [{}, { VMLENS_NO_BUNDLE: '1' }];
    for (const env of envs) {
      const bad = run(['ps', '--no-such-option'], env);
      expect(bad.status).toBe(2);
      expect(bad.stderr.trim().split('\n')).toHaveLength(1);
    }
  });

  it('rebuilds when a source is newer than the bundle', () => {
    expect(run(['--help']).status).toBe(0);
    const main = join(copy, 'src/cli/main.ts');
    writeFileSync(main, readFileSync(main, 'utf8').replace('Agentless introspection', 'Edited introspection'));
    // mtimes can tie within a coarse clock tick: make the edit clearly newer.
    const later = new Date(Date.now() + 5_000);
    utimesSync(main, later, later);
    const r = run(['--help']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/Edited introspection/);
  });

  it('runs the sources through tsx when the bundle cannot be built', () => {
    // A syntax error that tsx also rejects would prove nothing; a missing esbuild is the case.
    const r = spawnSync('bash', ['-c', `cp -r "${copy}/bin" "${copy}/bin2" && sed -i 's|node_modules/.bin/esbuild|node_modules/.bin/no-esbuild|' "${copy}/bin2/vmlens" && "${copy}/bin2/vmlens" --help`], { encoding: 'utf8', timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/introspection/);
  });
});
