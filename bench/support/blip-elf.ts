/**
 * "blip": a tiny static x86-64 Linux program, assembled here byte by byte, that makes short-lived
 * processes of a known lifetime and measures them from inside the guest.
 *
 * It forks COUNT children one after another. Each child sleeps SLEEP_NS (nanosleep) and exits;
 * the parent reads CLOCK_MONOTONIC just before fork() and just after wait4() has reaped the
 * child, so [t0, t1] covers the whole time the child sat on the task list (from copy_process
 * until release_task), and sleeps GAP_NS before the next fork. At the end it writes one 40-byte
 * record per child to stdout — pid, t0 (sec, nsec), t1 (sec, nsec), all u64 little-endian — and
 * exits. The children keep the parent's comm, which is the name of the file it was run as.
 */
import { TINY_ELF_BASE, TINY_ELF_BODY_OFFSET, TinyAsm, tinyElf } from '../../src/lab/tiny-elf.ts';

/** Records start on this page of the segment (the zero-filled part). */
const RECORDS_AT = TINY_ELF_BASE + 0x1000;
export const RECORD_BYTES = 40;
export const MAX_CHILDREN = 100_000;

const SYS_WRITE = 1;
const SYS_NANOSLEEP = 35;
const SYS_FORK = 57;
const SYS_WAIT4 = 61;
const SYS_CLOCK_GETTIME = 228;
const SYS_EXIT_GROUP = 231;
const CLOCK_MONOTONIC = 1;

export interface BlipPlan {
  /** Children to fork, one after another. */
  readonly count: number;
  /** How long each child sleeps before exiting, nanoseconds (< 1 s). */
  readonly sleepNs: number;
  /** Pause between one child's reaping and the next fork, nanoseconds (< 1 s). */
  readonly gapNs: number;
}

export interface BlipRecord {
  readonly pid: number;
  /** Guest CLOCK_MONOTONIC before fork and after the reap, nanoseconds. */
  readonly forkNs: number;
  readonly reapedNs: number;
  /** reapedNs − forkNs: how long the child could be seen at most. */
  readonly lifetimeNs: number;
}

/** The program for `plan`, as the bytes of an executable file. */
export function blipElf(plan: BlipPlan): Uint8Array {
  const { count, sleepNs, gapNs } = plan;
  if (!Number.isInteger(count) || count < 1 || count > MAX_CHILDREN) throw new RangeError(`blip: count ${count} not in 1…${MAX_CHILDREN}`);
  for (const ns of [sleepNs, gapNs]) {
    if (!Number.isInteger(ns) || ns < 0 || ns >= 1e9) throw new RangeError(`blip: ${ns} ns is not in 0…999999999`);
  }
  // Data after the code: two struct timespec { tv_sec = 0, tv_nsec }.
  const program = (sleepAddr: number, gapAddr: number): number[] =>
    new TinyAsm('blip')
      .emit(0x41, 0xbd).imm32(RECORDS_AT) //      mov r13d, RECORDS_AT   ; record cursor
      .emit(0x41, 0xbc).imm32(count) //           mov r12d, count
      .label('next')
      .emit(0xbf).imm32(CLOCK_MONOTONIC) //       mov edi, CLOCK_MONOTONIC
      .emit(0x49, 0x8d, 0x75, 0x08) //            lea rsi, [r13+8]       ; t0
      .syscall(SYS_CLOCK_GETTIME)
      .syscall(SYS_FORK)
      .emit(0x85, 0xc0) //                        test eax, eax
      .jump(0x74, 'child') //                     jz child
      .emit(0x49, 0x89, 0x45, 0x00) //            mov [r13], rax         ; pid
      .emit(0x89, 0xc7) //                        mov edi, eax
      .emit(0x31, 0xf6) //                        xor esi, esi           ; no status
      .emit(0x31, 0xd2) //                        xor edx, edx           ; options 0
      .emit(0x45, 0x31, 0xd2) //                  xor r10d, r10d         ; no rusage
      .syscall(SYS_WAIT4)
      .emit(0xbf).imm32(CLOCK_MONOTONIC) //       mov edi, CLOCK_MONOTONIC
      .emit(0x49, 0x8d, 0x75, 0x18) //            lea rsi, [r13+24]      ; t1
      .syscall(SYS_CLOCK_GETTIME)
      .emit(0x49, 0x83, 0xc5, RECORD_BYTES) //    add r13, RECORD_BYTES
      .emit(0xbf).imm32(gapAddr) //               mov edi, &gap
      .emit(0x31, 0xf6) //                        xor esi, esi
      .syscall(SYS_NANOSLEEP)
      .emit(0x41, 0xff, 0xcc) //                  dec r12d
      .jump(0x75, 'next') //                      jnz next
      .emit(0xbf).imm32(1) //                     mov edi, 1             ; stdout
      .emit(0xbe).imm32(RECORDS_AT) //            mov esi, RECORDS_AT
      .emit(0xba).imm32(count * RECORD_BYTES) //  mov edx, count * RECORD_BYTES
      .syscall(SYS_WRITE)
      .emit(0x31, 0xff) //                        xor edi, edi
      .syscall(SYS_EXIT_GROUP)
      .label('child')
      .emit(0xbf).imm32(sleepAddr) //             mov edi, &sleep
      .emit(0x31, 0xf6) //                        xor esi, esi
      .syscall(SYS_NANOSLEEP)
      .emit(0x31, 0xff) //                        xor edi, edi
      .syscall(SYS_EXIT_GROUP)
      .assemble();
  const codeLength = program(0, 0).length;
  // The data starts 8-byte aligned in the file (and so in memory).
  const dataAt = codeLength + ((8 - ((TINY_ELF_BODY_OFFSET + codeLength) % 8)) % 8);
  const dataAddr = TINY_ELF_BASE + TINY_ELF_BODY_OFFSET + dataAt;
  const body = new Uint8Array(dataAt + 32);
  body.set(program(dataAddr, dataAddr + 16), 0);
  const dv = new DataView(body.buffer);
  dv.setBigUint64(dataAt + 8, BigInt(sleepNs), true);
  dv.setBigUint64(dataAt + 24, BigInt(gapNs), true);
  return tinyElf(body, RECORDS_AT - TINY_ELF_BASE + count * RECORD_BYTES);
}

/** The records blip wrote, from `od -An -v -tx1` output of its stdout. */
export function parseBlipOutput(hexDump: string): BlipRecord[] {
  const bytes = Uint8Array.from(hexDump.split(/\s+/).filter((t) => /^[0-9a-f]{2}$/i.test(t)), (t) => parseInt(t, 16));
  const dv = new DataView(bytes.buffer);
  const out: BlipRecord[] = [];
  for (let at = 0; at + RECORD_BYTES <= bytes.length; at += RECORD_BYTES) {
    const u = (o: number) => Number(dv.getBigUint64(at + o, true));
    const forkNs = u(8) * 1e9 + u(16);
    const reapedNs = u(24) * 1e9 + u(32);
    out.push({ pid: u(0), forkNs, reapedNs, lifetimeNs: reapedNs - forkNs });
  }
  return out;
}

/** A shell command that writes `bytes` to `path` (octal escapes through printf) and makes it executable. */
export function installCommand(bytes: Uint8Array, path: string): string {
  let esc = '';
  for (const b of bytes) esc += `\\${b.toString(8).padStart(3, '0')}`;
  return `printf '${esc}' > ${path} && chmod 755 ${path}`;
}
