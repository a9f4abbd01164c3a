/**
 * Hostile input: thousands of corrupted variants of a valid blob. Each must either be rejected
 * with a GuestDataError or, when it still parses, answer every question with a result or a
 * VmlensError — never another exception, never a hang.
 */
import { describe, expect, it } from 'vitest';
import { Btf, formatLayout, structLayout } from '../../../src/kernel/btf/index.ts';
import { GuestDataError, isVmlensError } from '../../../src/util/errors.ts';
import { buildMini } from './mini.ts';

/** mulberry32: a small deterministic PRNG, so a failure reproduces. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Run `f`; a VmlensError is an acceptable answer to corrupt data, anything else is a bug. */
function tolerate(f: () => unknown): void {
  try {
    f();
  } catch (e) {
    if (!isVmlensError(e)) throw e;
  }
}

function exercise(btf: Btf): void {
  for (let id = 0; id < btf.typeCount; id++) {
    tolerate(() => btf.typeById(id));
    tolerate(() => btf.typeName(id));
    tolerate(() => btf.resolve(id));
    tolerate(() => btf.sizeof(id));
    const kind = btf.kindOf(id);
    if (kind === 'struct' || kind === 'union') {
      tolerate(() => btf.members(id));
      tolerate(() => btf.member(id, 'pid'));
      tolerate(() => formatLayout(structLayout(btf, id)));
    }
  }
  for (const name of ['task_struct', 'struct list_head', 'pid_t', 'twin', 'cred']) {
    tolerate(() => btf.findType(name));
    tolerate(() => btf.memberOffset(name, 'tasks.prev'));
  }
  tolerate(() => btf.findFunc('vfs_read'));
  tolerate(() => btf.findFuncs('dup_helper'));
  tolerate(() => btf.findVar('runqueues'));
  tolerate(() => btf.enumValue(null, 'TASK_COMM_LEN'));
  tolerate(() => btf.enumValue('pid_type', 'PIDTYPE_PID'));
}

describe('corrupted blobs', () => {
  const { blob } = buildMini();
  const header = 24;
  const typeLen = new DataView(blob.buffer).getUint32(12, true);
  const typeCount = Btf.parse(blob).typeCount;

  it('random mutations are rejected cleanly or answered cleanly', () => {
    const random = rng(0x5eed);
    let parsed = 0;
    let rejected = 0;
    for (let round = 0; round < 3000; round++) {
      const b = blob.slice();
      const v = new DataView(b.buffer);
      const edits = 1 + Math.floor(random() * 4);
      for (let e = 0; e < edits; e++) {
        const r = random();
        if (r < 0.4) {
          // A random byte anywhere.
          b[Math.floor(random() * b.length)] = Math.floor(random() * 256);
        } else if (r < 0.8) {
          // A type-section word set to a plausible type id: makes loops and cross-links.
          const word = Math.floor(random() * (typeLen / 4));
          v.setUint32(header + word * 4, Math.floor(random() * (typeCount + 2)), true);
        } else if (r < 0.9) {
          // A kind/vlen word rewritten.
          const word = Math.floor(random() * (typeLen / 4));
          v.setUint32(header + word * 4, ((Math.floor(random() * 21) << 24) | Math.floor(random() * 8)) >>> 0, true);
        } else {
          // A header field.
          v.setUint32(4 + 4 * Math.floor(random() * 5), Math.floor(random() * 2 * b.length), true);
        }
      }
      let btf: Btf;
      try {
        btf = Btf.parse(b);
      } catch (e) {
        expect(e).toBeInstanceOf(GuestDataError);
        rejected++;
        continue;
      }
      parsed++;
      exercise(btf);
    }
    // Both paths must have been taken for the test to mean anything.
    expect(parsed).toBeGreaterThan(300);
    expect(rejected).toBeGreaterThan(300);
  }, 60_000);

  it('every truncation is rejected cleanly or parses', () => {
    for (let len = 0; len < blob.length; len++) {
      try {
        exercise(Btf.parse(blob.subarray(0, len)));
      } catch (e) {
        expect(e).toBeInstanceOf(GuestDataError);
      }
    }
  });
});
