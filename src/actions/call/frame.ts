/**
 * The stack frame of a call from outside, System V AMD64 ABI: integer arguments in rdi, rsi,
 * rdx, rcx, r8, r9, the rest on the stack above the return address; at the callee's first
 * instruction (rsp + 8) is 16-byte aligned; al holds the number of vector registers a variadic
 * callee reads (none).
 *
 * Everything goes on the interrupted task's own kernel stack, below its stack pointer: the kernel
 * is built without a red zone, so nothing there is live. A gap is left below the interrupted
 * rsp all the same, and bytes arguments (strings) sit between that gap and the frame.
 */
import type { CallArg } from './args.ts';

export const ARG_REGISTERS = ['rdi', 'rsi', 'rdx', 'rcx', 'r8', 'r9'] as const;
export type ArgRegister = (typeof ARG_REGISTERS)[number];

/** Bytes left untouched below the interrupted stack pointer. */
export const STACK_GAP = 128n;

export interface FrameRequest {
  /** Stack pointer of the interrupted task. */
  readonly rsp: bigint;
  readonly args: readonly CallArg[];
  /** Where the callee returns to (the trap). */
  readonly returnAddress: bigint;
}

export interface MemoryWrite {
  readonly va: bigint;
  readonly bytes: Uint8Array;
}

export interface Frame {
  /** rsp at the callee's first instruction: the return address is at [rsp]. */
  readonly rsp: bigint;
  /** Argument registers, and rax = 0. */
  readonly registers: Readonly<Record<ArgRegister | 'rax', bigint>>;
  /** What to write before the call, lowest address first. */
  readonly writes: readonly MemoryWrite[];
  /** Where each bytes argument was placed (undefined for register values). */
  readonly placed: readonly (bigint | undefined)[];
  /** The lowest byte written: the stack below it is the callee's. */
  readonly low: bigint;
}

const alignDown16 = (v: bigint): bigint => v & ~0xfn;

function u64le(values: readonly bigint[]): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => view.setBigUint64(i * 8, BigInt.asUintN(64, v), true));
  return out;
}

export function layoutFrame(req: FrameRequest): Frame {
  let top = req.rsp - STACK_GAP;
  const writes: MemoryWrite[] = [];
  const placed: (bigint | undefined)[] = [];
  const values: bigint[] = [];
  for (const a of req.args) {
    if (a.kind === 'value') {
      placed.push(undefined);
      values.push(BigInt.asUintN(64, a.value));
      continue;
    }
    top = alignDown16(top - BigInt(a.bytes.length));
    writes.push({ va: top, bytes: a.bytes });
    placed.push(top);
    values.push(top);
  }
  const onStack = values.slice(ARG_REGISTERS.length);
  const base = alignDown16(top - BigInt(onStack.length * 8));
  const rsp = base - 8n;
  writes.push({ va: rsp, bytes: u64le([req.returnAddress, ...onStack]) });
  writes.sort((a, b) => (a.va < b.va ? -1 : a.va > b.va ? 1 : 0));
  const registers = { rax: 0n } as Record<ArgRegister | 'rax', bigint>;
  ARG_REGISTERS.forEach((r, i) => {
    registers[r] = values[i] ?? 0n;
  });
  return { rsp, registers, writes, placed, low: rsp };
}
