/**
 * Where a code pointer lands: the kernel's own text, the init text it freed after boot, the
 * text of a listed module, the memory of a module missing from the module list, or none of
 * them. Handler tables must point into the first (or, for tables modules may fill, the third).
 */
import type { Kernel } from '../../kernel/kernel.ts';
import { describeModuleAddress, type ModuleCensus } from './module-census.ts';

export type CodeWhere = 'kernel text' | 'kernel init text' | 'module text' | 'hidden module' | 'module data' | 'elsewhere';

export interface CodeTarget {
  readonly where: CodeWhere;
  /** "sym+0xoff", with the module it is in when it is in one. */
  readonly describe: string;
  /** The kernel symbol the address is in (kernel text only). */
  readonly symbol?: string;
  /** Offset into that symbol. */
  readonly offset?: bigint;
}

export interface CodeMap {
  readonly textStart: bigint;
  readonly textEnd: bigint;
  classify(address: bigint): CodeTarget;
}

export function codeMap(k: Kernel, census: ModuleCensus): CodeMap {
  const textStart = k.symbols.lookup('_text') ?? k.symbol('_stext');
  const textEnd = k.symbol('_etext');
  const initStart = k.symbols.lookup('_sinittext');
  const initEnd = k.symbols.lookup('_einittext');
  return {
    textStart,
    textEnd,
    classify(address: bigint): CodeTarget {
      const hex = `0x${address.toString(16)}`;
      if (address >= textStart && address < textEnd) {
        const s = k.symbols.symbolize(address);
        const name = s ? (s.offset === 0n ? s.name : `${s.name}+0x${s.offset.toString(16)}`) : hex;
        return { where: 'kernel text', describe: `${name} (kernel text)`, ...(s ? { symbol: s.name, offset: s.offset } : {}) };
      }
      if (initStart !== undefined && initEnd !== undefined && address >= initStart && address < initEnd) {
        return { where: 'kernel init text', describe: `${hex} in the kernel's init text, freed after boot` };
      }
      const hit = census.locate(address);
      if (hit) {
        const text = hit.region.kind === 'text' || hit.region.kind === 'init_text';
        const where: CodeWhere = !hit.module.listed ? 'hidden module' : text ? 'module text' : 'module data';
        return { where, describe: describeModuleAddress(k, census, address) ?? hex };
      }
      return { where: 'elsewhere', describe: `${hex}, in no kernel or module code` };
    },
  };
}

/**
 * What kallsyms knows beyond the SymbolTable interface (a System.map table may not): every
 * address of a name, and a symbol's extent and nm-style type letter.
 */
interface RichSymbols {
  lookupAll?(name: string): bigint[];
  symbolize(address: bigint): { name: string; offset: bigint; size?: bigint; type?: string } | undefined;
}

/** Every address of the symbol `name` (static symbols may share a name). */
export function lookupAll(k: Kernel, name: string): bigint[] {
  const s = k.symbols as RichSymbols;
  if (s.lookupAll) return s.lookupAll(name);
  const a = k.symbols.lookup(name);
  return a === undefined ? [] : [a];
}

/** Bytes from the symbol at `address` to the next symbol, when known. */
export function symbolSize(k: Kernel, address: bigint): bigint | undefined {
  const s = (k.symbols as RichSymbols).symbolize(address);
  return s && s.offset === 0n ? s.size : undefined;
}

/** nm-style type letter of the symbol at `address` (T text, D data, R read-only…), when known. */
export function symbolType(k: Kernel, address: bigint): string | undefined {
  const s = (k.symbols as RichSymbols).symbolize(address);
  return s && s.offset === 0n ? s.type : undefined;
}

interface IndexedSymbols {
  indexAtOrBelow?(hi: number, lo: number): number;
  name?(i: number): string;
  address?(i: number): bigint;
  readonly count: number;
  /** A table that wraps the kernel's own (adding module symbols) keeps it here. */
  readonly core?: IndexedSymbols;
}

/** Every kernel symbol name at exactly `address` (aliases: __x64_sys_ni_syscall and __do_sys_ni_syscall…). */
export function namesAt(k: Kernel, address: bigint): string[] {
  let s = k.symbols as IndexedSymbols;
  for (let depth = 0; depth < 4 && !s.indexAtOrBelow && s.core; depth++) s = s.core;
  if (!s.indexAtOrBelow || !s.name || !s.address) {
    const one = k.symbols.symbolize(address);
    return one && one.offset === 0n ? [one.name] : [];
  }
  const out: string[] = [];
  for (let i = s.indexAtOrBelow(Number(address >> 32n) >>> 0, Number(address & 0xffff_ffffn)); i >= 0 && i < s.count && s.address(i) === address && out.length < 64; i++) {
    out.push(s.name(i));
  }
  return out;
}
