/**
 * Symbols from a System.map, for kernels built without kallsyms. Its addresses are link-time;
 * under KASLR the whole image moved by one offset, found by matching _text with the start of
 * the mapped image.
 */
import { readFileSync } from 'node:fs';
import { UsageError } from '../util/errors.ts';
import type { SymbolTable } from './kernel.ts';

const LINE = /^([0-9a-fA-F]{8,16})\s+([a-zA-Z])\s+(\S+)/;

export function loadSystemMap(path: string, imageStart: bigint): SymbolTable {
  let text: string;
  try {
    text = readFileSync(path, 'latin1');
  } catch (e) {
    throw new UsageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const byName = new Map<string, bigint>();
  const sorted: { name: string; address: bigint }[] = [];
  for (const line of text.split('\n')) {
    const m = LINE.exec(line);
    if (!m) continue;
    const address = BigInt(`0x${m[1]}`);
    if (!byName.has(m[3]!)) byName.set(m[3]!, address);
    sorted.push({ name: m[3]!, address });
  }
  const linkText = byName.get('_text');
  if (linkText === undefined) throw new UsageError(`${path} is not a System.map (no _text symbol)`);
  const slide = imageStart - linkText;
  // Per-CPU symbols (absolute, below the image) do not move with KASLR.
  const moved = (a: bigint): bigint => (a >= 0xffff_ffff_8000_0000n ? a + slide : a);
  sorted.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
  return {
    count: sorted.length,
    lookup: (name) => {
      const a = byName.get(name);
      return a === undefined ? undefined : moved(a);
    },
    symbolize: (address) => {
      let lo = 0;
      let hi = sorted.length - 1;
      let best = -1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        if (moved(sorted[mid]!.address) <= address) {
          best = mid;
          lo = mid + 1;
        } else hi = mid - 1;
      }
      if (best < 0) return undefined;
      const s = sorted[best]!;
      return { name: s.name, offset: address - moved(s.address) };
    },
  };
}
