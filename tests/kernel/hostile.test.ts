/**
 * A corrupt or malicious guest, made from a real one: a raw dump of the default lab guest is
 * patched at the physical addresses of its real structures (a task list that cycles, a pointer
 * into nowhere, a module list cycle, names without their NUL, an absurd printk ring, a forged
 * module symtab), then opened like any dump. Each walk must end — with a warning, or a clear
 * GuestDataError where nothing can be read — and give what it could: never hang, crash or
 * balloon. Each case restores the bytes it changed, so the cases do not mix.
 */
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLog, readLogAfter } from '../../src/analyses/dmesg.ts';
import { listModules } from '../../src/analyses/lsmod.ts';
import { listTasks } from '../../src/analyses/ps.ts';
import { uname } from '../../src/analyses/uname.ts';
import { listForEachEntry } from '../../src/kernel/helpers/list.ts';
import type { Kernel } from '../../src/kernel/kernel.ts';
import { allModuleSymbols, MAX_MODULE_SYMBOLS } from '../../src/kernel/modules.ts';
import { openKernel } from '../../src/kernel/open.ts';
import { openDump } from '../../src/machine/dump.ts';
import { attachQemu } from '../../src/machine/qemu.ts';
import { GuestDataError } from '../../src/util/errors.ts';
import { labGuest } from '../support/lab.ts';

/** Where the structures the cases corrupt sit, found through vmlens on the paused guest. */
interface Places {
  tasks: { va: bigint; tasksPa: number; commPa: number; pid: number }[];
  modules: { name: string; va: bigint; listPa: number; namePa: number; numSymtabPa: number; symtabPa: number }[];
  tasksOff: number;
  moduleListOff: number;
  unmapped: bigint;
  countBitsPa: number;
  sizeBitsPa: number;
  sysnamePa: number;
  taskCount: number;
  moduleCount: number;
  logCount: number;
}

const u64 = (v: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
};
const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};

describe('hostile guest data: a real dump, patched', () => {
  let dir: string;
  let file: string;
  let P: Places;

  beforeAll(async () => {
    const guest = await labGuest('default');
    const machine = await attachQemu(guest.info.qmpSocket);
    dir = mkdtempSync(join(tmpdir(), 'vmlens-hostile-'));
    file = join(dir, 'memory.raw');
    await machine.pause();
    try {
      const k = await openKernel(machine, { frozen: true });
      const pa = (va: bigint): number => k.space.translateVa(va);
      const tasksOff = k.offsetOf('task_struct', 'tasks');
      const commOff = k.offsetOf('task_struct', 'comm');
      const tasks = [...listForEachEntry(k.variable('init_task', 'struct task_struct').member('tasks'), 'struct task_struct', 'tasks')]
        .slice(0, 6)
        .map((t) => ({ va: t.address, tasksPa: pa(t.address + BigInt(tasksOff)), commPa: pa(t.address + BigInt(commOff)), pid: t.member('pid').num() }));
      const moduleListOff = k.offsetOf('module', 'list');
      const modules = [...listForEachEntry(k.variable('modules', 'struct list_head'), 'struct module', 'list')].slice(0, 4).map((m) => {
        const ks = m.member('kallsyms').deref();
        return {
          name: m.member('name').str(),
          va: m.address,
          listPa: pa(m.address + BigInt(moduleListOff)),
          namePa: pa(m.member('name').address),
          numSymtabPa: pa(ks.member('num_symtab').address),
          symtabPa: pa(ks.member('symtab').ptr()),
        };
      });
      const prb = k.variable('prb', 'struct printk_ringbuffer *').deref();
      const ram = machine.memory.ranges.reduce((n, r) => Math.max(n, r.start + r.size), 0);
      P = {
        tasks,
        modules,
        tasksOff,
        moduleListOff,
        // The direct map 64 GiB in, far past this 1 GiB guest's RAM: never mapped.
        unmapped: k.layout.pageOffsetBase! + 64n * 2n ** 30n,
        countBitsPa: pa(prb.member('desc_ring').member('count_bits').address),
        sizeBitsPa: pa(prb.member('text_data_ring').member('size_bits').address),
        sysnamePa: pa(k.variable('init_uts_ns', 'struct uts_namespace').member('name').member('sysname').address),
        taskCount: listTasks(k).length,
        moduleCount: listModules(k).length,
        logCount: readLog(k).length,
      };
      expect(P.tasks.length).toBe(6);
      expect(P.modules.length).toBe(4);
      expect(await machine.qmp.hmp(`pmemsave 0 ${ram} "${file}"`)).toBe('');
    } finally {
      await machine.resume();
      await machine.close();
    }
  }, 300_000);

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Open the dump with `patches` applied (physical address → bytes), then put the bytes back. */
  async function withPatches(patches: [number, Buffer][], body: (k: Kernel) => void | Promise<void>): Promise<void> {
    const fd = openSync(file, 'r+');
    const saved: [number, Buffer][] = [];
    try {
      for (const [at, bytes] of patches) {
        const old = Buffer.alloc(bytes.length);
        readSync(fd, old, 0, old.length, at);
        saved.push([at, old]);
        writeSync(fd, bytes, 0, bytes.length, at);
      }
      const dump = await openDump(file);
      try {
        await body(await openKernel(dump));
      } finally {
        await dump.close();
      }
    } finally {
      for (const [at, old] of saved.reverse()) writeSync(fd, old, 0, old.length, at);
      closeSync(fd);
    }
  }

  const warned = (k: Kernel, where: RegExp): string[] => k.warnings.items.filter((w) => where.test(`${w.where}: ${w.message}`)).map((w) => `${w.where}: ${w.message}`);

  it('the unpatched dump reads like the guest did (the baseline the cases change)', async () => {
    await withPatches([], (k) => {
      expect(listTasks(k).length).toBe(P.taskCount);
      expect(listModules(k).length).toBe(P.moduleCount);
      expect(readLog(k).length).toBe(P.logCount);
      expect(k.warnings.items).toEqual([]);
    });
  });

  it('reading the log after a sequence number gives exactly the later records, and counts the ones the ring lost', async () => {
    await withPatches([], (k) => {
      const all = readLog(k);
      expect(all.length).toBeGreaterThan(100);
      const everything = readLogAfter(k, -1);
      expect(everything.records).toEqual(all);
      // Records before the oldest one the ring still holds are lost to any reader.
      expect(everything.lost).toBe(all[0]!.seq);
      const mid = Math.floor(all.length / 2);
      expect(readLogAfter(k, all[mid]!.seq)).toEqual({ records: all.slice(mid + 1), lost: 0 });
      expect(readLogAfter(k, all.at(-1)!.seq)).toEqual({ records: [], lost: 0 });
      expect(k.warnings.items).toEqual([]);
    });
  });

  it('a task list that cycles back to an earlier task (not the head): ends, warns, keeps what it read', async () => {
    // tasks[3].tasks.next → &tasks[1].tasks: 1 → 2 → 3 → 1 → … never reaching init_task.
    const loop = P.tasks[1]!.va + BigInt(P.tasksOff);
    await withPatches([[P.tasks[3]!.tasksPa, u64(loop)]], (k) => {
      const rows = listTasks(k);
      const pids = new Set(rows.map((r) => r.pid));
      // Everything up to the cycle, nothing past it; the cycle is found within a few laps of it
      // (Brent's algorithm, constant memory), so a task of the cycle may appear twice.
      expect([...pids].sort()).toEqual(P.tasks.slice(0, 4).map((t) => t.pid).sort());
      expect(rows.length).toBeLessThanOrEqual(4 * 3);
      expect(warned(k, /task/i).length).toBeGreaterThan(0);
    });
  });

  it('a task pointer into nowhere: ends at it with a warning', async () => {
    await withPatches([[P.tasks[2]!.tasksPa, u64(P.unmapped)]], (k) => {
      const rows = listTasks(k);
      expect(rows.map((r) => r.pid)).toEqual(expect.arrayContaining(P.tasks.slice(0, 3).map((t) => t.pid)));
      expect(rows.length).toBeLessThan(P.taskCount);
      expect(warned(k, /task/i).length).toBeGreaterThan(0);
    });
  });

  it('a comm and a module name without their NUL: read to the array bound, no further', async () => {
    await withPatches(
      [
        [P.tasks[0]!.commPa, Buffer.alloc(16, 0x41)],
        [P.modules[1]!.namePa, Buffer.alloc(56, 0x42)],
      ],
      (k) => {
        const task = listTasks(k).find((r) => r.pid === P.tasks[0]!.pid)!;
        expect(task.comm).toBe('A'.repeat(16));
        expect(listModules(k).map((m) => m.name)).toContain('B'.repeat(56));
        expect(listTasks(k).length).toBe(P.taskCount);
      },
    );
  });

  it('a module list that cycles: ends, warns, keeps the modules before the cycle', async () => {
    const loop = P.modules[0]!.va + BigInt(P.moduleListOff);
    await withPatches([[P.modules[2]!.listPa, u64(loop)]], (k) => {
      const rows = listModules(k);
      expect([...new Set(rows.map((m) => m.name))].sort()).toEqual(P.modules.slice(0, 3).map((m) => m.name).sort());
      expect(rows.length).toBeLessThanOrEqual(3 * 3);
      expect(warned(k, /module/i).length).toBeGreaterThan(0);
      // Module symbols walk the same list: bounded too.
      expect(allModuleSymbols(k).length).toBeLessThanOrEqual(3 * 3);
    });
  });

  it('a printk ring claiming 2^31 descriptors or a 2^31-byte text ring: refused, not allocated', async () => {
    await withPatches([[P.countBitsPa, u32(31)]], (k) => {
      expect(() => readLog(k)).toThrow(GuestDataError);
      expect(() => readLog(k)).toThrow(/count_bits 31 is implausible/);
      expect(uname(k).machine).toBe('x86_64');
    });
    await withPatches([[P.sizeBitsPa, u32(0x8000_0000)]], (k) => {
      expect(() => readLog(k)).toThrow(/size_bits 2147483648 is implausible/);
    });
  });

  it('a sysname without its NUL: uname reads the 65-byte field and stops', async () => {
    await withPatches([[P.sysnamePa, Buffer.alloc(65, 0x43)]], (k) => {
      const u = uname(k);
      expect(u.sysname.length).toBeLessThanOrEqual(65);
      expect(u.sysname.startsWith('C'.repeat(64))).toBe(true);
      expect(u.machine).toBe('x86_64');
    });
  });

  it('a module symtab with 2^31-1 entries and names outside its string table: capped, warned, others intact', async () => {
    const victim = P.modules[1]!;
    // Symbol 1's st_name far past the string table; num_symtab absurd.
    await withPatches(
      [
        [victim.symtabPa + 24, u32(0x7fff_0000)],
        [victim.numSymtabPa, u32(0x7fff_ffff)],
      ],
      (k) => {
        const all = allModuleSymbols(k);
        expect(all.length).toBe(P.moduleCount);
        expect(warned(k, new RegExp(`module ${victim.name} symbols: num_symtab 2147483647 is implausible`)).length).toBe(1);
        expect(warned(k, new RegExp(`module ${victim.name} symbols: num_symtab ${MAX_MODULE_SYMBOLS} runs past the string table`)).length).toBe(1);
        expect(warned(k, new RegExp(`module ${victim.name} symbols: 1 symbol names outside the string table`)).length).toBe(1);
        // The module keeps its other symbols.
        const mine = all.find((m) => m.module === victim.name)!;
        expect(mine.symbols.length).toBeGreaterThan(5);
        // The other modules' symbols are still there, and lookups go on working.
        const other = all.find((m) => m.module === P.modules[0]!.name)!;
        expect(other.symbols.length).toBeGreaterThan(5);
        const sym = other.symbols.find((s) => s.type === 't')!;
        expect(k.symbols.lookup(sym.name)).toBe(sym.address);
      },
    );
  });

  it('a BTF section that claims 2^31 bytes: the kernel is not opened, with a clear error', async () => {
    // __stop_BTF is a link-time symbol, not data: the same claim is made through the symbol
    // table (see inputs.test.ts). Here the BTF header's own lengths are forged instead.
    let btfPa = 0;
    {
      const dump = await openDump(file);
      try {
        const k = await openKernel(dump);
        btfPa = k.space.translateVa(k.symbol('__start_BTF'));
      } finally {
        await dump.close();
      }
    }
    // struct btf_header: magic(2) version(1) flags(1) hdr_len(4) type_off(4) type_len(4) str_off(4) str_len(4).
    await withPatches([[btfPa + 12, u32(0x8000_0000)]], () => {
      throw new Error('opened a kernel whose BTF claims 2^31 bytes of types');
    }).then(
      () => undefined,
      (e: Error) => {
        expect(e).toBeInstanceOf(GuestDataError);
        expect(e.message).not.toContain('opened a kernel');
      },
    );
  });
});
