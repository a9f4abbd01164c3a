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

const BASE = 0x400000;
const EHDR = 64;
const PHDR = 56;
/** Records start on this page of the segment (the zero-filled part). */
const RECORDS_AT = BASE + 0x1000;
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

/** A tiny assembler: bytes, 32-bit immediates, short jumps to labels. */
class Asm {
  readonly out: number[] = [];
  private readonly labels = new Map<string, number>();
  private readonly jumps: { at: number; label: string }[] = [];
  b(...bytes: number[]): this {
    this.out.push(...bytes);
    return this;
  }
  i32(v: number): this {
    return this.b(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  }
  label(name: string): this {
    this.labels.set(name, this.out.length);
    return this;
  }
  /** A jcc/jmp rel8 (opcode 0x74 jz, 0x75 jnz, 0xeb jmp) to a label. */
  jump(opcode: number, label: string): this {
    this.out.push(opcode, 0);
    this.jumps.push({ at: this.out.length - 1, label });
    return this;
  }
  /** mov eax, nr; syscall */
  syscall(nr: number): this {
    return this.b(0xb8).i32(nr).b(0x0f, 0x05);
  }
  bytes(): number[] {
    for (const j of this.jumps) {
      const target = this.labels.get(j.label);
      if (target === undefined) throw new Error(`blip: no label ${j.label}`);
      const rel = target - (j.at + 1);
      if (rel < -128 || rel > 127) throw new Error(`blip: jump to ${j.label} out of range`);
      this.out[j.at] = rel & 0xff;
    }
    return this.out;
  }
}

/** The program for `plan`, as the bytes of an executable file. */
export function blipElf(plan: BlipPlan): Uint8Array {
  const { count, sleepNs, gapNs } = plan;
  if (!Number.isInteger(count) || count < 1 || count > MAX_CHILDREN) throw new RangeError(`blip: count ${count} not in 1…${MAX_CHILDREN}`);
  for (const ns of [sleepNs, gapNs]) {
    if (!Number.isInteger(ns) || ns < 0 || ns >= 1e9) throw new RangeError(`blip: ${ns} ns is not in 0…999999999`);
  }
  const codeAt = EHDR + PHDR;
  // Data after the code: two struct timespec { tv_sec = 0, tv_nsec }.
  const program = (sleepAddr: number, gapAddr: number): number[] =>
    new Asm()
      .b(0x41, 0xbd).i32(RECORDS_AT) //      mov r13d, RECORDS_AT   ; record cursor
      .b(0x41, 0xbc).i32(count) //           mov r12d, count
      .label('next')
      .b(0xbf).i32(CLOCK_MONOTONIC) //       mov edi, CLOCK_MONOTONIC
      .b(0x49, 0x8d, 0x75, 0x08) //          lea rsi, [r13+8]       ; t0
      .syscall(SYS_CLOCK_GETTIME)
      .syscall(SYS_FORK)
      .b(0x85, 0xc0) //                      test eax, eax
      .jump(0x74, 'child') //                jz child
      .b(0x49, 0x89, 0x45, 0x00) //          mov [r13], rax         ; pid
      .b(0x89, 0xc7) //                      mov edi, eax
      .b(0x31, 0xf6) //                      xor esi, esi           ; no status
      .b(0x31, 0xd2) //                      xor edx, edx           ; options 0
      .b(0x45, 0x31, 0xd2) //                xor r10d, r10d         ; no rusage
      .syscall(SYS_WAIT4)
      .b(0xbf).i32(CLOCK_MONOTONIC) //       mov edi, CLOCK_MONOTONIC
      .b(0x49, 0x8d, 0x75, 0x18) //          lea rsi, [r13+24]      ; t1
      .syscall(SYS_CLOCK_GETTIME)
      .b(0x49, 0x83, 0xc5, RECORD_BYTES) //  add r13, RECORD_BYTES
      .b(0xbf).i32(gapAddr) //               mov edi, &gap
      .b(0x31, 0xf6) //                      xor esi, esi
      .syscall(SYS_NANOSLEEP)
      .b(0x41, 0xff, 0xcc) //                dec r12d
      .jump(0x75, 'next') //                 jnz next
      .b(0xbf).i32(1) //                     mov edi, 1             ; stdout
      .b(0xbe).i32(RECORDS_AT) //            mov esi, RECORDS_AT
      .b(0xba).i32(count * RECORD_BYTES) //  mov edx, count * RECORD_BYTES
      .syscall(SYS_WRITE)
      .b(0x31, 0xff) //                      xor edi, edi
      .syscall(SYS_EXIT_GROUP)
      .label('child')
      .b(0xbf).i32(sleepAddr) //             mov edi, &sleep
      .b(0x31, 0xf6) //                      xor esi, esi
      .syscall(SYS_NANOSLEEP)
      .b(0x31, 0xff) //                      xor edi, edi
      .syscall(SYS_EXIT_GROUP)
      .bytes();
  const codeLength = program(0, 0).length;
  const dataAt = codeAt + codeLength + ((8 - ((codeAt + codeLength) % 8)) % 8);
  const code = program(BASE + dataAt, BASE + dataAt + 16);
  const fileSize = dataAt + 32;
  const memSize = RECORDS_AT - BASE + count * RECORD_BYTES;

  const f = new Uint8Array(fileSize);
  const dv = new DataView(f.buffer);
  f.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]); // ELF64, little-endian, version 1, System V
  dv.setUint16(16, 2, true); // ET_EXEC
  dv.setUint16(18, 0x3e, true); // EM_X86_64
  dv.setUint32(20, 1, true);
  dv.setBigUint64(24, BigInt(BASE + codeAt), true); // e_entry
  dv.setBigUint64(32, BigInt(EHDR), true); // e_phoff
  dv.setUint16(52, EHDR, true);
  dv.setUint16(54, PHDR, true);
  dv.setUint16(56, 1, true);
  dv.setUint32(EHDR, 1, true); // PT_LOAD
  dv.setUint32(EHDR + 4, 7, true); // R W X
  dv.setBigUint64(EHDR + 16, BigInt(BASE), true); // p_vaddr
  dv.setBigUint64(EHDR + 24, BigInt(BASE), true); // p_paddr
  dv.setBigUint64(EHDR + 32, BigInt(fileSize), true);
  dv.setBigUint64(EHDR + 40, BigInt(memSize), true);
  dv.setBigUint64(EHDR + 48, 0x1000n, true);
  f.set(code, codeAt);
  dv.setBigUint64(dataAt + 8, BigInt(sleepNs), true);
  dv.setBigUint64(dataAt + 24, BigInt(gapNs), true);
  return f;
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
