/**
 * The pieces of sysctl handling that need no guest: names, the kernel's integer syntax, and the
 * jiffies conversions of kernel/time/time.c for the HZ values kernels are built with.
 */
import { describe, expect, it } from 'vitest';
import { Jiffies, splitSysctlName } from '../../../src/analyses/sysctl.ts';
import { parseKernelInteger } from '../../../src/actions/sysctl.ts';
import { UsageError } from '../../../src/util/errors.ts';

describe('sysctl names', () => {
  it('splits dotted names, slashed names and /proc/sys paths', () => {
    expect(splitSysctlName('net.ipv4.ip_forward')).toEqual(['net', 'ipv4', 'ip_forward']);
    expect(splitSysctlName('net/ipv4/conf/eth0.5/forwarding')).toEqual(['net', 'ipv4', 'conf', 'eth0.5', 'forwarding']);
    expect(splitSysctlName('/proc/sys/vm/swappiness')).toEqual(['vm', 'swappiness']);
  });
  it('refuses empty components', () => {
    for (const bad of ['', 'a..b', '.a', '//', 'a//b']) expect(() => splitSysctlName(bad), bad).toThrow(UsageError);
  });
});

describe('integers as proc_get_long reads them', () => {
  it('takes decimal, 0x hex, leading-0 octal and a sign', () => {
    expect(parseKernelInteger('42', 'x')).toBe(42n);
    expect(parseKernelInteger('-7', 'x')).toBe(-7n);
    expect(parseKernelInteger('0x1F', 'x')).toBe(31n);
    expect(parseKernelInteger('010', 'x')).toBe(8n);
    expect(parseKernelInteger('0', 'x')).toBe(0n);
    expect(parseKernelInteger('18446744073709551615', 'x')).toBe(2n ** 64n - 1n);
  });
  it('refuses what the kernel refuses', () => {
    for (const bad of ['', '1.5', '08', '0x', 'ten', '--1', '18446744073709551616', '1e3']) expect(() => parseKernelInteger(bad, 'vm.x'), bad).toThrow(UsageError);
  });
});

describe('jiffies conversions', () => {
  it('HZ 250 (Debian): 4 ms per jiffy, clock_t rounds down, msecs round up', () => {
    const j = new Jiffies(250);
    expect(j.tickNsec).toBe(4_000_000);
    expect(j.toMsecs(251n)).toBe(1004n);
    expect(j.fromMsecs(1001n)).toBe(251n);
    expect(j.fromMsecs(1000n)).toBe(250n);
    expect(j.toClockT(250n)).toBe(100n);
    expect(j.toClockT(3n)).toBe(1n);
    expect(j.fromClockT(100n)).toBe(250n);
    expect(j.toMsecs(2n ** 31n)).toBe((2n ** 33n) & 0xffffffffn); // unsigned int result
  });
  it('HZ 100 and 1000', () => {
    const h100 = new Jiffies(100);
    expect([h100.toMsecs(3n), h100.fromMsecs(25n), h100.toClockT(7n), h100.fromClockT(7n)]).toEqual([30n, 3n, 7n, 7n]);
    const h1000 = new Jiffies(1000);
    expect([h1000.toMsecs(3n), h1000.fromMsecs(25n), h1000.toClockT(19n), h1000.fromClockT(7n)]).toEqual([3n, 25n, 1n, 70n]);
  });
  it('HZ 300: msecs round up both ways', () => {
    const j = new Jiffies(300);
    expect(j.toMsecs(1n)).toBe(4n);
    expect(j.toMsecs(3n)).toBe(10n);
    expect(j.fromMsecs(10n)).toBe(3n);
    expect(j.fromMsecs(11n)).toBe(4n);
  });
});
