/**
 * Name → type ids, built lazily and without making a JS string per name: an open-addressing
 * hash table of type indices, keyed by a hash of the name's bytes in the string section; a
 * lookup encodes the wanted name once and compares bytes.
 *
 * vmlinux has ~125k named types, most of them FUNCs; finding `task_struct` should not pay for
 * indexing every function name, so names are indexed in three groups (types, functions,
 * variables), each on its first use.
 */
import { BtfKind } from './types.ts';
import { hashBytes, type BtfTable } from './parse.ts';

/** Local alias: inside hot loops a plain property load, where an imported binding may cost a getter call. */
const K = BtfKind;

export const NameGroup = { TYPES: 0, FUNCS: 1, VARS: 2 } as const;
export type NameGroup = (typeof NameGroup)[keyof typeof NameGroup];

/** Which group a kind's names are indexed in. */
export function groupOfKind(kind: number): NameGroup {
  if (kind === K.FUNC) return NameGroup.FUNCS;
  if (kind === K.VAR) return NameGroup.VARS;
  return NameGroup.TYPES;
}

interface HashTable {
  /** Own type index + 1 per slot; 0 = empty. At most half full, so probes always end. */
  readonly slots: Uint32Array;
  readonly hashes: Uint32Array;
}

const encoder = new TextEncoder();

export class NameIndex {
  private readonly tables: (HashTable | undefined)[] = [undefined, undefined, undefined];

  constructor(private readonly table: BtfTable) {}

  /** Own type ids named `name` in `group`, in id order. */
  ids(group: NameGroup, name: string): number[] {
    const out: number[] = [];
    this.probe(group, name, out);
    return out;
  }

  /** Lowest own id named `name` in `group`, or undefined. */
  first(group: NameGroup, name: string): number | undefined {
    return this.probe(group, name, undefined);
  }

  /** Walk the probe sequence of `name`; collect every match into `out`, or return the first. */
  private probe(group: NameGroup, name: string, out: number[] | undefined): number | undefined {
    if (name === '') return undefined;
    const { slots, hashes } = this.hashTable(group);
    const table = this.table;
    const want = encoder.encode(name);
    const h = hashBytes(want);
    const mask = slots.length - 1;
    // Linear probing without deletions keeps equal names in insertion (= id) order.
    for (let s = h & mask; slots[s] !== 0; s = (s + 1) & mask) {
      if (hashes[s] !== h) continue;
      const id = table.firstId + slots[s]! - 1;
      if (!table.strEquals(table.nameOffOf(id), want)) continue;
      if (!out) return id;
      out.push(id);
    }
    return undefined;
  }

  private hashTable(group: NameGroup): HashTable {
    const have = this.tables[group];
    if (have) return have;
    const table = this.table;
    const first = table.firstId;
    const n = table.ownCount;
    let count = 0;
    for (let i = 0; i < n; i++) if (groupOfKind(table.kindOf(first + i)) === group && table.nameOffOf(first + i) !== 0) count++;
    let size = 16;
    while (size < count * 2) size *= 2;
    const slots = new Uint32Array(size);
    const hashes = new Uint32Array(size);
    const mask = size - 1;
    for (let i = 0; i < n; i++) {
      const id = first + i;
      if (groupOfKind(table.kindOf(id)) !== group) continue;
      const off = table.nameOffOf(id);
      if (off === 0) continue;
      const h = table.strHash(off);
      let s = h & mask;
      while (slots[s] !== 0) s = (s + 1) & mask;
      slots[s] = i + 1;
      hashes[s] = h;
    }
    const built = { slots, hashes };
    this.tables[group] = built;
    return built;
  }
}
