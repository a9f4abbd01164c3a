/**
 * The guest's own view, read inside the guest through its console: the ground truth that
 * vmlens's answers are compared with.
 */
import type { GuestConsole } from '../../src/lab/index.ts';

export interface GuestProcess {
  readonly pid: number;
  readonly ppid: number;
  readonly uid: number;
  readonly comm: string;
  readonly state: string;
  readonly threads: number;
}

/** Every process from /proc/PID/stat and status (a process may vanish mid-listing: skipped). */
export async function guestProcesses(con: GuestConsole): Promise<Map<number, GuestProcess>> {
  const out = await con.run(
    'for d in /proc/[0-9]*; do s=$(cat $d/stat 2>/dev/null) || continue; u=$(grep "^Uid:" $d/status 2>/dev/null | cut -f2); echo "$u|$s"; done',
  );
  const procs = new Map<number, GuestProcess>();
  for (const line of out.split('\n')) {
    const bar = line.indexOf('|');
    const open = line.indexOf('(');
    const close = line.lastIndexOf(')');
    if (bar < 0 || open < 0 || close < open) continue;
    const uid = Number(line.slice(0, bar));
    const pid = Number(line.slice(bar + 1, open).trim());
    const comm = line.slice(open + 1, close);
    const rest = line.slice(close + 2).split(' ');
    // stat fields after comm: state(3) ppid(4) … num_threads(20)
    procs.set(pid, { pid, uid, comm, state: rest[0]!, ppid: Number(rest[1]), threads: Number(rest[17]) });
  }
  return procs;
}

export interface GuestModule {
  readonly name: string;
  readonly size: number;
  readonly refcount: number;
  readonly usedBy: string[];
  readonly state: string;
  readonly address: bigint;
}

/** /proc/modules: "name size refcnt deps state address". */
export async function guestModules(con: GuestConsole): Promise<GuestModule[]> {
  const out = await con.run('cat /proc/modules');
  return out
    .split('\n')
    .filter((l) => l.trim().length > 0)
    .map((l) => {
      const [name, size, refcount, deps, state, address] = l.trim().split(/\s+/);
      return {
        name: name!,
        size: Number(size),
        refcount: Number(refcount),
        usedBy: deps === '-' ? [] : deps!.split(',').filter((d) => d.length > 0),
        state: state!.toLowerCase(),
        address: BigInt(address!),
      };
    });
}

/** /proc/kallsyms as root: name → every address it has (module symbols excluded). */
export async function guestKallsyms(con: GuestConsole): Promise<Map<string, bigint[]>> {
  const out = await con.run('cat /proc/kallsyms');
  const map = new Map<string, bigint[]>();
  for (const line of out.split('\n')) {
    const parts = line.split(/\s+/);
    if (parts.length !== 3) continue; // module symbols have a 4th column
    const a = BigInt(`0x${parts[0]}`);
    const list = map.get(parts[2]!);
    if (list) list.push(a);
    else map.set(parts[2]!, [a]);
  }
  return map;
}
