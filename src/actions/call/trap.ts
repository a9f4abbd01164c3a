/**
 * The return trap: where a function called from outside returns to. It must be a kernel text
 * address that nothing ever executes, so that a breakpoint there is hit by our return alone and
 * never has to be lifted while the call runs (a call that sleeps may return at any moment, on
 * any vCPU).
 *
 * Such bytes exist in every kernel built with straight-line-speculation or return-thunk
 * mitigations: a `ret` is followed by `int3` padding (`c3 cc`, and `c3 cc cc cc cc` where a
 * 5-byte return-thunk jump was patched back into a `ret`). The padding after a `ret` is never
 * reached. Were it ever run — only if vmlens gave up waiting for a call — the CPU would meet an
 * int3 and the kernel would oops the task, rather than execute stray code.
 */
import type { Kernel } from '../../kernel/kernel.ts';
import { GuestDataError } from '../../util/errors.ts';

const RET = 0xc3;
const INT3 = 0xcc;

/**
 * Offset of a dead int3 in `code`: the first int3 of `c3 cc cc cc cc` (a patched return), else
 * of `c3 cc` (SLS padding); -1 when there is none. `isStart(offset)` excludes offsets where a
 * symbol starts (an int3 there would be a probe on a function's first instruction).
 */
export function deadInt3Offset(code: Uint8Array, isStart: (offset: number) => boolean = () => false): number {
  let fallback = -1;
  for (let i = 0; i + 1 < code.length; i++) {
    if (code[i] !== RET || code[i + 1] !== INT3 || isStart(i + 1)) continue;
    if (i + 4 < code.length && code[i + 2] === INT3 && code[i + 3] === INT3 && code[i + 4] === INT3) return i + 1;
    if (fallback < 0) fallback = i + 1;
  }
  return fallback;
}

/** Small, always-present functions whose ends are looked at first. */
const CANDIDATES = ['strlen', 'strnlen', 'kill_pid', 'put_pid', 'find_get_pid', '__x86_return_thunk', 'memchr', 'strcmp'];
/** Bytes read per function, and in all when falling back to a scan of the text. */
const FUNCTION_WINDOW = 4096;
const TEXT_SCAN_BYTES = 1 << 20;

/** A dead int3 in the kernel's text for calls to return to. */
export function findReturnTrap(k: Kernel): bigint {
  const isSymbolStart = (va: bigint): boolean => {
    const s = k.symbols.symbolize(va);
    return s !== undefined && s.offset === 0n;
  };
  for (const name of CANDIDATES) {
    const at = k.symbols.lookup(name);
    if (at === undefined) continue;
    const trap = searchAt(k, at, FUNCTION_WINDOW, isSymbolStart);
    if (trap !== undefined) return trap;
  }
  const text = k.symbols.lookup('_stext') ?? k.layout.textBase;
  for (let off = 0; off < TEXT_SCAN_BYTES; off += FUNCTION_WINDOW) {
    const trap = searchAt(k, text + BigInt(off), FUNCTION_WINDOW, isSymbolStart);
    if (trap !== undefined) return trap;
  }
  throw new GuestDataError('found no dead int3 after a ret in the kernel text to return calls to (a kernel without SLS or return-thunk padding)');
}

function searchAt(k: Kernel, start: bigint, len: number, isSymbolStart: (va: bigint) => boolean): bigint | undefined {
  let code: Uint8Array;
  try {
    code = k.space.readBytes(start, len);
  } catch {
    return undefined;
  }
  const off = deadInt3Offset(code, (i) => isSymbolStart(start + BigInt(i)));
  return off < 0 ? undefined : start + BigInt(off);
}
