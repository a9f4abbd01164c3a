import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { GuestConsole } from '../../src/lab/console.ts';
import { TargetError, UsageError } from '../../src/util/errors.ts';
import { labGuest, type LabGuest } from '../support/lab.ts';

describe('GuestConsole on the lab guest', () => {
  let g: LabGuest;
  beforeAll(async () => {
    g = await labGuest('default');
  });

  it('returns exactly what a command prints, without a trailing newline it did not print', async () => {
    expect(await g.console.run('printf abc')).toBe('abc');
    expect(await g.console.run('printf "a\\r\\nb\\n\\n"')).toBe('a\r\nb\n\n');
    expect(await g.console.run('true')).toBe('');
  });

  it('passes quotes, dollars, backslashes and several lines through untouched', async () => {
    expect(await g.console.run(`echo "it's" '$HOME' "\\\\"`)).toBe(`it's $HOME \\\n`);
    expect(await g.console.run('for i in 1 2 3; do\n  echo "line $i"\ndone')).toBe('line 1\nline 2\nline 3\n');
    expect(await g.console.run('cat <<EOF\nhere\ndoc\nEOF')).toBe('here\ndoc\n');
  });

  it('gives the exit status, stderr merged, and reports syntax errors instead of hanging', async () => {
    expect(await g.console.exec('exit 7')).toEqual({ output: '', exitCode: 7 });
    expect(await g.console.exec('echo out; echo err >&2; false')).toEqual({ output: 'out\nerr\n', exitCode: 1 });
    const bad = await g.console.exec('echo (');
    expect(bad.exitCode).not.toBe(0);
    expect(bad.output).toMatch(/syntax error/);
  });

  it('runs commands with stdin at /dev/null and as root', async () => {
    expect(await g.console.run('cat; id -u')).toBe('0\n');
  });

  it('keeps concurrent callers apart', async () => {
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => g.console.run(`echo start-${i}; echo end-${i}`)));
    results.forEach((r, i) => expect(r).toBe(`start-${i}\nend-${i}\n`));
  });

  it('brings several MB (all of /proc/kallsyms) through intact', async () => {
    const [size, md5] = (await g.console.run('wc -c </proc/kallsyms; md5sum </proc/kallsyms')).trim().split(/\s+/);
    const text = await g.console.run('cat /proc/kallsyms', 120_000);
    expect(Buffer.byteLength(text)).toBe(Number(size));
    expect(createHash('md5').update(text).digest('hex')).toBe(md5);
    // As root the guest shows real addresses, which the tests compare against.
    expect(text).toMatch(/^ffffffff[0-9a-f]{8} [Tt] start_kernel$/m);
  });

  it('interrupts a command that times out and goes on with the next one', async () => {
    await expect(g.console.run('sleep 30', 1500)).rejects.toThrow(/timed out after 1500 ms: sleep 30/);
    expect(await g.console.run('echo alive')).toBe('alive\n');
    expect(await g.console.run('ps -o args | grep -c "^sleep 30"; true')).toBe('0\n');
  });

  it('serves a second client (another connection, as another test worker would open)', async () => {
    const other = await GuestConsole.forLab(g.info);
    try {
      const [a, b] = await Promise.all([other.run('echo other'), g.console.run('echo mine')]);
      expect([a, b]).toEqual(['other\n', 'mine\n']);
    } finally {
      other.close();
    }
  });

  it('works over the serial console too, with its CRLF undone', async () => {
    const serial = await GuestConsole.connect(g.info.consoleSocket);
    try {
      expect(await serial.run('printf "a\\nb\\r\\n"; readlink /proc/self/fd/1')).toBe('a\nb\r\n/dev/ttyS0\n');
      expect(await serial.exec('exit 3')).toEqual({ output: '', exitCode: 3 });
    } finally {
      serial.close();
    }
  });

  it('refuses what a tty would mangle, and fails cleanly once closed', async () => {
    await expect(g.console.run('echo \x03')).rejects.toThrow(UsageError);
    await expect(g.console.run(`echo ${'x'.repeat(5000)}`)).rejects.toThrow(UsageError);
    const c = await GuestConsole.forLab(g.info);
    c.close();
    await expect(c.run('true')).rejects.toThrow(TargetError);
    await expect(GuestConsole.connect('/nonexistent/console.sock')).rejects.toThrow(TargetError);
  });
});
