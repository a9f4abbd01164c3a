import { AddressSpace } from '../src/mmu/address-space.ts';
import { PhysReader } from '../src/mmu/phys-reader.ts';
import { vaHi, vaLo } from '../src/mmu/va.ts';
import { PageTableBuilder, SIZE_4K, SyntheticMemory } from '../tests/support/synthetic-memory.ts';
const MiB = 1024 * 1024, GiB = 1024 * MiB;
const SZ = 64 * MiB;
const mem = new SyntheticMemory({ ranges: [{ start: 0, size: SZ + 4 * MiB }] });
const t4 = new PageTableBuilder(mem, { levels: 4, tableArea: { start: SZ, size: 4 * MiB } });
const D = 0xffff888000000000n;
for (let pa = 0; pa < SZ; pa += SIZE_4K) t4.map(D + BigInt(pa), pa, SIZE_4K);
const N = 1 << 16;
const hi = new Uint32Array(N), lo = new Uint32Array(N);
let seed = 12345;
for (let i = 0; i < N; i++) { seed = (seed * 1103515245 + 12345) >>> 0; const va = D + BigInt((seed % (SZ / 8)) * 8); hi[i] = vaHi(va); lo[i] = vaLo(va); }
const mode = process.argv[2] ?? 'frozen';
const s = new AddressSpace(new PhysReader(mem, { frozen: mode !== 'live' }), t4.root, 4, { tlbEntries: mode === 'walk' ? 0 : 65536 });
function run(): number { let sum = 0; for (let i = 0; i < N; i++) sum += s.readU64(hi[i]!, lo[i]!) + s.hi; return sum; }
for (let r = 0; r < 20; r++) run();
const t0 = process.hrtime.bigint();
const R = 100;
for (let r = 0; r < R; r++) run();
const dt = Number(process.hrtime.bigint() - t0) / (R * N);
console.log(mode, dt.toFixed(1), 'ns/read');
