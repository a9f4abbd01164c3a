/**
 * Register layout of a gdbstub target and the x86-64 record vmlens reads from it.
 *
 * The stub describes its registers in a target description (XML, fetched with qXfer): names,
 * sizes and numbers. The `g` packet carries registers 0…n-1 back to back in number order,
 * little-endian. QEMU's x86-64 core description (target/i386/gdbstub.c, gdb-xml/i386-64bit.xml)
 * has 66 registers, all of them in `g`: rax rbx rcx rdx rsi rdi rbp rsp r8…r15 (0–15), rip (16),
 * eflags (17), cs ss ds es fs gs (18–23, 32 bits), fs_base gs_base k_gs_base (24–26), cr0 cr2 cr3
 * cr4 cr8 efer (27–32), st0…st7 (33–40, 80 bits), fctrl…fop (41–48), xmm0…xmm15 (49–64, 128
 * bits), mxcsr (65). No descriptor-table registers (IDTR, GDTR) are exposed.
 */
import { TargetError } from '../../util/errors.ts';
import { leValue } from './protocol.ts';

export interface RegisterDesc {
  readonly name: string;
  readonly regnum: number;
  readonly bits: number;
  /** Byte offset in the `g` packet's data. */
  readonly offset: number;
}

export interface RegisterLayout {
  readonly registers: readonly RegisterDesc[];
  readonly byName: ReadonlyMap<string, RegisterDesc>;
  /** Where the layout came from: the stub's own description, or vmlens's built-in x86-64 table. */
  readonly origin: 'target-description' | 'built-in';
}

/** Upper bounds on a target description: a hostile stub cannot make us loop or allocate without end. */
export const MAX_REGISTERS = 4096;
const MAX_REGISTER_BITS = 4096;

export function layoutFrom(regs: readonly { name: string; regnum: number; bits: number }[], origin: RegisterLayout['origin']): RegisterLayout {
  const sorted = regs.slice().sort((a, b) => a.regnum - b.regnum);
  const out: RegisterDesc[] = [];
  const byName = new Map<string, RegisterDesc>();
  let offset = 0;
  let expect = 0;
  for (const r of sorted) {
    // Registers after a gap in numbering are not in `g`; they stay reachable by `p`.
    const inG = r.regnum === expect && offset >= 0;
    const desc: RegisterDesc = { name: r.name, regnum: r.regnum, bits: r.bits, offset: inG ? offset : -1 };
    if (inG) {
      offset += Math.ceil(r.bits / 8);
      expect++;
    } else offset = -1;
    out.push(desc);
    if (!byName.has(r.name)) byName.set(r.name, desc);
  }
  return { registers: out, byName, origin };
}

const GPR_NAMES = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'rsp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'];

/** QEMU's x86-64 core layout, for stubs that do not send a target description. */
export const X86_64_BUILTIN: RegisterLayout = (() => {
  const regs: { name: string; bits: number }[] = [];
  for (const n of GPR_NAMES) regs.push({ name: n, bits: 64 });
  regs.push({ name: 'rip', bits: 64 }, { name: 'eflags', bits: 32 });
  for (const n of ['cs', 'ss', 'ds', 'es', 'fs', 'gs']) regs.push({ name: n, bits: 32 });
  for (const n of ['fs_base', 'gs_base', 'k_gs_base', 'cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer']) regs.push({ name: n, bits: 64 });
  for (let i = 0; i < 8; i++) regs.push({ name: `st${i}`, bits: 80 });
  for (const n of ['fctrl', 'fstat', 'ftag', 'fiseg', 'fioff', 'foseg', 'fooff', 'fop']) regs.push({ name: n, bits: 32 });
  for (let i = 0; i < 16; i++) regs.push({ name: `xmm${i}`, bits: 128 });
  regs.push({ name: 'mxcsr', bits: 32 });
  return layoutFrom(regs.map((r, regnum) => ({ ...r, regnum })), 'built-in');
})();

/** Attribute value from one XML start tag. */
function attr(tag: string, name: string): string | undefined {
  const m = new RegExp(`\\s${name}\\s*=\\s*(?:"([^"]*)"|'([^']*)')`).exec(tag);
  return m ? (m[1] ?? m[2]) : undefined;
}

/**
 * Registers and includes of one target-description document. Registers without `regnum` take
 * the number after the previous one (the description format's rule); `firstRegnum` continues the
 * count across included documents.
 */
export function parseTargetXml(xml: string, firstRegnum: number): { regs: { name: string; regnum: number; bits: number }[]; includes: string[]; next: number } {
  const text = xml.replace(/<!--[\s\S]*?(?:-->|$)/g, '');
  const regs: { name: string; regnum: number; bits: number }[] = [];
  const includes: string[] = [];
  let next = firstRegnum;
  for (const m of text.matchAll(/<(reg|xi:include)\b[^>]*>/g)) {
    const tag = m[0];
    if (m[1] === 'xi:include') {
      const href = attr(tag, 'href');
      if (href) includes.push(href);
      continue;
    }
    const name = attr(tag, 'name');
    const bits = Number(attr(tag, 'bitsize'));
    const num = attr(tag, 'regnum');
    const regnum = num !== undefined ? Number(num) : next;
    if (!name || !Number.isInteger(bits) || bits <= 0 || bits > MAX_REGISTER_BITS || !Number.isInteger(regnum) || regnum < 0 || regnum > 0xffff) {
      throw new TargetError(`gdbstub target description has a malformed register: ${tag.slice(0, 120)}`);
    }
    regs.push({ name, regnum, bits });
    next = regnum + 1;
    if (regs.length > MAX_REGISTERS) throw new TargetError(`gdbstub target description lists more than ${MAX_REGISTERS} registers`);
  }
  return { regs, includes, next };
}

/** An x86-64 vCPU's registers as QEMU's gdbstub reports them. Segment fields are selectors. */
export interface X86Registers {
  readonly rax: bigint;
  readonly rbx: bigint;
  readonly rcx: bigint;
  readonly rdx: bigint;
  readonly rsi: bigint;
  readonly rdi: bigint;
  readonly rbp: bigint;
  readonly rsp: bigint;
  readonly r8: bigint;
  readonly r9: bigint;
  readonly r10: bigint;
  readonly r11: bigint;
  readonly r12: bigint;
  readonly r13: bigint;
  readonly r14: bigint;
  readonly r15: bigint;
  readonly rip: bigint;
  readonly eflags: bigint;
  readonly cs: bigint;
  readonly ss: bigint;
  readonly ds: bigint;
  readonly es: bigint;
  readonly fs: bigint;
  readonly gs: bigint;
  readonly fsBase: bigint;
  readonly gsBase: bigint;
  /** IA32_KERNEL_GS_BASE. */
  readonly kernelGsBase: bigint;
  readonly cr0: bigint;
  readonly cr2: bigint;
  readonly cr3: bigint;
  readonly cr4: bigint;
  /** Task priority (CR8, from the local APIC). */
  readonly cr8: bigint;
  readonly efer: bigint;
}

export type X86RegisterName = keyof X86Registers;

/** Record field → the register's name in the target description. */
export const X86_FIELD_TO_GDB: Readonly<Record<X86RegisterName, string>> = {
  rax: 'rax', rbx: 'rbx', rcx: 'rcx', rdx: 'rdx', rsi: 'rsi', rdi: 'rdi', rbp: 'rbp', rsp: 'rsp',
  r8: 'r8', r9: 'r9', r10: 'r10', r11: 'r11', r12: 'r12', r13: 'r13', r14: 'r14', r15: 'r15',
  rip: 'rip', eflags: 'eflags', cs: 'cs', ss: 'ss', ds: 'ds', es: 'es', fs: 'fs', gs: 'gs',
  fsBase: 'fs_base', gsBase: 'gs_base', kernelGsBase: 'k_gs_base',
  cr0: 'cr0', cr2: 'cr2', cr3: 'cr3', cr4: 'cr4', cr8: 'cr8', efer: 'efer',
};

/** Decode a `g` reply (hex) into the x86-64 record. */
export function decodeX86Registers(layout: RegisterLayout, g: Uint8Array): X86Registers {
  const out: Partial<Record<X86RegisterName, bigint>> = {};
  for (const field of Object.keys(X86_FIELD_TO_GDB) as X86RegisterName[]) {
    const gdbName = X86_FIELD_TO_GDB[field];
    const desc = layout.byName.get(gdbName);
    if (!desc) throw new TargetError(`gdbstub target has no register "${gdbName}": not an x86-64 target`);
    const bytes = Math.ceil(desc.bits / 8);
    if (desc.offset < 0 || (desc.offset + bytes) * 2 > g.length) {
      throw new TargetError(`gdbstub 'g' reply is ${g.length / 2} bytes, too short for register ${gdbName}`);
    }
    const v = leValue(g, desc.offset * 2, bytes);
    if (v === undefined) throw new TargetError(`gdbstub 'g' reply is not hex at register ${gdbName}`);
    out[field] = v;
  }
  return out as X86Registers;
}
