import { EM_X86_64, type ElfCoreInfo, type PrStatusNote, type QemuCpuNote } from '../source/elf-core.ts';
import type { HmpCpuRegisters } from './hmp-registers.ts';
import type { VcpuState } from './types.ts';

/**
 * VcpuState from what QEMU tells: HMP `info registers`, and the notes of an ELF dump (QEMU's
 * own note per vCPU, or NT_PRSTATUS where only that exists).
 */

const CR0_PE = 1n;
const CR0_PG = 1n << 31n;
const CR4_PAE = 1n << 5n;
const RFLAGS_VM = 1n << 17n;
/**
 * EFER as a 64-bit Linux kernel sets it (SCE | LME | LMA | NXE). QEMU's note does not carry
 * EFER; a vCPU of an EM_X86_64 dump with paging on is in long mode, and every x86-64 Linux
 * enables SYSCALL and NX.
 */
const EFER_LINUX_LONG_MODE = 0xd01n;

/** CPL is the RPL of CS in protected mode, 3 in virtual-8086 mode, 0 in real mode. */
function cplOf(cr0: bigint, rflags: bigint, csSelector: number): number {
  if (!(cr0 & CR0_PE)) return 0;
  if (rflags & RFLAGS_VM) return 3;
  return csSelector & 3;
}

export function vcpuFromHmp(h: HmpCpuRegisters): VcpuState {
  return {
    index: h.index,
    cr0: h.cr0,
    cr2: h.cr2,
    cr3: h.cr3,
    cr4: h.cr4,
    efer: h.efer,
    rip: h.regs.rip ?? 0n,
    rsp: h.regs.rsp ?? 0n,
    gsBase: h.segments.gs?.base ?? 0n,
    kernelGsBase: 0n,
    idtBase: h.idt.base,
    gdtBase: h.gdt.base,
    cpl: h.cpl,
    regs: h.regs,
  };
}

/**
 * From QEMU's note. `longMode`: the dump's e_machine is EM_X86_64. `efer`: EFER when known
 * from elsewhere (HMP), else reconstructed (see EFER_LINUX_LONG_MODE).
 */
export function vcpuFromQemuNote(index: number, n: QemuCpuNote, longMode: boolean, efer?: bigint): VcpuState {
  const [cr0 = 0n, , cr2 = 0n, cr3 = 0n, cr4 = 0n] = n.cr;
  const rflags = n.regs.rflags ?? 0n;
  const inLongMode = longMode && (cr0 & CR0_PG) !== 0n && (cr4 & CR4_PAE) !== 0n;
  return {
    index,
    cr0,
    cr2,
    cr3,
    cr4,
    efer: efer ?? (inLongMode ? EFER_LINUX_LONG_MODE : 0n),
    rip: n.regs.rip ?? 0n,
    rsp: n.regs.rsp ?? 0n,
    gsBase: n.gs.base,
    kernelGsBase: n.kernelGsBase ?? 0n,
    idtBase: n.idt.base,
    gdtBase: n.gdt.base,
    cpl: cplOf(cr0, rflags, n.cs.selector),
    regs: n.regs,
  };
}

/** From NT_PRSTATUS alone: general registers and GS base; control registers are unknown (0). */
export function vcpuFromPrStatus(index: number, p: PrStatusNote): VcpuState {
  const r = p.regs;
  const regs: Record<string, bigint> = {};
  for (const [k, v] of Object.entries(r)) {
    // i386 names become the r-names the rest of vmlens uses.
    const name = k.startsWith('e') && k.length === 3 ? 'r' + k.slice(1) : k === 'eflags' ? 'rflags' : k;
    regs[name] = v;
  }
  return {
    index,
    cr0: 0n,
    cr2: 0n,
    cr3: 0n,
    cr4: 0n,
    efer: 0n,
    rip: regs.rip ?? 0n,
    rsp: regs.rsp ?? 0n,
    gsBase: regs.gs_base ?? 0n,
    kernelGsBase: 0n,
    idtBase: 0n,
    gdtBase: 0n,
    cpl: Number((regs.cs ?? 0n) & 3n),
    regs,
  };
}

/** The vCPUs of an ELF core: QEMU's notes when present, NT_PRSTATUS otherwise. */
export function vcpusFromCore(info: ElfCoreInfo): VcpuState[] {
  const longMode = info.machine === EM_X86_64;
  if (info.notes.qemuCpus.length > 0) return info.notes.qemuCpus.map((n, i) => vcpuFromQemuNote(i, n, longMode));
  return info.notes.prstatus.map((p, i) => vcpuFromPrStatus(i, p));
}

/**
 * A vCPU from its note, with EFER from HMP (the note has none). The note is one snapshot with
 * full 64-bit values (HMP prints 32-bit ones outside 64-bit code) and IA32_KERNEL_GS_BASE,
 * which HMP does not print; EFER does not change once the kernel has booted, so taking it from
 * a slightly earlier HMP read does not mix two states.
 */
export function mergeHmpAndNote(h: HmpCpuRegisters, n: QemuCpuNote | undefined, longMode: boolean): VcpuState {
  return n ? vcpuFromQemuNote(h.index, n, longMode, h.efer) : vcpuFromHmp(h);
}
