/**
 * A tiny static x86-64 Linux executable, generated here byte by byte, that gives the lab guest
 * a multi-threaded process (busybox alone has none): the main thread starts THREADS threads
 * with clone(CLONE_THREAD…), each names itself lab-thread-N with prctl(PR_SET_NAME), and all
 * of them then sleep in pause() forever. No libc, no compiler needed on the host.
 */
import { TINY_ELF_BASE, TINY_ELF_BODY_OFFSET, TinyAsm, tinyElf } from './tiny-elf.ts';

/** Threads besides the main one. */
export const THREADS = 3;
export const THREAD_NAME_PREFIX = 'lab-thread-';

const PAGE = 0x1000;
const NAME_SLOT = 16; // TASK_COMM_LEN

const SYS_PAUSE = 34;
const SYS_CLONE = 56;
const SYS_PRCTL = 157;
const PR_SET_NAME = 15;
// CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
const CLONE_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000;

export function threadsElf(): Uint8Array {
  const stacks = TINY_ELF_BASE + PAGE; // one page per thread, in the zero-filled part of the segment
  const memSize = PAGE + THREADS * PAGE;

  const code = (namesAddr: number) =>
    new TinyAsm('threads-elf')
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
      .assemble();

  // The code's length does not depend on the names' address, so assemble once to measure.
  const codeLength = code(0).length;
  const namesAddr = TINY_ELF_BASE + TINY_ELF_BODY_OFFSET + codeLength;
  const body = new Uint8Array(codeLength + THREADS * NAME_SLOT);
  body.set(code(namesAddr), 0);
  for (let i = 0; i < THREADS; i++) {
    const name = `${THREAD_NAME_PREFIX}${i + 1}`;
    for (let j = 0; j < name.length && j < NAME_SLOT - 1; j++) body[codeLength + i * NAME_SLOT + j] = name.charCodeAt(j);
  }
  return tinyElf(body, memSize);
}
