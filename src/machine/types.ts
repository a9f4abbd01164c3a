import type { PhysicalMemory } from '../source/types.ts';

/**
 * The second layer: a guest machine = its physical memory + its vCPUs (+ pause/resume for live
 * ones). Register values are bigint: they are read rarely, and kernel addresses exceed 2^53.
 */
export interface VcpuState {
  readonly index: number;
  readonly cr0: bigint;
  readonly cr2: bigint;
  readonly cr3: bigint;
  readonly cr4: bigint;
  readonly efer: bigint;
  readonly rip: bigint;
  readonly rsp: bigint;
  /** GS segment base (per-CPU area when in kernel mode) and IA32_KERNEL_GS_BASE. */
  readonly gsBase: bigint;
  readonly kernelGsBase: bigint;
  readonly idtBase: bigint;
  readonly gdtBase: bigint;
  /** Current privilege level from CS. */
  readonly cpl: number;
  /** All general registers by lower-case name (rax … r15, rflags), where the source has them. */
  readonly regs: Readonly<Record<string, bigint>>;
}

export type PagingMode = 'none' | 'legacy' | 'pae' | '4-level' | '5-level';

/** Paging mode from control registers, as the CPU decides it. */
export function pagingMode(v: Pick<VcpuState, 'cr0' | 'cr4' | 'efer'>): PagingMode {
  const pg = (v.cr0 >> 31n) & 1n;
  if (!pg) return 'none';
  const lma = (v.efer >> 10n) & 1n;
  const pae = (v.cr4 >> 5n) & 1n;
  if (lma) return (v.cr4 >> 12n) & 1n ? '5-level' : '4-level';
  return pae ? 'pae' : 'legacy';
}

/** Page-table root (physical) from CR3: bits 12..51; PCID / flag bits below are masked off. */
export function cr3Root(cr3: bigint): number {
  return Number(cr3 & 0x000f_ffff_ffff_f000n);
}

export interface Machine {
  readonly memory: PhysicalMemory;
  /** True for a running guest (its memory changes under us); false for dumps. */
  readonly live: boolean;
  /** Human name for prompts and `info`: lab name, socket path or dump file. */
  readonly name: string;
  /** vCPU state. For live guests this is a fresh read (QMP), for dumps the saved notes. */
  vcpus(): Promise<VcpuState[]>;
  /** Stop all vCPUs (QMP stop). Absent for dumps. */
  pause?(): Promise<void>;
  resume?(): Promise<void>;
  /** Whether the vCPUs are currently stopped (dumps: always true). */
  isPaused(): Promise<boolean>;
  /**
   * Have the hypervisor write its own ELF core of the guest (RAM and vCPU state) to `path`.
   * Absent where there is no hypervisor to ask (dumps).
   */
  writeElfCore?(path: string, progress?: (done: number, total: number) => void): Promise<void>;
  /**
   * Let go of control channels (a QMP monitor QEMU serves to one client at a time) between
   * commands; they reconnect when next needed. Absent where there is nothing to let go.
   */
  releaseMonitor?(): Promise<boolean>;
  close(): Promise<void>;
}
