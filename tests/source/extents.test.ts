import { describe, expect, it } from 'vitest';
import { findExtent, forEachPiece, normalizeExtents, rangesOf, windowCuts } from '../../src/source/extents.ts';
import { PhysicalAccessError } from '../../src/util/errors.ts';
import { Warnings } from '../../src/util/warnings.ts';

const G = 1 << 30;

describe('normalizeExtents', () => {
  it('sorts and merges runs that continue in both spaces', () => {
    const out = normalizeExtents([
      { gpa: 0x2000, size: 0x1000, offset: 0x5000 },
      { gpa: 0x1000, size: 0x1000, offset: 0x4000 },
      { gpa: 0x3000, size: 0x1000, offset: 0x9000 },
    ]);
    expect(out).toEqual([
      { gpa: 0x1000, size: 0x2000, offset: 0x4000 },
      { gpa: 0x3000, size: 0x1000, offset: 0x9000 },
    ]);
    expect(rangesOf(out)).toEqual([{ start: 0x1000, size: 0x3000 }]);
  });

  it('folds overlaps that agree (one physical page described per virtual mapping)', () => {
    const out = normalizeExtents([
      { gpa: 0x1000, size: 0x3000, offset: 0x100 },
      { gpa: 0x2000, size: 0x1000, offset: 0x1100 },
      { gpa: 0x3000, size: 0x2000, offset: 0x2100 },
    ]);
    expect(out).toEqual([{ gpa: 0x1000, size: 0x4000, offset: 0x100 }]);
  });

  it('keeps the first description of a contradiction and warns, or throws without a sink', () => {
    const bad = [
      { gpa: 0x1000, size: 0x2000, offset: 0 },
      { gpa: 0x2000, size: 0x2000, offset: 0x8000 },
    ];
    expect(() => normalizeExtents(bad)).toThrow(PhysicalAccessError);
    const w = new Warnings();
    const out = normalizeExtents(bad, w);
    expect(out).toEqual([
      { gpa: 0x1000, size: 0x2000, offset: 0 },
      { gpa: 0x3000, size: 0x1000, offset: 0x9000 },
    ]);
    expect(w.items).toHaveLength(1);
  });
});

describe('windowCuts', () => {
  it('cuts at 1 GiB-aligned guest-physical boundaries only', () => {
    const cuts = windowCuts([{ gpa: 0x100000, size: 3 * G - 0x100000, offset: 0x100000 }, { gpa: 4 * G, size: G + 0x1000, offset: 3 * G }]);
    expect(cuts.map((c) => [c.gpa, c.size, c.offset])).toEqual([
      [0x100000, G - 0x100000, 0x100000],
      [G, G, G],
      [2 * G, G, 2 * G],
      [4 * G, G, 3 * G],
      [5 * G, 0x1000, 4 * G],
    ]);
    for (const c of cuts) expect(Math.floor(c.gpa / G)).toBe(Math.floor((c.gpa + c.size - 1) / G));
  });
});

describe('forEachPiece', () => {
  const ex = [
    { gpa: 0x1000, size: 0x1000, offset: 0x10 },
    { gpa: 0x2000, size: 0x1000, offset: 0x90 },
    { gpa: 0x5000, size: 0x1000, offset: 0 },
  ];
  it('splits a span over adjacent extents', () => {
    const seen: number[][] = [];
    forEachPiece(ex, 0x1ff0, 0x20, (_e, at, pos, n) => seen.push([at, pos, n]));
    expect(seen).toEqual([
      [0x10 + 0xff0, 0, 0x10],
      [0x90, 0x10, 0x10],
    ]);
  });
  it('refuses holes before visiting anything', () => {
    let visits = 0;
    expect(() => forEachPiece(ex, 0x2ff0, 0x20, () => visits++)).toThrow(/crosses/);
    expect(() => forEachPiece(ex, 0x3000, 1, () => visits++)).toThrow(/not guest RAM/);
    expect(() => forEachPiece(ex, -1, 1, () => visits++)).toThrow(PhysicalAccessError);
    expect(visits).toBe(0);
  });
  it('finds extents by binary search', () => {
    expect(findExtent(ex, 0x5fff)).toBe(2);
    expect(findExtent(ex, 0x6000)).toBe(-1);
    expect(findExtent(ex, 0xfff)).toBe(-1);
  });
});
