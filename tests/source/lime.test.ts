import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openDump } from '../../src/machine/dump.ts';
import { LIME_HEADER_SIZE, LIME_MAGIC, openLime, writeLime } from '../../src/source/lime.ts';
import { openRaw, writeRaw } from '../../src/source/raw.ts';
import type { PhysicalMemory } from '../../src/source/types.ts';
import { PhysicalAccessError } from '../../src/util/errors.ts';
import { patternBytes } from '../machine/support/qemu.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmlens-lime-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** An in-memory source with a hole, as a test double for writeLime's input. */
function arraySource(parts: { start: number; bytes: Uint8Array }[]): PhysicalMemory {
  return {
    kind: 'test',
    description: 'test',
    ranges: parts.map((p) => ({ start: p.start, size: p.bytes.length })),
    writable: false,
    read(gpa, dst) {
      const p = parts.find((x) => gpa >= x.start && gpa + dst.length <= x.start + x.bytes.length);
      if (!p) throw new PhysicalAccessError(gpa, dst.length);
      dst.set(p.bytes.subarray(gpa - p.start, gpa - p.start + dst.length));
    },
    write() {},
    close() {},
  };
}

function header(s: bigint, e: bigint, magic = LIME_MAGIC, version = 1): Buffer {
  const h = Buffer.alloc(LIME_HEADER_SIZE);
  h.writeUInt32LE(magic, 0);
  h.writeUInt32LE(version, 4);
  h.writeBigUInt64LE(s, 8);
  h.writeBigUInt64LE(e, 16);
  return h;
}

describe('LiME', () => {
  const low = patternBytes(0x9f000, 11);
  const high = patternBytes(0x20000, 12);
  const src = arraySource([
    { start: 0x1000, bytes: low },
    { start: 0x100000000, bytes: high },
  ]);

  it('writes LiME headers and data that read back byte for byte, holes kept', async () => {
    const path = join(dir, 'two.lime');
    await writeLime(path, src);
    const raw = readFileSync(path);
    expect(raw.subarray(0, 4).toString('latin1')).toBe('EMiL');
    expect(raw.readBigUInt64LE(16)).toBe(0xa0000n - 1n); // e_addr is inclusive
    expect(raw.length).toBe(2 * LIME_HEADER_SIZE + low.length + high.length);
    for (const map of [true, false]) {
      const m = await openLime(path, { map });
      expect(m.ranges).toEqual(src.ranges);
      const a = new Uint8Array(low.length);
      m.read(0x1000, a);
      expect(Buffer.compare(a, low)).toBe(0);
      const b = new Uint8Array(0x100);
      m.read(0x10001ff00, b);
      expect(Buffer.compare(b, high.subarray(0x1ff00))).toBe(0);
      expect(() => m.read(0, new Uint8Array(1))).toThrow(PhysicalAccessError);
      expect(() => m.read(0x9fff0, new Uint8Array(0x20))).toThrow(PhysicalAccessError);
      m.close();
    }
    const d = await openDump(path);
    expect(d.format).toBe('lime');
    expect(await d.vcpus()).toEqual([]);
    await d.close();
  });

  it('rejects corrupt images with one clear error', async () => {
    const page = Buffer.alloc(0x1000, 1);
    const cases: [string, Buffer, RegExp][] = [
      ['truncated data', Buffer.concat([header(0n, 0x1fffn), page]), /truncated/],
      ['truncated header', Buffer.concat([header(0n, 0xfffn), page, header(0x1000n, 0x1fffn).subarray(0, 20)]), /truncated LiME header/],
      ['garbage after a range', Buffer.concat([header(0n, 0xfffn), page, Buffer.alloc(64, 0x41)]), /no range header at offset 4128/],
      ['end before start', Buffer.concat([header(0x2000n, 0xfffn), page]), /corrupt LiME range/],
      ['overlap', Buffer.concat([header(0n, 0xfffn), page, header(0x800n, 0x17ffn), page]), /overlapping/],
      ['version 2', Buffer.concat([header(0n, 0xfffn, LIME_MAGIC, 2), page]), /version 2/],
    ];
    for (const [name, bytes, why] of cases) {
      const path = join(dir, name.replace(/ /g, '-'));
      writeFileSync(path, bytes);
      await expect(openLime(path), name).rejects.toThrow(why);
    }
  });
});

describe('raw', () => {
  it('maps file offset = physical address, or a given layout', async () => {
    const bytes = patternBytes(0x3000, 13);
    const path = join(dir, 'img.raw');
    writeFileSync(path, bytes);
    const m = await openRaw(path);
    expect(m.ranges).toEqual([{ start: 0, size: 0x3000 }]);
    expect(m.windows?.[0]?.u8[0x2fff]).toBe(bytes[0x2fff]);
    m.close();
    const l = await openRaw(path, { layout: [{ gpa: 0, size: 0x1000, offset: 0 }, { gpa: 0x100000000, size: 0x2000, offset: 0x1000 }] });
    const got = new Uint8Array(4);
    l.read(0x100001ffc, got);
    expect([...got]).toEqual([...bytes.subarray(0x2ffc)]);
    expect(() => l.read(0x1000, got)).toThrow(PhysicalAccessError);
    l.close();
    await expect(openRaw(path, { layout: [{ gpa: 0, size: 0x4000, offset: 0 }] })).rejects.toThrow(/truncated/);
  });

  it('writes each range at its physical address, the hole below 4 GiB left sparse; progress counts every byte', async () => {
    const low = patternBytes(0x9f000, 21);
    const high = patternBytes(0x20000, 22);
    const src = arraySource([
      { start: 0x1000, bytes: low },
      { start: 0x100000000, bytes: high },
    ]);
    const path = join(dir, 'two.raw');
    const seen: [number, number][] = [];
    await writeRaw(path, src, (done, total) => seen.push([done, total]));
    const st = statSync(path);
    expect(st.size).toBe(0x100020000);
    // 4 GiB of file, some 760 KiB of data: the rest is holes.
    expect(st.blocks * 512).toBeLessThan(4 * 2 ** 20);
    expect(seen.at(-1)).toEqual([low.length + high.length, low.length + high.length]);
    const m = await openRaw(path);
    const a = new Uint8Array(low.length);
    m.read(0x1000, a);
    expect(Buffer.compare(a, low)).toBe(0);
    const b = new Uint8Array(high.length);
    m.read(0x100000000, b);
    expect(Buffer.compare(b, high)).toBe(0);
    const hole = new Uint8Array(0x1000);
    m.read(0x80000000, hole);
    expect(hole.every((x) => x === 0)).toBe(true);
    m.close();
  });
});

describe('closing a mapped source', () => {
  it('leaves stale windows readable as zeros instead of crashing, and read() refuses', async () => {
    const path = join(dir, 'close.raw');
    writeFileSync(path, patternBytes(0x10000, 14));
    const m = await openRaw(path);
    const w = m.windows![0]!;
    expect(w.u32[5]).not.toBe(0);
    m.close();
    expect(w.u32[5]).toBe(0);
    expect(() => m.read(0, new Uint8Array(4))).toThrow(/closed/);
    m.close();
  });
});
