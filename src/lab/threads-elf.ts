/**
 * A tiny static x86-64 Linux executable, generated here byte by byte, that gives the lab guest
 * a multi-threaded process (busybox alone has none): the main thread starts THREADS threads
 * with clone(CLONE_THREAD…), each names itself lab-thread-N with prctl(PR_SET_NAME), and all
 * of them then sleep in pause() forever. No libc, no compiler needed on the host.
 */

/** Threads besides the main one. */
export const THREADS = 3;
export const THREAD_NAME_PREFIX = 'lab-thread-';

const BASE = 0x400000;
const PAGE = 0x1000;
const EHDR_SIZE = 64;
const PHDR_SIZE = 56;
const NAME_SLOT = 16; // TASK_COMM_LEN

const SYS_PAUSE = 34;
const SYS_CLONE = 56;
const SYS_PRCTL = 157;
const PR_SET_NAME = 15;
// CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
const CLONE_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000;

/** A minimal assembler: bytes plus 8-bit relative jumps resolved once labels are known. */
class Code {
  readonly bytes: number[] = [];
  private readonly labels = new Map<string, number>();
  private readonly fixups: { at: number; label: string }[] = [];

  emit(...b: number[]): this {
    this.bytes.push(...b);
    return this;
  }
  imm32(v: number): this {
    return this.emit(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  }
  label(name: string): this {
    this.labels.set(name, this.bytes.length);
    return this;
  }
  /** A short jump opcode (EB jmp, 74 jz, 72 jb) to a label. */
  jump(opcode: number, label: string): this {
    this.emit(opcode, 0);
    this.fixups.push({ at: this.bytes.length - 1, label });
    return this;
  }
  resolve(): number[] {
    for (const f of this.fixups) {
      const target = this.labels.get(f.label);
      if (target === undefined) throw new Error(`threads-elf: no label ${f.label}`);
      const rel = target - (f.at + 1);
      if (rel < -128 || rel > 127) throw new Error(`threads-elf: jump to ${f.label} out of range`);
      this.bytes[f.at] = rel & 0xff;
    }
    return this.bytes;
  }
}

export function threadsElf(): Uint8Array {
  const codeOffset = EHDR_SIZE + PHDR_SIZE;
  const stacks = BASE + PAGE; // one page per thread, in the zero-filled part of the segment
  const memSize = PAGE + THREADS * PAGE;

  const code = (namesAddr: number) =>
    new Code()
      .emit(0x41, 0xbc).imm32(1) //                 mov r12d, 1          ; thread number
      .label('spawn')
      .emit(0xb8).imm32(SYS_CLONE) //                mov eax, SYS_clone
      .emit(0xbf).imm32(CLONE_THREAD_FLAGS) //       mov edi, flags
      .emit(0x4c, 0x89, 0xe6) //                     mov rsi, r12
      .emit(0x48, 0xc1, 0xe6, 0x0c) //               shl rsi, 12
      .emit(0x48, 0x81, 0xc6).imm32(stacks) //       add rsi, stacks      ; top of this thread's page
      .emit(0x31, 0xd2) //                           xor edx, edx
      .emit(0x45, 0x31, 0xd2) //                     xor r10d, r10d
      .emit(0x45, 0x31, 0xc0) //                     xor r8d, r8d
      .emit(0x0f, 0x05) //                           syscall
      .emit(0x85, 0xc0) //                           test eax, eax
      .jump(0x74, 'child') //                        jz child
      .emit(0x41, 0xff, 0xc4) //                     inc r12d
      .emit(0x41, 0x83, 0xfc, THREADS + 1) //        cmp r12d, THREADS+1
      .jump(0x72, 'spawn') //                        jb spawn
      .label('idle')
      .emit(0xb8).imm32(SYS_PAUSE) //                mov eax, SYS_pause
      .emit(0x0f, 0x05) //                           syscall
      .jump(0xeb, 'idle') //                         jmp idle
      .label('child') //                             ; r12 survives clone
      .emit(0xb8).imm32(SYS_PRCTL) //                mov eax, SYS_prctl
      .emit(0xbf).imm32(PR_SET_NAME) //              mov edi, PR_SET_NAME
      .emit(0x4c, 0x89, 0xe6) //                     mov rsi, r12
      .emit(0x48, 0xff, 0xce) //                     dec rsi
      .emit(0x48, 0xc1, 0xe6, 0x04) //               shl rsi, 4           ; * NAME_SLOT
      .emit(0x48, 0x81, 0xc6).imm32(namesAddr) //    add rsi, names
      .emit(0x0f, 0x05) //                           syscall
      .jump(0xeb, 'idle') //                         jmp idle
      .resolve();

  // The code's length does not depend on the names' address, so assemble once to measure.
  const codeLength = code(0).length;
  const namesOffset = codeOffset + codeLength;
  const machineCode = code(BASE + namesOffset);
  const names = new Uint8Array(THREADS * NAME_SLOT);
  for (let i = 0; i < THREADS; i++) {
    const name = `${THREAD_NAME_PREFIX}${i + 1}`;
    for (let j = 0; j < name.length && j < NAME_SLOT - 1; j++) names[i * NAME_SLOT + j] = name.charCodeAt(j);
  }
  const fileSize = namesOffset + names.length;

  const out = new Uint8Array(fileSize);
  const dv = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0], 0); // ELF64, little-endian, version 1, SysV ABI
  dv.setUint16(16, 2, true); // ET_EXEC
  dv.setUint16(18, 0x3e, true); // EM_X86_64
  dv.setUint32(20, 1, true);
  dv.setBigUint64(24, BigInt(BASE + codeOffset), true); // e_entry
  dv.setBigUint64(32, BigInt(EHDR_SIZE), true); // e_phoff
  dv.setUint16(52, EHDR_SIZE, true);
  dv.setUint16(54, PHDR_SIZE, true);
  dv.setUint16(56, 1, true); // e_phnum
  const ph = EHDR_SIZE;
  dv.setUint32(ph, 1, true); // PT_LOAD
  dv.setUint32(ph + 4, 7, true); // R W X
  dv.setBigUint64(ph + 8, 0n, true); // p_offset
  dv.setBigUint64(ph + 16, BigInt(BASE), true); // p_vaddr
  dv.setBigUint64(ph + 24, BigInt(BASE), true); // p_paddr
  dv.setBigUint64(ph + 32, BigInt(fileSize), true);
  dv.setBigUint64(ph + 40, BigInt(memSize), true);
  dv.setBigUint64(ph + 48, BigInt(PAGE), true);
  out.set(machineCode, codeOffset);
  out.set(names, namesOffset);
  return out;
}
