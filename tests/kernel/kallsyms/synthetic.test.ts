import { describe, expect, it } from 'vitest';
import { loadKallsyms } from '../../../src/kernel/kallsyms/index.ts';
import { decodeNames, MAX_NAME_LENGTH, type NamesTable } from '../../../src/kernel/kallsyms/names.ts';
import { ImageWindow, type KernelImageReader } from '../../../src/kernel/kallsyms/reader.ts';
import type { TokenTable } from '../../../src/kernel/kallsyms/tokens.ts';
import { GuestDataError, TranslationError, UsageError } from '../../../src/util/errors.ts';
import { Warnings } from '../../../src/util/warnings.ts';
import { IMAGE_BASE, ORDERS, syntheticKernel, type SynthOptions, type SyntheticKernel } from './support/synthetic.ts';

/**
 * kallsyms tables written as scripts/kallsyms.c writes them, in every layout kernels have
 * used and one they have not, then corrupted in the ways a hostile guest could.
 */

function expectDecodes(k: SyntheticKernel, opts: SynthOptions): void {
  const warnings = new Warnings();
  const ks = loadKallsyms(k.image, k.image.range, { warnings });
  expect(ks.count).toBe(k.symbols.length);
  const wrong: string[] = [];
  k.symbols.forEach((s, i) => {
    if (ks.name(i) !== s.name || ks.type(i) !== s.type || ks.address(i) !== s.address) wrong.push(`${i} ${s.name}`);
  });
  expect(wrong).toEqual([]);
  expect(warnings.items).toEqual([]);
  expect(ks.layout.markerWidth).toBe(opts.markerWidth);
  expect(ks.layout.namesVa).toBe(IMAGE_BASE + BigInt(k.offsetOf('names')));
  expect(ks.layout.numSymsVa).toBe(IMAGE_BASE + BigInt(k.offsetOf('num_syms')));
  expect(ks.layout.tokenTableVa).toBe(IMAGE_BASE + BigInt(k.offsetOf('token_table')));
  if (opts.addresses === 'absolute') expect(ks.layout.addresses).toEqual({ kind: 'absolute', addressesVa: IMAGE_BASE + BigInt(k.offsetOf('addresses')) });
  else {
    expect(ks.layout.addresses).toMatchObject({
      kind: 'relative',
      offsetsVa: IMAGE_BASE + BigInt(k.offsetOf('addresses')),
      relativeBaseVa: IMAGE_BASE + BigInt(k.offsetOf('relative_base')),
      absolutePercpu: opts.addresses === 'percpu',
    });
  }
}

const cases: SynthOptions[] = [];
for (const order of Object.keys(ORDERS)) {
  for (const addresses of ['relative', 'percpu', 'absolute'] as const) {
    for (const markerWidth of [4, 8] as const) {
      for (const bigLengths of [true, false]) cases.push({ order: ORDERS[order]!, addresses, markerWidth, bigLengths });
    }
  }
}
const label = (o: SynthOptions) =>
  `${Object.entries(ORDERS).find(([, v]) => v === o.order)![0]} order, ${o.addresses} addresses, ${o.markerWidth}-byte markers, ${o.bigLengths ? 'two-byte' : 'one-byte'} lengths${o.noBanner ? ', no linux_banner' : ''}`;

describe('kallsyms layouts', () => {
  it.each(cases.map((c) => [label(c), c] as const))('decodes %s', (_, opts) => {
    expectDecodes(syntheticKernel(opts), opts);
  });

  it.each(
    cases
      .filter((c) => c.markerWidth === 4 && c.bigLengths)
      .map((c) => ({ ...c, noBanner: true }))
      .map((c) => [label(c), c] as const),
  )('decodes %s', (_, opts) => {
    // Without linux_banner nothing confirms the address table from outside: its shape alone must.
    expectDecodes(syntheticKernel(opts), opts);
  });

  it('finds the tables however far they sit from where the scan starts', () => {
    const opts: SynthOptions = { order: ORDERS['v6.12']!, addresses: 'percpu', markerWidth: 4, bigLengths: true };
    for (const seed of [1, 2, 3]) expectDecodes(syntheticKernel(opts, 2000 + seed * 700, seed), opts);
  });
});

/** Overwrite bytes of a synthetic kernel's image at an offset into one of its tables. */
function poke(k: SyntheticKernel, offset: number, bytes: number[]): void {
  k.image.write(offset, Uint8Array.from(bytes));
}
const u32le = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];

describe('kallsyms from a hostile guest', () => {
  const v61: SynthOptions = { order: ORDERS['v6.1']!, addresses: 'percpu', markerWidth: 4, bigLengths: true };
  const v612: SynthOptions = { order: ORDERS['v6.12']!, addresses: 'percpu', markerWidth: 4, bigLengths: true };

  /** Either a GuestDataError, or (if the damage left enough to decode) exactly the right symbols. */
  function expectErrorOrTruth(k: SyntheticKernel): 'error' | 'decoded' {
    let ks;
    try {
      ks = loadKallsyms(k.image, k.image.range);
    } catch (e) {
      expect(e).toBeInstanceOf(GuestDataError);
      expect((e as Error).message).toMatch(/^kallsyms: /);
      return 'error';
    }
    expect(ks.count).toBe(k.symbols.length);
    k.symbols.forEach((s, i) => {
      expect(ks.address(i)).toBe(s.address);
      expect(ks.name(i)).toBe(s.name);
    });
    return 'decoded';
  }

  it.each([
    ['6.1', v61],
    ['6.12', v612],
  ] as const)('rejects a num_syms of 2^31 (%s order)', (_, opts) => {
    const k = syntheticKernel(opts);
    poke(k, k.offsetOf('num_syms'), u32le(0x8000_0000));
    expect(() => loadKallsyms(k.image, k.image.range)).toThrow(GuestDataError);
  });

  it('rejects a num_syms that disagrees with the markers', () => {
    const k = syntheticKernel(v612);
    poke(k, k.offsetOf('num_syms'), u32le(k.symbols.length + 300));
    expect(() => loadKallsyms(k.image, k.image.range)).toThrow(GuestDataError);
  });

  it('rejects a names table cut short', () => {
    const k = syntheticKernel(v612);
    const middle = k.offsetOf('names') + 4000;
    k.image.bytes.fill(0, middle, middle + 64);
    expect(() => loadKallsyms(k.image, k.image.range)).toThrow(GuestDataError);
  });

  it('rejects an entry length that runs past the others', () => {
    const k = syntheticKernel(v61);
    poke(k, k.offsetOf('names'), [0x7f]);
    expect(() => loadKallsyms(k.image, k.image.range)).toThrow(GuestDataError);
  });

  it('rejects a token index pointing outside its table', () => {
    const k = syntheticKernel(v612);
    poke(k, k.offsetOf('token_index') + 2 * 255, [0xff, 0xff]);
    expect(() => loadKallsyms(k.image, k.image.range)).toThrow(/^kallsyms: no symbol table found/);
  });

  it('rejects a token table with a byte no symbol name has', () => {
    const k = syntheticKernel(v612);
    poke(k, k.offsetOf('token_table') + 3, [0x01]);
    expect(() => loadKallsyms(k.image, k.image.range)).toThrow(GuestDataError);
  });

  it('rejects a marker that disagrees with the names', () => {
    const k = syntheticKernel(v61);
    const at = k.offsetOf('markers') + 4 * 3;
    poke(k, at, u32le(new DataView(k.image.bytes.buffer).getUint32(at, true) + 1));
    expect(() => loadKallsyms(k.image, k.image.range)).toThrow(GuestDataError);
  });

  it('rejects an address table out of order', () => {
    const k = syntheticKernel({ ...v612, addresses: 'relative' });
    const at = k.offsetOf('addresses') + 4 * 1000;
    poke(k, at, u32le(0x7fff_0000));
    expect(() => loadKallsyms(k.image, k.image.range)).toThrow(GuestDataError);
  });

  it.each([
    ['next to its table', v612],
    ['with no linux_banner to check it by', { ...v612, noBanner: true }],
  ] as const)('never decodes with a relative_base pointing elsewhere (%s)', (_, opts) => {
    const k = syntheticKernel(opts);
    const wrongBase = IMAGE_BASE + 0x2000n;
    poke(k, k.offsetOf('relative_base'), [...u32le(Number(wrongBase & 0xffff_ffffn)), ...u32le(Number(wrongBase >> 32n))]);
    expectErrorOrTruth(k);
  });

  it('rejects memory with no tables: noise, zeros, or nothing readable', () => {
    const noise = syntheticKernel(v612);
    noise.image.bytes.fill(0, 0x100000);
    expect(() => loadKallsyms(noise.image, noise.image.range)).toThrow(/^kallsyms: no symbol table found/);
    const unreadable: KernelImageReader = {
      read(va) {
        throw new TranslationError(va, 4, 'not present');
      },
    };
    expect(() => loadKallsyms(unreadable, { start: IMAGE_BASE, end: IMAGE_BASE + (64n << 20n) })).toThrow(GuestDataError);
  });

  it('lets errors that are not about the guest through', () => {
    const broken: KernelImageReader = {
      read() {
        throw new TypeError('a bug in the reader');
      },
    };
    expect(() => loadKallsyms(broken, { start: IMAGE_BASE, end: IMAGE_BASE + 0x1000n })).toThrow(TypeError);
  });

  it('refuses ranges that cannot be a kernel image', () => {
    const k = syntheticKernel(v612);
    expect(() => loadKallsyms(k.image, { start: IMAGE_BASE, end: IMAGE_BASE })).toThrow(UsageError);
    expect(() => loadKallsyms(k.image, { start: IMAGE_BASE, end: IMAGE_BASE + (2n << 30n) })).toThrow(UsageError);
  });

  it('reads around holes in the image', () => {
    const k = syntheticKernel(v612);
    const holes = [
      [IMAGE_BASE + 0x40000n, IMAGE_BASE + 0x80000n],
      [IMAGE_BASE + 0x300000n, IMAGE_BASE + 0x340000n],
    ] as const;
    const holey: KernelImageReader = {
      read(va, dst) {
        for (const [s, e] of holes) if (va < e && va + BigInt(dst.length) > s) throw new TranslationError(va, 1, 'hole');
        k.image.read(va, dst);
      },
    };
    const ks = loadKallsyms(holey, k.image.range);
    expect(ks.count).toBe(k.symbols.length);
    expect(ks.lookup('_end')).toBe(k.symbols.find((s) => s.name === '_end')!.address);
  });

  it('gives up, with a clear error, on memory full of near-tables', () => {
    // A real token table, then megabytes of one 3-byte entry repeated ("ta": a 't' symbol
    // "a"), then markers that agree with any 256 of them: every position in the names region
    // looks like the start of a table, and only a bound on the work ends the search.
    const k = syntheticKernel(v612);
    const img = k.image.bytes;
    const tokens = img.slice(k.offsetOf('token_table'), k.offsetOf('token_index') + 512);
    img.fill(0);
    const start = 0x10000;
    const end = 0x2f0000;
    for (let o = start; o + 3 <= end; o += 3) img.set([2, 0x74, 0x61], o);
    const markers = new DataView(img.buffer, end + 8);
    for (let i = 0; i < 4000; i++) markers.setUint32(4 * i, 768 * i, true);
    img.set(tokens, end + 8 + 4 * 4000 + 64);
    expect(() => loadKallsyms(k.image, k.image.range)).toThrow(/^kallsyms: gave up/);
  });

  it('cuts names longer than the kernel allows instead of growing without bound', () => {
    // A token table whose byte 0x80 stands for 500 characters, and one entry of 600 such tokens.
    const tokenBytes: number[] = [];
    const start = new Uint16Array(256);
    const length = new Uint16Array(256);
    for (let i = 0; i < 256; i++) {
      start[i] = tokenBytes.length;
      const text = i === 0x80 ? 'x'.repeat(500) : i >= 0x21 && i < 0x7f ? String.fromCharCode(i) : 'ab';
      for (const c of text) tokenBytes.push(c.charCodeAt(0));
      length[i] = text.length;
      tokenBytes.push(0);
    }
    const tokens: TokenTable = { tableVa: 0n, indexVa: 0n, bytes: Uint8Array.from(tokenBytes), start, length, size: tokenBytes.length };
    const entry = [(600 & 0x7f) | 0x80, 600 >> 7, 0x74, ...new Array<number>(599).fill(0x80)];
    const names = new Uint8Array(4096);
    names.set(entry);
    names.set([2, 0x54, 0x41], entry.length);
    const table: NamesTable = {
      namesVa: IMAGE_BASE,
      namesSize: entry.length + 3,
      count: 2,
      numSymsVa: 0n,
      markersVa: 0n,
      markerWidth: 4,
      bigLengths: true,
    };
    const decoded = decodeNames(new ImageWindow(IMAGE_BASE, names), table, tokens);
    expect(decoded.names[0]).toBe('x'.repeat(MAX_NAME_LENGTH));
    expect(decoded.names[1]).toBe('A');
    expect(String.fromCharCode(...decoded.types)).toBe('tT');
    expect(decoded.truncated).toBe(1);
  });
});
