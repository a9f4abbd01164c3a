import type { SegmentCache } from '../source/elf-core.ts';

/**
 * HMP `info registers` (QEMU's x86_cpu_dump_state), one block per vCPU with `-a`:
 *
 *   CPU#0
 *   RAX=0000000000000000 RBX=… RCX=… RDX=…            (EAX=00000000 … outside 64-bit code)
 *   RIP=ffffffff81e0c3ab RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
 *   CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]
 *   GDT=     fffffe0000001000 0000007f
 *   CR0=80050033 CR2=00007f… CR3=000000010a3e2000 CR4=00350ef0
 *   EFER=0000000000000d01
 *
 * Outside 64-bit code (real mode, or a 32-bit task under a 64-bit kernel) QEMU prints only the
 * low 32 bits of registers and segment bases; `wide` says which form a block used.
 */

export interface HmpCpuRegisters {
  readonly index: number;
  /** True when QEMU printed the 64-bit form (the vCPU was in 64-bit code). */
  readonly wide: boolean;
  /** rax … r15, rip, rflags (from EAX … for the 32-bit form). */
  readonly regs: Readonly<Record<string, bigint>>;
  readonly segments: Readonly<Record<string, SegmentCache>>;
  readonly gdt: { readonly base: bigint; readonly limit: number };
  readonly idt: { readonly base: bigint; readonly limit: number };
  readonly cr0: bigint;
  readonly cr2: bigint;
  readonly cr3: bigint;
  readonly cr4: bigint;
  readonly efer: bigint;
  readonly cpl: number;
  readonly halted: boolean;
}

const GPR_NAMES: Readonly<Record<string, string>> = {
  RAX: 'rax', RBX: 'rbx', RCX: 'rcx', RDX: 'rdx', RSI: 'rsi', RDI: 'rdi', RBP: 'rbp', RSP: 'rsp',
  R8: 'r8', R9: 'r9', R10: 'r10', R11: 'r11', R12: 'r12', R13: 'r13', R14: 'r14', R15: 'r15',
  RIP: 'rip', RFL: 'rflags',
  EAX: 'rax', EBX: 'rbx', ECX: 'rcx', EDX: 'rdx', ESI: 'rsi', EDI: 'rdi', EBP: 'rbp', ESP: 'rsp',
  EIP: 'rip', EFL: 'rflags',
};

const SEGMENT_LINE = /^(ES|CS|SS|DS|FS|GS|LDT|TR)\s*=([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+)/;
const TABLE_LINE = /^(GDT|IDT)=\s+([0-9a-f]+) ([0-9a-f]+)/;
const ASSIGNMENT = /\b([A-Z][A-Z0-9]*) ?=([0-9a-f]+)\b/g;
const MAX_CPUS = 4096;

interface Block {
  index: number;
  wide: boolean;
  values: Map<string, bigint>;
  segments: Record<string, SegmentCache>;
  tables: Record<string, { base: bigint; limit: number }>;
}

/** Parse `info registers` or `info registers -a` output into one record per vCPU. */
export function parseInfoRegisters(text: string): HmpCpuRegisters[] {
  const blocks: Block[] = [];
  let cur: Block | undefined;
  const begin = (index: number): Block => {
    const b: Block = { index, wide: false, values: new Map(), segments: {}, tables: {} };
    blocks.push(b);
    return b;
  };
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trimEnd();
    const head = /^CPU#(\d+)/.exec(line);
    if (head) {
      if (blocks.length >= MAX_CPUS) break;
      cur = begin(Number(head[1]));
      continue;
    }
    if (line === '') continue;
    cur ??= begin(0);
    const seg = SEGMENT_LINE.exec(line);
    if (seg) {
      cur.segments[seg[1]!.toLowerCase()] = {
        selector: parseInt(seg[2]!, 16),
        base: BigInt('0x' + seg[3]!),
        limit: parseInt(seg[4]!, 16) >>> 0,
        flags: parseInt(seg[5]!, 16) >>> 0,
      };
      continue;
    }
    const table = TABLE_LINE.exec(line);
    if (table) {
      cur.tables[table[1]!.toLowerCase()] = { base: BigInt('0x' + table[2]!), limit: parseInt(table[3]!, 16) >>> 0 };
      continue;
    }
    // FPU and vector registers are long and of no use here.
    if (/^(FPR|XMM|YMM|ZMM|Opmask|FCW|Code=)/.test(line)) continue;
    for (const m of line.matchAll(ASSIGNMENT)) {
      const name = m[1]!;
      if (name === 'RAX') cur.wide = true;
      cur.values.set(name, BigInt('0x' + m[2]!));
    }
  }
  return blocks.map(toRecord);
}

function toRecord(b: Block): HmpCpuRegisters {
  const v = (name: string): bigint => b.values.get(name) ?? 0n;
  const regs: Record<string, bigint> = {};
  for (const [hmp, name] of Object.entries(GPR_NAMES)) {
    const x = b.values.get(hmp);
    if (x !== undefined) regs[name] = x;
  }
  const none = { base: 0n, limit: 0 };
  return {
    index: b.index,
    wide: b.wide,
    regs,
    segments: b.segments,
    gdt: b.tables.gdt ?? none,
    idt: b.tables.idt ?? none,
    cr0: v('CR0'),
    cr2: v('CR2'),
    cr3: v('CR3'),
    cr4: v('CR4'),
    efer: v('EFER'),
    cpl: Number(v('CPL')),
    halted: v('HLT') === 1n,
  };
}
