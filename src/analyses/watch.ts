/**
 * Watching processes come and go in a running guest (`vmlens ps --watch`): the task list is
 * scanned again and again, as fast as the memory source allows, and each scan is compared with
 * what the previous ones saw.
 *
 * A process is known by its pid and start time (task->start_boottime): a pid seen again with
 * another start time is a new process, and the old one has exited. Each scan reads only pid,
 * tgid and start time per task; comm, parent, uid and state are read once, when a process is
 * first seen.
 *
 * A running guest changes its task list under the walk. The scanner checks every link it
 * follows against the back link and reports a scan that tore (see TaskScanner). Such a scan
 * still reports the processes it saw start — each was linked when read — but never an exit:
 * a process it did not reach may well be alive. Exits are decided only by complete scans, so a
 * torn walk is retried by the next scan, never shown as processes disappearing; a run of torn
 * scans long enough to delay exits is reported as a `torn` event.
 */
import type { Kernel } from '../kernel/kernel.ts';
import { DOUBLE_ZERO, vaFromParts } from '../mmu/va.ts';
import { PF_KTHREAD, TaskScanner } from './ps.ts';

/** A process as the watch saw it when it first appeared. */
export interface WatchedProcess {
  readonly pid: number;
  readonly tgid: number;
  readonly ppid: number;
  /** Real uid, or -1 when its credentials could not be read. */
  readonly uid: number;
  readonly comm: string;
  /** State letter when first seen (R S D T t X Z P I). */
  readonly state: string;
  readonly kthread: boolean;
  /** Address of the task_struct. */
  readonly task: bigint;
  /** task->start_boottime: nanoseconds since the guest booted. */
  readonly startTimeNs: number;
}

export type WatchEvent =
  | {
      readonly type: 'start';
      /** Host milliseconds since the watch began, at the scan that first saw it. */
      readonly atMs: number;
      readonly process: WatchedProcess;
    }
  | {
      readonly type: 'exit';
      /** Host milliseconds since the watch began, at the scan that found it gone. */
      readonly atMs: number;
      readonly process: WatchedProcess;
      /**
       * Estimated lifetime, host clock: from halfway between the scan before it was first seen
       * and the one that saw it, to halfway between the last scan that saw it and the one that
       * found it gone — within a scan interval of the truth either way. For a process already
       * there when the watch began, from its start time (guest clock, mapped to the host's; see
       * ClockMap).
       */
      readonly livedMs: number;
      /** The last scan that saw it, host ms since the watch began. */
      readonly lastSeenMs: number;
      /** Why it is known to be gone: absent from a complete scan, or its pid reused. */
      readonly reason: 'gone' | 'pid-reused';
    }
  | {
      /**
       * A young process changed its comm — it ran execve() (a forked shell becoming the program
       * it starts). Watched for the first EXEC_WATCH_MS of a process's life, when that happens.
       */
      readonly type: 'exec';
      readonly atMs: number;
      /** The process with its new comm. */
      readonly process: WatchedProcess;
      readonly previousComm: string;
    }
  | {
      readonly type: 'torn';
      readonly atMs: number;
      /** Scans in a row that tore, and how long no complete scan was had. */
      readonly scans: number;
      readonly sinceMs: number;
      /** Why the last one tore. */
      readonly why: string;
    };

export interface WatchStats {
  readonly scans: number;
  readonly completeScans: number;
  readonly tornScans: number;
  /** Longest run of torn scans in a row. */
  readonly longestTornRun: number;
  /**
   * Longest time between the starts of two scans, ms: a process whose whole life fits in such a
   * gap is not seen. Long gaps come from the host (this process waiting for a CPU) or from slow
   * memory sources, not from the guest.
   */
  readonly longestGapMs: number;
  readonly elapsedMs: number;
  readonly scansPerSecond: number;
  /** Processes on the list at the last scan. */
  readonly processes: number;
  readonly started: number;
  readonly exited: number;
}

export interface ProcessWatchOptions {
  /** Report the processes present at the first scan as starts too. Default false: they are the baseline. */
  readonly includeExisting?: boolean;
  /** Torn scans in a row (and at least as many ms without a complete scan) before a `torn` event. Default 200. */
  readonly tornAlert?: number;
}

/**
 * Most processes followed at once. Real guests have far fewer (Linux's default pid_max is 32768);
 * the bound keeps a guest that tears every scan while showing new pids from growing the table.
 */
export const MAX_TRACKED = 200_000;

/**
 * How long after first seeing a process its comm is re-read, to report an exec. Long enough for
 * an emulated guest on a busy host to get from fork through exec to a program naming itself (a
 * busybox applet is "exe" until it renames itself); only young processes pay for the re-read.
 */
export const EXEC_WATCH_MS = 2_000;

class Entry {
  constructor(
    public process: WatchedProcess,
    public gen: number,
    readonly firstSeenMs: number,
    public lastSeenMs: number,
    /** Host ms of its estimated birth (see the exit event's livedMs). */
    readonly bornMs: number,
    /** Present at the first scan: its birth (and any exec right after it) predates the watch. */
    readonly baseline: boolean,
  ) {}
}

/**
 * Guest boot time → host time, for processes older than the watch. Every sighting bounds the
 * offset from above: a process first seen at host time h started at guest time s, so
 * offset ≤ h − s; the smallest bound, from the youngest process, is the estimate. Only the first
 * scan is used: a guest clock may run at a slightly different rate from the host's (a TCG guest
 * calibrates its TSC at boot, on a busy host approximately), so the mapping is kept for
 * processes started long before, whose lifetimes are long anyway.
 */
class ClockMap {
  private offset = Infinity;
  observe(hostMs: number, guestStartNs: number): void {
    const d = hostMs - guestStartNs / 1e6;
    if (d < this.offset) this.offset = d;
  }
  toHostMs(guestNs: number): number {
    return guestNs / 1e6 + (Number.isFinite(this.offset) ? this.offset : 0);
  }
}

const NO_EVENTS: readonly WatchEvent[] = Object.freeze([]);

/** The scan-and-compare engine, one scan per `scan()` call; see the module comment. */
export class ProcessWatch {
  private readonly scanner: TaskScanner;
  private readonly known = new Map<number, Entry>();
  private readonly clock = new ClockMap();
  private readonly includeExisting: boolean;
  private readonly tornAlert: number;
  private readonly startedAt = performance.now();
  private gen = 0;
  private baselineTaken = false;
  private now = DOUBLE_ZERO;
  /** Start of the previous scan (host ms since the watch began). */
  private prevScanMs = DOUBLE_ZERO;
  private seen = 0;
  private events: WatchEvent[] = [];
  private tornRun = 0;
  private lastCompleteMs = 0;
  private alerted = false;
  private full = false;
  private counts = { scans: 0, completeScans: 0, tornScans: 0, longestTornRun: 0, started: 0, exited: 0, longestGapMs: 0 };
  private readonly visit: (s: TaskScanner) => void;

  constructor(
    readonly kernel: Kernel,
    opts: ProcessWatchOptions = {},
  ) {
    this.scanner = new TaskScanner(kernel);
    this.includeExisting = opts.includeExisting ?? false;
    this.tornAlert = opts.tornAlert ?? 200;
    this.visit = (s) => this.onTask(s);
  }

  /** Host milliseconds since the watch was created. */
  elapsedMs(): number {
    return performance.now() - this.startedAt;
  }

  /** Processes the last scans saw alive. */
  processes(): WatchedProcess[] {
    return [...this.known.values()].map((e) => e.process);
  }

  get stats(): WatchStats {
    const elapsedMs = this.elapsedMs();
    return {
      ...this.counts,
      elapsedMs,
      scansPerSecond: elapsedMs > 0 ? (this.counts.scans * 1000) / elapsedMs : 0,
      processes: this.known.size,
    };
  }

  /** Whether the baseline is taken: a first complete scan (see `scan`). */
  get ready(): boolean {
    return this.baselineTaken;
  }

  /**
   * Scan once; the events it found (a shared empty array when none). Scans up to and including
   * the first complete one take the baseline: what they see was there when the watch began and
   * is not reported (unless `includeExisting`) — a torn first scan would otherwise report the
   * processes it missed as new ones at the next.
   */
  scan(): readonly WatchEvent[] {
    const first = this.gen === 0;
    this.gen++;
    this.prevScanMs = this.now;
    this.now = this.elapsedMs();
    if (!first && this.now - this.prevScanMs > this.counts.longestGapMs) this.counts.longestGapMs = this.now - this.prevScanMs;
    this.seen = 0;
    if (this.events.length > 0) this.events = [];
    const silent = !this.baselineTaken && !this.includeExisting;
    const before = this.counts.started;
    this.scanner.scan(this.visit);
    if (silent) {
      this.counts.started = before;
      this.events.length = 0;
    }
    this.counts.scans++;
    if (this.scanner.complete) {
      this.baselineTaken = true;
      this.counts.completeScans++;
      this.tornRun = 0;
      this.alerted = false;
      this.lastCompleteMs = this.now;
      if (this.seen < this.known.size) this.collectExits();
    } else {
      this.counts.tornScans++;
      this.tornRun++;
      if (this.tornRun > this.counts.longestTornRun) this.counts.longestTornRun = this.tornRun;
      const since = this.now - this.lastCompleteMs;
      if (!this.alerted && this.tornRun >= this.tornAlert && since >= this.tornAlert) {
        this.alerted = true;
        this.events.push({ type: 'torn', atMs: this.now, scans: this.tornRun, sinceMs: since, why: this.scanner.why });
      }
    }
    return this.events.length === 0 ? NO_EVENTS : this.events;
  }

  private onTask(s: TaskScanner): void {
    const e = this.known.get(s.pid);
    if (e !== undefined) {
      if (e.process.startTimeNs === s.startTimeNs) {
        if (e.gen !== this.gen) {
          e.gen = this.gen;
          e.lastSeenMs = this.now;
          this.seen++;
          if (!e.baseline && this.now - e.firstSeenMs < EXEC_WATCH_MS) this.checkExec(e, s);
        }
        return;
      }
      // The pid now belongs to another process: the one we knew has exited.
      this.known.delete(s.pid);
      this.exit(e, 'pid-reused');
    }
    if (this.known.size >= MAX_TRACKED) {
      // Only a hostile guest gets here (tearing every scan while showing new pids): stay bounded.
      if (!this.full) this.kernel.warnings.warn('ps --watch', `more than ${MAX_TRACKED} processes at once; new ones are not followed`);
      this.full = true;
      return;
    }
    const p = readProcess(s);
    const baseline = !this.baselineTaken;
    if (baseline) this.clock.observe(this.now, p.startTimeNs);
    // Born between the previous scan and this one (or, already there, when the guest says).
    const bornMs = baseline ? this.clock.toHostMs(p.startTimeNs) : (this.prevScanMs + this.now) / 2;
    this.known.set(p.pid, new Entry(p, this.gen, this.now, this.now, bornMs, baseline));
    this.seen++;
    this.counts.started++;
    this.events.push({ type: 'start', atMs: this.now, process: p });
  }

  /** A young process whose comm changed has exec'd: record the new name, report it. */
  private checkExec(e: Entry, s: TaskScanner): void {
    let comm: string;
    try {
      comm = s.comm();
    } catch {
      return;
    }
    if (comm === e.process.comm) return;
    const previousComm = e.process.comm;
    e.process = { ...e.process, comm };
    this.events.push({ type: 'exec', atMs: this.now, process: e.process, previousComm });
  }

  private collectExits(): void {
    for (const [pid, e] of this.known) {
      if (e.gen === this.gen) continue;
      this.known.delete(pid);
      this.exit(e, 'gone');
    }
  }

  private exit(e: Entry, reason: 'gone' | 'pid-reused'): void {
    const goneMs = (e.lastSeenMs + this.now) / 2;
    const livedMs = Math.max(goneMs - e.bornMs, e.lastSeenMs - e.firstSeenMs);
    this.counts.exited++;
    this.events.push({ type: 'exit', atMs: this.now, process: e.process, livedMs, lastSeenMs: e.lastSeenMs, reason });
  }
}

/** The details of the scanner's current task; fields that cannot be read are left at their defaults. */
function readProcess(s: TaskScanner): WatchedProcess {
  let comm = '';
  let ppid = 0;
  let uid = -1;
  let state = '?';
  let flags = 0;
  try {
    comm = s.comm();
    state = s.state();
    flags = s.flags();
    ppid = s.ppid();
    uid = s.uid();
  } catch {
    // A task that went away mid-read keeps what was read: its pid and start time are sound.
  }
  return {
    pid: s.pid,
    tgid: s.tgid,
    ppid,
    uid,
    comm,
    state,
    kthread: (flags & PF_KTHREAD) !== 0,
    task: vaFromParts(s.hi, s.lo),
    startTimeNs: s.startTimeNs,
  };
}

export interface WatchLoopOptions extends ProcessWatchOptions {
  /** Stop when aborted (Ctrl-C). */
  readonly signal?: AbortSignal;
  /** Stop after this long (ms). Default: until aborted. */
  readonly durationMs?: number;
  /** Least time between scan starts (ms); 0 (default) scans back to back. */
  readonly intervalMs?: number;
  readonly onEvent: (event: WatchEvent) => void;
  /** Called once, after the first scan (the baseline) is taken. */
  readonly onReady?: (stats: WatchStats) => void;
  /** Called about every `progressMs` with the running statistics. */
  readonly onProgress?: (stats: WatchStats) => void;
  readonly progressMs?: number;
}

/** Longest stretch of scanning between returns to the event loop (signals, output, timers). */
const SLICE_MS = 25;

/**
 * Scan until aborted or the duration is over, reporting events as they come; the statistics at
 * the end. Scans run back to back in slices of a few tens of milliseconds, with a return to the
 * event loop between slices so Ctrl-C and output are served.
 */
export async function watchProcesses(kernel: Kernel, opts: WatchLoopOptions): Promise<WatchStats> {
  const watch = new ProcessWatch(kernel, opts);
  const interval = Math.max(0, opts.intervalMs ?? 0);
  const progressMs = opts.progressMs ?? 250;
  let nextProgress = progressMs;
  const done = (): boolean => opts.signal?.aborted === true || (opts.durationMs !== undefined && watch.elapsedMs() >= opts.durationMs);
  // The baseline: a first complete scan (a list changing under every attempt is given up on
  // after a while, and watched anyway).
  for (let i = 0; i < 1000 && !watch.ready && !done(); i++) for (const e of watch.scan()) opts.onEvent(e);
  opts.onReady?.(watch.stats);
  while (!done()) {
    const sliceEnd = watch.elapsedMs() + SLICE_MS;
    do {
      const t = watch.elapsedMs();
      for (const e of watch.scan()) opts.onEvent(e);
      if (interval > 0) {
        const wait = t + interval - watch.elapsedMs();
        if (wait > 0) {
          await sleep(wait);
          break;
        }
      }
    } while (watch.elapsedMs() < sliceEnd && !done());
    if (opts.onProgress && watch.elapsedMs() >= nextProgress) {
      opts.onProgress(watch.stats);
      nextProgress = watch.elapsedMs() + progressMs;
    }
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  return watch.stats;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
