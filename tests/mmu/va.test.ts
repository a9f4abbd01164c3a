import { describe, expect, it } from 'vitest';
import {
  VaCursor,
  checkVa,
  hexVa,
  isCanonical,
  isCanonicalVa,
  pageKeyHi,
  pageKeyLo,
  pageKeyVa,
  vaAddHi,
  vaAddLo,
  vaFromParts,
  vaHi,
  vaLo,
  vaPageKey,
} from '../../src/mmu/va.ts';
import { UsageError } from '../../src/util/errors.ts';

const M64 = (1n << 64n) - 1n;

describe('virtual addresses as (hi, lo)', () => {
  it('splits and joins 64-bit values exactly', () => {
    for (const va of [0n, 1n, 0xffffffffn, 0x100000000n, 0xffffffff81000000n, 0xff11000000000000n, M64]) {
      expect(vaFromParts(vaHi(va), vaLo(va))).toBe(va);
    }
    expect(vaHi(0xffffffff81234567n)).toBe(0xffffffff);
    expect(vaLo(0xffffffff81234567n)).toBe(0x81234567);
    // Signed int32 halves (as produced by | and <<) are taken as uint32.
    expect(vaFromParts(-1, -2)).toBe(0xfffffffffffffffen);
  });

  it('decides canonicality for 48- and 57-bit spaces', () => {
    const cases: [bigint, boolean, boolean][] = [
      // va, canonical under 4-level, under 5-level
      [0n, true, true],
      [0x00007fffffffffffn, true, true],
      [0x0000800000000000n, false, true],
      [0xffff800000000000n, true, true],
      [0xffff7fffffffffffn, false, true],
      [0x00ffffffffffffffn, false, true],
      [0x0100000000000000n, false, false],
      [0xff00000000000000n, false, true],
      [0xfeffffffffffffffn, false, false],
      [0xff11000000000000n, false, true],
      [0xffffffff81000000n, true, true],
      [0x8000000000000000n, false, false],
    ];
    for (const [va, c4, c5] of cases) {
      expect(isCanonical(vaHi(va), vaLo(va), 4), `4-level ${va.toString(16)}`).toBe(c4);
      expect(isCanonicalVa(va, 5), `5-level ${va.toString(16)}`).toBe(c5);
    }
  });

  it('adds offsets with carry and borrow', () => {
    const check = (va: bigint, delta: number): void => {
      const hi = vaHi(va);
      const lo = vaLo(va);
      const want = (va + BigInt(delta)) & M64;
      expect(vaFromParts(vaAddHi(hi, lo, delta), vaAddLo(lo, delta)), `${va.toString(16)} + ${delta}`).toBe(want);
      expect(new VaCursor().set(hi, lo).add(delta).toBigInt()).toBe(want);
    };
    check(0xfffffffffffffff8n, 8); // wraps to 0
    check(0x00000000fffffff0n, 0x20); // carry
    check(0x0000000100000010n, -0x20); // borrow
    check(0n, -1); // wraps to all ones
    check(0xffff8880_7ffff000n, 0x1000);
    check(0x12345678_9abcdef0n, 2 ** 40); // large offsets too
    check(0x12345678_9abcdef0n, -(2 ** 40));
  });

  it('uses page keys that are exact numbers', () => {
    const va = 0xffffffffff5ff123n;
    const key = vaPageKey(vaHi(va), vaLo(va));
    expect(Number.isSafeInteger(key)).toBe(true);
    expect(pageKeyVa(key)).toBe(va & ~0xfffn);
    expect(pageKeyHi(key)).toBe(0xffffffff);
    expect(pageKeyLo(key)).toBe(0xff5ff000);
    expect(vaPageKey(0xffffffff, 0xffffffff)).toBe(2 ** 52 - 1);
  });

  it('formats addresses as 16 hex digits', () => {
    expect(hexVa(0xffffffff81000000n)).toBe('0xffffffff81000000');
    expect(hexVa(0, 0x1000)).toBe('0x0000000000001000');
    expect(hexVa(-1, -1)).toBe('0xffffffffffffffff');
  });

  it('rejects values outside 64 bits at the bigint edge', () => {
    expect(() => checkVa(-1n)).toThrow(UsageError);
    expect(() => checkVa(1n << 64n)).toThrow(UsageError);
    expect(checkVa(M64)).toBe(M64);
  });
});
