/**
 * Latency and throughput of guest-physical reads through QEMU's gdbstub (the legacy path).
 * Not a test: run with `node --import tsx tests/source/gdb/measure.ts`. Starts its own small
 * QEMU (held at reset, so its vCPU competes for nothing) and prints one line per case: the best
 * and the median of several rounds, since a shared machine adds noise that only ever slows down.
 */
import { GdbRemote } from '../../../src/source/gdb/rsp.ts';
import { GdbPhysicalMemory } from '../../../src/source/gdb/source.ts';
import { GUEST_RAM, GUEST_RANGES, TestQemu } from './qemu.ts';

const MIB = 1 << 20;
const ROUNDS = 7;

interface Case {
  readonly name: string;
  readonly ops: number;
  readonly bytes: number;
  /** One round; returns milliseconds. */
  readonly run: () => number | Promise<number>;
}

async function measure(c: Case): Promise<void> {
  const times: number[] = [];
  for (let i = 0; i < ROUNDS; i++) times.push(await c.run());
  times.sort((a, b) => a - b);
  const fmt = (ms: number) => `${((ms * 1000) / c.ops).toFixed(1).padStart(7)} µs/op ${(c.bytes / MIB / (ms / 1000)).toFixed(1).padStart(6)} MiB/s`;
  console.log(`${c.name.padEnd(40)} best ${fmt(times[0]!)}   median ${fmt(times[times.length >> 1]!)}`);
}

/** Scattered addresses in RAM above 1 MiB, fixed seed. */
function addresses(n: number, len: number): number[] {
  let x = 12345;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out.push(0x100000 + ((x % (GUEST_RAM - 0x100000 - len)) & ~7));
  }
  return out;
}

function timed(fn: () => void): number {
  const t = performance.now();
  fn();
  return performance.now() - t;
}

async function main(): Promise<void> {
  const qemu = await TestQemu.start();
  try {
    for (const depth of [1, 16, 32]) {
      const mem = GdbPhysicalMemory.open('127.0.0.1', qemu.gdbPort!, { ranges: GUEST_RANGES, pipelineDepth: depth });
      if (depth === 1) {
        const d8 = new Uint8Array(8);
        const a8 = addresses(1000, 8);
        await measure({ name: 'source read 8 B', ops: a8.length, bytes: a8.length * 8, run: () => timed(() => a8.forEach((a) => mem.read(a, d8))) });
        const d2k = new Uint8Array(2048);
        const a2k = addresses(500, 2048);
        await measure({ name: 'source read 2 KiB (1 packet)', ops: a2k.length, bytes: a2k.length * 2048, run: () => timed(() => a2k.forEach((a) => mem.read(a, d2k))) });
      }
      const d4k = new Uint8Array(4096);
      const a4k = addresses(250, 4096);
      await measure({ name: `source read 4 KiB (2 packets, depth ${depth})`, ops: a4k.length, bytes: a4k.length * 4096, run: () => timed(() => a4k.forEach((a) => mem.read(a, d4k))) });
      const big = new Uint8Array(4 * MIB);
      await measure({ name: `source read 4 MiB (depth ${depth})`, ops: 1, bytes: big.length, run: () => timed(() => mem.read(0x100000, big)) });
      const batch = addresses(1000, 8).map((gpa) => ({ gpa, dst: new Uint8Array(8) }));
      await measure({ name: `source readMany 1000 × 8 B (depth ${depth})`, ops: batch.length, bytes: batch.length * 8, run: () => timed(() => mem.readMany(batch)) });
      mem.close();
    }

    const gdb = await GdbRemote.connect('127.0.0.1', qemu.gdbPort!);
    await gdb.setPhysicalMode(true);
    const a8 = addresses(500, 8);
    await measure({
      name: 'GdbRemote readMemory 8 B',
      ops: a8.length,
      bytes: a8.length * 8,
      run: async () => {
        const t = performance.now();
        for (const a of a8) await gdb.readMemory(BigInt(a), 8);
        return performance.now() - t;
      },
    });
    const a2k = addresses(250, 2048);
    await measure({
      name: 'GdbRemote readMemory 2 KiB',
      ops: a2k.length,
      bytes: a2k.length * 2048,
      run: async () => {
        const t = performance.now();
        for (const a of a2k) await gdb.readMemory(BigInt(a), 2048);
        return performance.now() - t;
      },
    });
    await gdb.setPhysicalMode(false);
    gdb.close();
  } finally {
    await qemu.stop();
  }
}

await main();
