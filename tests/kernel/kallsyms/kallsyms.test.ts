import { describe, expect, it } from 'vitest';
import { Kallsyms, type KallsymsLayout } from '../../../src/kernel/kallsyms/index.ts';
import { UsageError } from '../../../src/util/errors.ts';

/** The lookup side of the symbol table, on a small hand-made table. */

const layout: KallsymsLayout = {
  tokenTableVa: 0n,
  tokenIndexVa: 0n,
  namesVa: 0n,
  namesSize: 0,
  numSymsVa: 0n,
  markersVa: 0n,
  markerWidth: 4,
  bigLengths: true,
  addresses: { kind: 'absolute', addressesVa: 0n },
};

function table(symbols: [string, string, bigint][]): Kallsyms {
  const hi = new Uint32Array(symbols.map(([, , a]) => Number(a >> 32n)));
  const lo = new Uint32Array(symbols.map(([, , a]) => Number(a & 0xffff_ffffn)));
  const types = new Uint8Array(symbols.map(([, t]) => t.charCodeAt(0)));
  return new Kallsyms(
    symbols.map(([n]) => n),
    types,
    hi,
    lo,
    layout,
  );
}

const T = 0xffff_ffff_8100_0000n;
const sample = (): Kallsyms =>
  table([
    ['fixed_percpu_data', 'A', 0n],
    ['runqueues', 'A', 0x31c40n],
    ['_text', 'T', T],
    ['startup_64', 'T', T],
    ['do_one', 't', T + 0x100n],
    ['helper', 't', T + 0x180n],
    ['do_two', 'T', T + 0x200n],
    ['helper', 't', T + 0x300n],
    ['_end', 'B', T + 0x1000n],
  ]);

describe('Kallsyms', () => {
  it('looks names up, the lowest address first, and finds every duplicate', () => {
    const ks = sample();
    expect(ks.count).toBe(9);
    expect(ks.lookup('do_two')).toBe(T + 0x200n);
    expect(ks.lookup('helper')).toBe(T + 0x180n);
    expect(ks.lookupAll('helper')).toEqual([T + 0x180n, T + 0x300n]);
    expect(ks.lookup('nope')).toBeUndefined();
    expect(ks.lookupAll('nope')).toEqual([]);
    expect(ks.type(ks.indexOf('do_one'))).toBe('t');
  });

  it('answers the same before and after it builds its name index', () => {
    const ks = sample();
    const names = ['_text', 'helper', 'do_two', 'missing', '_end'];
    const before = names.map((n) => ks.indexOf(n));
    for (let i = 0; i < 40; i++) ks.indexOf('do_one'); // enough lookups to switch to the index
    expect(names.map((n) => ks.indexOf(n))).toEqual(before);
    expect(before).toEqual([2, 5, 6, -1, 8]);
  });

  it('symbolizes to the nearest symbol at or below, the first of its aliases', () => {
    const ks = sample();
    expect(ks.symbolize(T)).toEqual({ name: '_text', address: T, offset: 0n, size: 0x100n, type: 'T' });
    expect(ks.symbolize(T + 0x17fn)).toEqual({ name: 'do_one', address: T + 0x100n, offset: 0x7fn, size: 0x80n, type: 't' });
    expect(ks.symbolize(T + 0x250n)).toMatchObject({ name: 'do_two', offset: 0x50n, size: 0x100n });
    expect(ks.symbolize(T + 0x1000n)).toEqual({ name: '_end', address: T + 0x1000n, offset: 0n, type: 'B' });
  });

  it('symbolizes nothing outside the kernel, nor per-CPU offsets', () => {
    const ks = sample();
    expect(ks.symbolize(T - 1n)).toBeUndefined();
    expect(ks.symbolize(T + 0x1001n)).toBeUndefined();
    expect(ks.symbolize(0x31c40n)).toBeUndefined();
    expect(ks.symbolize(0n)).toBeUndefined();
    expect(ks.indexAtOrBelow(0xffff_ffff, 0x8100_0150)).toBe(4);
    expect(ks.indexAtOrBelow(0, 5)).toBe(-1);
  });

  it('takes module symbols, symbolizes into them, and replaces them per module', () => {
    const ks = sample();
    const M = 0xffff_ffff_c000_0000n;
    ks.addModuleSymbols('dummy', [
      { name: 'dummy_init', address: M + 0x40n, type: 't', size: 0x20n },
      { name: 'dummy_xmit', address: M, type: 't' },
    ]);
    expect(ks.moduleNames).toEqual(['dummy']);
    expect(ks.lookup('dummy_xmit')).toBe(M);
    expect(ks.symbolize(M + 0x10n)).toEqual({ name: 'dummy_xmit', address: M, offset: 0x10n, size: 0x40n, type: 't', module: 'dummy' });
    expect(ks.symbolize(M + 0x45n)).toMatchObject({ name: 'dummy_init', offset: 5n, size: 0x20n, module: 'dummy' });
    // Past a symbol that has a size: nothing.
    expect(ks.symbolize(M + 0x60n)).toBeUndefined();
    const all = [...ks.symbols()];
    expect(all).toHaveLength(11);
    expect(all[10]).toMatchObject({ name: 'dummy_init', module: 'dummy' });

    ks.addModuleSymbols('dummy', [{ name: 'dummy_other', address: M + 0x80n }], { start: M, end: M + 0x1000n });
    expect(ks.lookup('dummy_xmit')).toBeUndefined();
    expect(ks.symbolize(M + 0x81n)).toEqual({ name: 'dummy_other', address: M + 0x80n, offset: 1n, type: '?', module: 'dummy' });
    expect(ks.symbolize(M + 0x1000n)).toBeUndefined();
    expect(ks.symbolize(M + 0x7fn)).toBeUndefined();
    ks.removeModuleSymbols('dummy');
    expect(ks.moduleNames).toEqual([]);
    expect(ks.symbolize(M + 0x81n)).toBeUndefined();
    expect(() => ks.addModuleSymbols('', [])).toThrow(UsageError);
  });
});
