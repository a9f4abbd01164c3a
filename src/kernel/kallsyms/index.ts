/**
 * kallsyms: the kernel's own symbol table, found and decoded in its memory with no outside help.
 * `loadKallsyms(reader, range)` finds the tables in the image and returns a `Kallsyms`.
 */
export { Kallsyms, type KallsymsLayout, type ModuleSymbol, type SymbolInfo, type Symbolized } from './kallsyms.ts';
export { loadKallsyms, type LoadKallsymsOptions } from './decode.ts';
export type { AddressTable } from './addresses.ts';
export type { KernelImageReader, VaRange } from './reader.ts';
