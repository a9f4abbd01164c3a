/**
 * Reading a kernel image: bzImage headers and payloads, the vmlinux ELF inside, and its
 * relocation table applied as the boot decompressor applies it. Synthetic images for exact
 * expectations and malformed input; the lab's real Debian image for the real layout.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { fileOffsetOf, loadKernelImage, relocatedBytes } from '../../src/analyses/checks/vmlinux-image.ts';
import { ensureKernel } from '../../src/lab/kernels.ts';
import { UsageError } from '../../src/util/errors.ts';

const LINK = 0xffff_ffff_8100_0000n;
const DELTA = 0x2e00_0000n;
const dir = mkdtempSync(join(tmpdir(), 'vmlens-image-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** An ELF64 x86-64 executable with one PT_LOAD of 0x100 bytes at LINK, and fields to relocate. */
function elf(): Uint8Array {
  const b = new Uint8Array(0x1100);
  const dv = new DataView(b.buffer);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  dv.setUint16(0x10, 2, true);
  dv.setUint16(0x12, 62, true);
  dv.setUint32(0x14, 1, true);
  dv.setBigUint64(0x20, 64n, true); // e_phoff
  dv.setUint16(0x34, 64, true);
  dv.setUint16(0x36, 56, true);
  dv.setUint16(0x38, 1, true);
  dv.setUint16(0x3a, 64, true);
  dv.setUint32(64, 1, true); // PT_LOAD
  dv.setBigUint64(64 + 8, 0x1000n, true);
  dv.setBigUint64(64 + 16, LINK, true);
  dv.setBigUint64(64 + 24, LINK - 0xffff_ffff_8000_0000n, true); // p_paddr
  dv.setBigUint64(64 + 32, 0x100n, true);
  dv.setBigUint64(64 + 40, 0x100n, true);
  dv.setBigUint64(0x1010, LINK + 0x40n, true); // a pointer: 64-bit relocation
  dv.setBigUint64(0x1018, 0x1_f000_0000n, true); // carries into the high half
  dv.setUint32(0x1020, 0x8100_0080, true); // a 32-bit absolute address
  dv.setInt32(0x1030, 0x1000, true); // a 32-bit distance to the kernel: inverse relocation
  return b;
}

/** The relocation table as arch/x86/tools/relocs writes it: 0, 64-bit, 0, inverse, 0, 32-bit. */
function table(abs64: bigint[], inv32: bigint[], abs32: bigint[]): Uint8Array {
  const words = [0n, ...abs64, 0n, ...inv32, 0n, ...abs32];
  const b = new Uint8Array(words.length * 4);
  const dv = new DataView(b.buffer);
  words.forEach((w, i) => dv.setInt32(i * 4, Number(BigInt.asIntN(32, w)), true));
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A bzImage whose payload is `payload` compressed by gzip, with its size appended. */
function bzImage(payload: Uint8Array, tweak?: (dv: DataView) => void): Uint8Array {
  const gz = gzipSync(payload);
  const b = new Uint8Array(1024 + gz.length + 4);
  const dv = new DataView(b.buffer);
  b[0x1f1] = 1; // setup sectors: the payload area starts at 2 * 512
  dv.setUint32(0x202, 0x53726448, true);
  dv.setUint16(0x206, 0x20f, true);
  dv.setUint32(0x248, 0, true);
  dv.setUint32(0x24c, gz.length + 4, true);
  b.set(gz, 1024);
  dv.setUint32(1024 + gz.length, payload.length, true);
  tweak?.(dv);
  return b;
}

function file(name: string, bytes: Uint8Array): string {
  const p = join(dir, name);
  writeFileSync(p, bytes);
  return p;
}

const RELOCS = table([LINK + 0x10n, LINK + 0x18n], [LINK + 0x30n], [LINK + 0x20n]);

describe('kernel images', () => {
  it('relocates 64-bit, 32-bit and inverse 32-bit fields by the KASLR offset', () => {
    const image = loadKernelImage(file('vmlinux.bin', concat(elf(), RELOCS)));
    expect(image.format).toBe('vmlinux ELF');
    expect(image.relocations?.abs64.length).toBe(2);
    const { bytes, relocated } = relocatedBytes(image, LINK, 0x100, DELTA);
    expect(relocated).toBe(true);
    const dv = new DataView(bytes.buffer);
    expect(dv.getBigUint64(0x10, true)).toBe(LINK + 0x40n + DELTA);
    expect(dv.getBigUint64(0x18, true)).toBe(0x1_f000_0000n + DELTA);
    expect(dv.getUint32(0x20, true)).toBe(0x8100_0080 + Number(DELTA));
    expect(dv.getInt32(0x30, true)).toBe(0x1000 - Number(DELTA));
    // Fields without a relocation are untouched; a window applies only the fields inside it.
    expect(dv.getUint32(0x40, true)).toBe(0);
    const part = relocatedBytes(image, LINK + 0x18n, 8, DELTA).bytes;
    expect(new DataView(part.buffer).getBigUint64(0, true)).toBe(0x1_f000_0000n + DELTA);
    expect(fileOffsetOf(image, LINK + 0x10n, 8)).toBe(0x1010);
    expect(fileOffsetOf(image, LINK + 0xfcn, 8)).toBe(-1);
  });

  it('reads a bzImage: header, gzip payload, the ELF and the table after it', () => {
    const image = loadKernelImage(file('bzImage', bzImage(concat(elf(), RELOCS))));
    expect(image.format).toBe('bzImage (gzip)');
    expect(image.elf.length).toBe(0x1100);
    expect(image.relocations?.inv32.length).toBe(1);
  });

  it('an ELF with no table, or a tail that is not one, is read without relocations', () => {
    expect(loadKernelImage(file('plain', elf())).relocations).toBeUndefined();
    expect(loadKernelImage(file('tail', concat(elf(), Uint8Array.of(1, 2, 3, 4, 0, 0, 0, 0, 5, 6, 7, 8)))).relocations).toBeUndefined();
    // Entries that do not name kernel addresses are not a table either.
    expect(loadKernelImage(file('low', concat(elf(), table([0x1000n], [], [])))).relocations).toBeUndefined();
  });

  it('malformed images are clear errors, not crashes', () => {
    const bad = (name: string, bytes: Uint8Array, message: RegExp): void => {
      expect(() => loadKernelImage(file(name, bytes))).toThrow(UsageError);
      expect(() => loadKernelImage(file(name, bytes))).toThrow(message);
    };
    bad('junk', new Uint8Array(4096).fill(0x41), /neither a vmlinux ELF nor a bzImage/);
    bad('past', bzImage(concat(elf(), RELOCS), (dv) => dv.setUint32(0x24c, 1 << 30, true)), /payload lies outside the file/);
    bad('size', bzImage(concat(elf(), RELOCS), (dv) => dv.setUint32(dv.byteLength - 4, 12345, true)), /decompressed to \d+ bytes, not the 12345/);
    const lzo = bzImage(elf());
    lzo.set([0x89, 0x4c, 0x5a, 0x4f], 1024);
    bad('lzo', lzo, /compression is not supported/);
    const truncated = elf();
    new DataView(truncated.buffer).setBigUint64(0x20, 1n << 40n, true);
    bad('phoff', truncated, /lies past the end/);
    expect(() => loadKernelImage(join(dir, 'missing'))).toThrow(/cannot read/);
  });

  it('reads the lab\'s real Debian bzImage: sections, and a relocation table inside its image', async () => {
    const image = loadKernelImage((await ensureKernel()).vmlinuz);
    expect(image.format).toMatch(/^bzImage \((xz|zstd|lz4|gzip)\)$/);
    const text = image.sections.find((s) => s.name === '.text')!;
    expect(text.vaddr).toBe(LINK);
    for (const name of ['.rodata', '.BTF', '.altinstructions', '.smp_locks']) expect(image.sections.map((s) => s.name)).toContain(name);
    const r = image.relocations!;
    expect(r.abs64.length + r.abs32.length + r.inv32.length).toBeGreaterThan(100_000);
    // Every entry names a field inside the loaded image (what misc.c checks at boot).
    const outside = [...r.abs64, ...r.abs32, ...r.inv32].filter((e) => fileOffsetOf(image, BigInt.asUintN(64, BigInt(e)), 4) < 0);
    expect(outside).toEqual([]);
  });
});
