import { AddressSpace } from '../src/mmu/address-space.ts';
import { PhysReader } from '../src/mmu/phys-reader.ts';
import { vaHi, vaLo } from '../src/mmu/va.ts';
import { PageTableBuilder, SIZE_4K, SyntheticMemory } from '../tests/support/synthetic-memory.ts';
import { PerformanceObserver } from 'node:perf_hooks';
const MiB = 1024 * 1024;
const SZ = Number(process.env.SZ ?? 64) * MiB;
const TA = Number(process.env.TA ?? SZ);
const mem = new SyntheticMemory({ ranges: process.env.ONE ? [{ start: 0, size: TA + 4 * MiB }] : TA === SZ ? [{ start: 0, size: SZ + 4 * MiB }] : [{ start: 0, size: SZ }, { start: TA, size: 4 * MiB }] });
const t4 = new PageTableBuilder(mem, { levels: 4, tableArea: { start: TA, size: 4 * MiB } });
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
let gcs = 0; const obs = new PerformanceObserver((l) => { gcs += l.getEntries().length; }); obs.observe({ entryTypes: ['gc'] });
const before = process.memoryUsage().heapUsed;
const R = 10;
let dt = Infinity;
for (let k = 0; k < 10; k++) {
  const c0 = process.cpuUsage();
  for (let r = 0; r < R; r++) run();
  const c = process.cpuUsage(c0);
  dt = Math.min(dt, ((c.user + c.system) * 1000) / (R * N));
}
await new Promise((r) => setTimeout(r, 100)); console.log(mode, dt.toFixed(1), 'ns/read', 'gcs', gcs); obs.disconnect(); void before;
