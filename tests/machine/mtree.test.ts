import { describe, expect, it } from 'vitest';
import { largestRamRegion, parseFlatView, regionExtents } from '../../src/machine/mtree.ts';

// As QEMU 7.2 prints `info mtree -f` for `-m 4608 -machine pc,memory-backend=ram -vga std`.
const MTREE = `FlatView #0
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-000000000009ffff (prio 0, ram): ram
  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000
  0000000000100000-00000000bfffffff (prio 0, ram): ram @0000000000100000
  00000000fd000000-00000000fdffffff (prio 1, ram): vga.vram
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
  0000000100000000-000000015fffffff (prio 0, ram): ram @00000000c0000000 KVM

FlatView #1
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan

FlatView #2
 AS "cpu-smm-0", root: memory
 Root memory region: memory
  0000000000000000-00000000000fffff (prio 0, ram): ram
`;

describe('info mtree -f', () => {
  it('takes the flat view of address space "memory" only', () => {
    const flat = parseFlatView(MTREE);
    expect(flat).toHaveLength(10);
    expect(flat[9]).toEqual({ start: 0x100000000, size: 0x60000000, priority: 0, type: 'ram', region: 'ram', offset: 0xc0000000 });
    expect(flat[1]).toMatchObject({ start: 0xa0000, size: 0x20000, type: 'i/o', region: 'vga-lowmem' });
  });

  it("gives the backend's extents with RAM-block offsets, leaving the VGA window and ROMs out", () => {
    const ex = regionExtents(parseFlatView(MTREE), 'ram');
    expect(ex).toEqual([
      { gpa: 0, size: 0xa0000, offset: 0 },
      { gpa: 0x100000, size: 0xbff00000, offset: 0x100000 },
      { gpa: 0x100000000, size: 0x60000000, offset: 0xc0000000 },
    ]);
  });

  it('names the largest RAM region when QOM does not', () => {
    expect(largestRamRegion(parseFlatView(MTREE))).toBe('ram');
  });

  it('refuses text without the address space', () => {
    expect(() => parseFlatView('FlatView #0\n AS "I/O", root: io\n Root memory region: io\n')).toThrow(/address space "memory"/);
    expect(() => parseFlatView('unknown command')).toThrow();
  });
});
