/**
 * A Kernel over synthetic memory with the real types of a Debian kernel: the BTF comes from
 * the lab's own kernel image, the memory is built by the test. Hostile structures can then be
 * laid out exactly as the guest's kernel defines them, without a VM.
 *
 * Layout: physical [0, 1 MiB) holds the page tables; [1 MiB, 16 MiB) is data, mapped at
 * DATA_VA (like the direct map) and, from MODULE_PA, also at MODULES_VADDR + MODULE_OFFSET.
 */
import { MODULES_VADDR } from '../../../src/analyses/checks/module-census.ts';
import { loadKernelImage } from '../../../src/analyses/checks/vmlinux-image.ts';
import { Btf } from '../../../src/kernel/btf/index.ts';
import { Kernel, type SymbolTable } from '../../../src/kernel/kernel.ts';
import { ensureKernel } from '../../../src/lab/kernels.ts';
import type { Machine } from '../../../src/machine/types.ts';
import { AddressSpace } from '../../../src/mmu/address-space.ts';
import { PageTableBuilder, SyntheticMemory } from '../../support/synthetic-memory.ts';

export const DATA_VA = 0xffff_8880_0000_0000n;
const DATA_PA = 0x10_0000;
const DATA_SIZE = 0x70_0000;
export const MODULE_OFFSET = 0x10_0000n;
const MODULE_PA = 0x80_0000;
const MODULE_SIZE = 0x10_0000;

let btfPromise: Promise<Btf> | undefined;

/** The default lab kernel's BTF, read from its image once per test file. */
export function labBtf(): Promise<Btf> {
  btfPromise ??= (async () => {
    const image = loadKernelImage((await ensureKernel()).vmlinuz);
    const sec = image.sections.find((s) => s.name === '.BTF');
    if (!sec) throw new Error('the lab kernel image has no .BTF section');
    return Btf.parse(image.elf.subarray(sec.offset, sec.offset + sec.size));
  })();
  return btfPromise;
}

export class SyntheticKernel {
  readonly mem = new SyntheticMemory({ ranges: [{ start: 0, size: 0x100_0000 }] });
  readonly kernel: Kernel;
  readonly symbols = new Map<string, bigint>();
  /** Next free data address (bump allocation). */
  private next = DATA_VA + 0x1000n;

  constructor(readonly btf: Btf) {
    const pt = new PageTableBuilder(this.mem, { levels: 4, tableArea: { start: 0, size: DATA_PA } });
    pt.mapRange(DATA_VA, DATA_PA, DATA_SIZE);
    pt.mapRange(MODULES_VADDR + MODULE_OFFSET, MODULE_PA, MODULE_SIZE);
    const space = new AddressSpace(this.mem, pt.root, 4, { frozen: true });
    const machine: Machine = {
      memory: this.mem,
      live: false,
      name: 'synthetic',
      vcpus: async () => [],
      isPaused: async () => true,
      close: async () => undefined,
    };
    const symbols: SymbolTable = {
      get count() {
        return 0;
      },
      lookup: (name) => this.symbols.get(name),
      symbolize: () => undefined,
    };
    this.kernel = new Kernel({
      machine,
      space,
      btf,
      symbols,
      layout: { levels: 4, root: pt.root, textBase: 0xffff_ffff_8100_0000n, physBase: 0x100_0000, kaslrOffset: 0n },
    });
  }

  /** Physical address of a mapped synthetic virtual address. */
  pa(va: bigint): number {
    if (va >= DATA_VA && va < DATA_VA + BigInt(DATA_SIZE)) return DATA_PA + Number(va - DATA_VA);
    const m = MODULES_VADDR + MODULE_OFFSET;
    if (va >= m && va < m + BigInt(MODULE_SIZE)) return MODULE_PA + Number(va - m);
    throw new Error(`test setup: 0x${va.toString(16)} is not mapped`);
  }

  /** `size` zeroed bytes of data, aligned to `align`. */
  alloc(size: number, align = 64): bigint {
    const a = BigInt(align);
    const at = (this.next + a - 1n) & ~(a - 1n);
    this.next = at + BigInt(size);
    this.mem.setBytes(this.pa(at), new Uint8Array(size));
    return at;
  }

  /** An object of `type`, zeroed. */
  allocType(type: string): bigint {
    return this.alloc(this.btf.sizeof(type));
  }

  offset(struct: string, member: string): bigint {
    return BigInt(this.btf.memberOffset(struct, member));
  }

  u64(va: bigint, value: bigint): void {
    this.mem.setU64(this.pa(va), value);
  }

  u32(va: bigint, value: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    this.mem.setBytes(this.pa(va), b);
  }

  u8(va: bigint, value: number): void {
    this.mem.setBytes(this.pa(va), Uint8Array.of(value));
  }

  bytes(va: bigint, data: Uint8Array | string): void {
    this.mem.setBytes(this.pa(va), typeof data === 'string' ? new TextEncoder().encode(data) : data);
  }

  /** Field `member` (a dotted path) of the `struct` at `base`. */
  field(base: bigint, struct: string, member: string): bigint {
    return base + this.offset(struct, member);
  }

  /** An empty circular list at `head` (next = prev = head). */
  emptyList(head: bigint): void {
    this.u64(head, head);
    this.u64(head + 8n, head);
  }
}

export async function syntheticKernel(): Promise<SyntheticKernel> {
  return new SyntheticKernel(await labBtf());
}
