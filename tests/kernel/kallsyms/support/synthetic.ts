import { TranslationError } from '../../../../src/util/errors.ts';
import type { KernelImageReader, VaRange } from '../../../../src/kernel/kallsyms/index.ts';

/**
 * A small kernel image with kallsyms tables written the way scripts/kallsyms.c writes them, in
 * any of the layouts kernels have used (and some they have not), for tests that need to control
 * or corrupt every byte.
 */

export interface SynthSymbol {
  readonly name: string;
  readonly type: string;
  readonly address: bigint;
}

export type TableName = 'addresses' | 'relative_base' | 'num_syms' | 'names' | 'markers' | 'seqs' | 'token_table' | 'token_index';

/** Table orders: as 6.1 and 6.12 emit them, and one no kernel uses. */
export const ORDERS: Record<string, readonly TableName[]> = {
  'v6.1': ['addresses', 'relative_base', 'num_syms', 'names', 'markers', 'seqs', 'token_table', 'token_index'],
  'v6.12': ['num_syms', 'names', 'markers', 'token_table', 'token_index', 'addresses', 'relative_base', 'seqs'],
  // num_syms away from the names, relative_base away from the offsets.
  scrambled: ['token_table', 'token_index', 'relative_base', 'markers', 'addresses', 'names', 'seqs', 'num_syms'],
};

export interface SynthOptions {
  readonly order: readonly TableName[];
  /** relative: base + u32; percpu: absolute per-CPU values and negative offsets; absolute: u64. */
  readonly addresses: 'relative' | 'percpu' | 'absolute';
  readonly markerWidth: 4 | 8;
  /** Two-byte lengths for long entries (6.1+); without, every entry must be under 128 bytes. */
  readonly bigLengths: boolean;
  /** Leave linux_banner out of the symbols (kernels without CONFIG_KALLSYMS_ALL have no data symbols). */
  readonly noBanner?: boolean;
}

export const IMAGE_BASE = 0xffff_ffff_8100_0000n;
export const IMAGE_SIZE = 4 << 20;
/** Where in the image the tables go, and the banner. */
export const TABLES_OFFSET = (1 << 20) + 0x10000;
export const BANNER_OFFSET = 1 << 20;
export const BANNER = 'Linux version 9.9.9-synthetic (test@vmlens) #1 SMP\n';

/** Deterministic pseudo-random numbers (xorshift32), so a failing case can be replayed. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/**
 * A plausible symbol list: per-CPU symbols first (small absolute values), then text, rodata
 * (linux_banner among it) and data, sorted by address like the kernel's, with a few aliases
 * and a few names long enough to need two length bytes.
 */
export function makeSymbols(count: number, seed = 1, opts: { longNames?: boolean; percpu?: boolean; noBanner?: boolean } = {}): SynthSymbol[] {
  const r = rng(seed);
  const out: SynthSymbol[] = [];
  if (opts.percpu) {
    let pc = 0n;
    for (let i = 0; i < 40; i++) {
      out.push({ name: `percpu_var_${i}`, type: 'D', address: pc });
      pc += BigInt(8 + (r() % 512));
    }
  }
  const words = ['alloc', 'free', 'init', 'exit', 'read', 'write', 'task', 'page', 'lock', 'irq', 'net', 'dev', 'sched', 'mm', 'fs'];
  let a = IMAGE_BASE;
  out.push({ name: '_text', type: 'T', address: a });
  out.push({ name: 'startup_64', type: 'T', address: a });
  const textCount = Math.floor(count * 0.6);
  for (let i = 0; i < textCount; i++) {
    a += BigInt(16 + (r() % 300));
    const name = `${words[r() % words.length]}_${words[r() % words.length]}_${i}`;
    out.push({ name, type: r() % 3 === 0 ? 'T' : 't', address: a });
    if (r() % 50 === 0) out.push({ name: `alias_of_${i}`, type: 't', address: a });
  }
  if (opts.longNames) {
    // Rust-like mangled names: long and barely compressible.
    for (let i = 0; i < 5; i++) {
      a += 64n;
      let name = `_RNvMs${i}_`;
      while (name.length < 200 + i * 40) name += String.fromCharCode(0x41 + (r() % 26)) + String.fromCharCode(0x30 + (r() % 10));
      out.push({ name, type: 'T', address: a });
    }
  }
  out.push({ name: '_etext', type: 'T', address: a + 16n });
  out.push({ name: opts.noBanner ? 'a_rodata_string' : 'linux_banner', type: 'R', address: IMAGE_BASE + BigInt(BANNER_OFFSET) });
  a = IMAGE_BASE + BigInt(BANNER_OFFSET) + 0x100n;
  for (let i = out.length; i < count - 1; i++) {
    a += BigInt(8 + (r() % 64));
    out.push({ name: `${words[r() % words.length]}_data_${i}`, type: r() % 2 ? 'd' : 'r', address: a });
  }
  out.push({ name: '_end', type: 'B', address: IMAGE_BASE + BigInt(IMAGE_SIZE) - 0x1000n });
  out.sort((x, y) => (x.address < y.address ? -1 : x.address > y.address ? 1 : 0));
  return out;
}

/** scripts/kallsyms.c's scheme, simplified: characters stand for themselves, spare byte values for frequent pairs. */
function compress(symbols: readonly SynthSymbol[]): { tokens: string[]; encoded: Uint8Array[] } {
  const texts = symbols.map((s) => s.type + s.name);
  const used = new Set<number>();
  for (const t of texts) for (let i = 0; i < t.length; i++) used.add(t.charCodeAt(i));
  const pairs = new Map<string, number>();
  for (const t of texts) for (let i = 0; i + 1 < t.length; i++) pairs.set(t.slice(i, i + 2), (pairs.get(t.slice(i, i + 2)) ?? 0) + 1);
  const best = [...pairs.entries()].sort((x, y) => y[1] - x[1] || (x[0] < y[0] ? -1 : 1)).map((e) => e[0]);
  const tokens: string[] = new Array(256).fill('');
  const pairToken = new Map<string, number>();
  let next = 0;
  for (let c = 0; c < 256; c++) {
    if (used.has(c)) tokens[c] = String.fromCharCode(c);
    else if (next < best.length) {
      tokens[c] = best[next]!;
      pairToken.set(best[next]!, c);
      next++;
    }
  }
  const encoded = texts.map((t) => {
    const out: number[] = [];
    for (let i = 0; i < t.length; ) {
      const pt = i + 1 < t.length ? pairToken.get(t.slice(i, i + 2)) : undefined;
      if (pt !== undefined) {
        out.push(pt);
        i += 2;
      } else {
        out.push(t.charCodeAt(i));
        i++;
      }
    }
    return Uint8Array.from(out);
  });
  return { tokens, encoded };
}

class Writer {
  bytes = new Uint8Array(1 << 16);
  len = 0;
  private ensure(n: number): void {
    if (this.len + n <= this.bytes.length) return;
    const b = new Uint8Array(Math.max(this.bytes.length * 2, this.len + n));
    b.set(this.bytes);
    this.bytes = b;
  }
  align(a: number): void {
    while (this.len % a) this.u8(0);
  }
  u8(v: number): void {
    this.ensure(1);
    this.bytes[this.len++] = v & 0xff;
  }
  u16(v: number): void {
    this.u8(v);
    this.u8(v >>> 8);
  }
  u32(v: number): void {
    this.u16(v & 0xffff);
    this.u16((v >>> 16) & 0xffff);
  }
  u64(v: bigint): void {
    this.u32(Number(v & 0xffff_ffffn));
    this.u32(Number((v >> 32n) & 0xffff_ffffn));
  }
  raw(b: Uint8Array): void {
    this.ensure(b.length);
    this.bytes.set(b, this.len);
    this.len += b.length;
  }
}

export interface BuiltTables {
  readonly blob: Uint8Array;
  /** Offset of each table in the blob. */
  readonly at: Record<TableName, number>;
  readonly tokens: string[];
}

/** The tables for `symbols`, in the order asked, each label 8-aligned as ALGN does. */
export function buildTables(symbols: readonly SynthSymbol[], opts: SynthOptions): BuiltTables {
  const { tokens, encoded } = compress(symbols);
  const n = symbols.length;
  // Names first, into their own buffer: the markers are offsets into it.
  const names = new Writer();
  const markers: number[] = [];
  for (let i = 0; i < n; i++) {
    if ((i & 0xff) === 0) markers.push(names.len);
    const e = encoded[i]!;
    if (e.length > 0x7f) {
      if (!opts.bigLengths) throw new Error('a name needs two length bytes');
      names.u8((e.length & 0x7f) | 0x80);
      names.u8(e.length >> 7);
    } else names.u8(e.length);
    names.raw(e);
  }
  const isPercpu = (s: SynthSymbol) => s.address < 0x1_0000_0000n;
  const relativeBase = symbols.find((s) => opts.addresses !== 'percpu' || !isPercpu(s))!.address;
  const w = new Writer();
  const at = {} as Record<TableName, number>;
  for (const table of opts.order) {
    w.align(8);
    at[table] = w.len;
    switch (table) {
      case 'addresses':
        for (const s of symbols) {
          if (opts.addresses === 'absolute') w.u64(s.address);
          else if (opts.addresses === 'relative') w.u32(Number(s.address - relativeBase));
          else if (isPercpu(s)) w.u32(Number(s.address));
          else w.u32(Number((relativeBase - s.address - 1n) & 0xffff_ffffn));
        }
        break;
      case 'relative_base':
        if (opts.addresses !== 'absolute') w.u64(relativeBase);
        break;
      case 'num_syms':
        w.u32(n);
        break;
      case 'names':
        w.raw(names.bytes.subarray(0, names.len));
        break;
      case 'markers':
        for (const m of markers) {
          if (opts.markerWidth === 8) w.u64(BigInt(m));
          else w.u32(m);
        }
        break;
      case 'seqs':
        for (let i = 0; i < n; i++) {
          w.u8(i >> 16);
          w.u8(i >> 8);
          w.u8(i);
        }
        break;
      case 'token_table':
        for (const t of tokens) {
          for (let i = 0; i < t.length; i++) w.u8(t.charCodeAt(i));
          w.u8(0);
        }
        break;
      case 'token_index': {
        let off = 0;
        for (const t of tokens) {
          w.u16(off);
          off += t.length + 1;
        }
        break;
      }
    }
  }
  w.align(8);
  return { blob: w.bytes.slice(0, w.len), at, tokens };
}

/** A kernel image in memory: noise for "text", the banner, the tables, zeros. */
export class SyntheticImage implements KernelImageReader {
  readonly bytes: Uint8Array;
  constructor(readonly base: bigint, size: number) {
    this.bytes = new Uint8Array(size);
  }
  get range(): VaRange {
    return { start: this.base, end: this.base + BigInt(this.bytes.length) };
  }
  read(va: bigint, dst: Uint8Array): void {
    const off = va - this.base;
    if (off < 0n || off + BigInt(dst.length) > BigInt(this.bytes.length)) throw new TranslationError(va, 1, 'outside the synthetic image');
    dst.set(this.bytes.subarray(Number(off), Number(off) + dst.length));
  }
  write(off: number, data: Uint8Array): void {
    this.bytes.set(data, off);
  }
}

export interface SyntheticKernel {
  readonly image: SyntheticImage;
  readonly symbols: SynthSymbol[];
  readonly tables: BuiltTables;
  /** Image offset of each table. */
  offsetOf(t: TableName): number;
}

export function syntheticKernel(opts: SynthOptions, count = 3000, seed = 7): SyntheticKernel {
  const symbols = makeSymbols(count, seed, { longNames: opts.bigLengths, percpu: opts.addresses === 'percpu', noBanner: opts.noBanner });
  const image = new SyntheticImage(IMAGE_BASE, IMAGE_SIZE);
  const r = rng(seed * 31 + 1);
  // "Text": random bytes, where anything may look like anything.
  for (let i = 0; i < BANNER_OFFSET; i++) image.bytes[i] = r() & 0xff;
  image.write(BANNER_OFFSET, new TextEncoder().encode(BANNER));
  const tables = buildTables(symbols, opts);
  image.write(TABLES_OFFSET, tables.blob);
  return { image, symbols, tables, offsetOf: (t) => TABLES_OFFSET + tables.at[t] };
}
