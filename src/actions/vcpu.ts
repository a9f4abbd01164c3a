/**
 * vCPU control of a live QEMU guest through its gdbstub: stop and resume, registers of any vCPU,
 * breakpoints, single steps. Everything that acts on a running kernel from outside (kernel
 * function calls, kill, rmmod) stands on this.
 *
 * The one promise this module keeps: however a control session ends — normally, by an error, a
 * timeout, or SIGINT/SIGTERM/SIGHUP — every breakpoint it set is removed and the guest runs again if it
 * was running when the session began. Cleanups registered by the session's user (putting back
 * the registers of an interrupted task) run first, newest first.
 *
 * Breakpoints are inserted as 'hw' kind: under TCG QEMU keeps them outside guest memory (the
 * guest cannot see them, kernel text is never written); under KVM they use the debug registers,
 * of which x86 has four — hence the cap.
 *
 * Where the stub is: QEMU serves one gdbstub (a chardev labelled `gdb`), and `gdbserver` would
 * replace an existing one — cutting off whoever uses it — so an existing stub is used as it is
 * (found through `info chardev`), and one is started (and stopped again at the end) only when
 * the QEMU has none.
 */
import { freeLoopbackPort } from '../util/net.ts';
import { QemuMachine } from '../machine/qemu.ts';
import type { Machine } from '../machine/types.ts';
import { GdbRemote, type StopReply, type X86Registers } from '../source/gdb/rsp.ts';
import { TargetError, UsageError } from '../util/errors.ts';

export type { StopReply, X86Registers } from '../source/gdb/rsp.ts';

export interface VcpuControlOptions {
  /**
   * Time allowed to reach the stub, including waiting for another debugger to leave it (QEMU
   * serves one at a time). Default 30 s.
   */
  readonly connectTimeoutMs?: number;
  /** Time allowed for each request to the stub. Default 5 s. */
  readonly requestTimeoutMs?: number;
  /** Catch SIGINT, SIGTERM and SIGHUP while the session is open (default true): they end it cleanly. */
  readonly handleSignals?: boolean;
  /** Use this stub instead of finding (or starting) QEMU's own. */
  readonly gdb?: { readonly host: string; readonly port: number };
  /** Lines for the user while waiting (a busy stub, a signal received). Default: none. */
  readonly notice?: (message: string) => void;
}

/** Where a gdbstub listens, and whether this session started it. */
export interface GdbEndpoint {
  readonly host: string;
  readonly port: number;
  readonly startedHere: boolean;
}

/** What waitForStop() can end with besides a stop. */
export type WaitOutcome = { readonly kind: 'stop'; readonly stop: StopReply } | { readonly kind: 'timeout' } | { readonly kind: 'signal'; readonly signal: NodeJS.Signals };

/** x86 has four debug registers: the most hardware breakpoints a KVM guest can hold. */
export const MAX_BREAKPOINTS = 4;
const DEFAULT_CONNECT_TIMEOUT_MS = 30_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 5_000;
/** One connection attempt: a stub busy with another debugger stays silent; try again after. */
const ATTEMPT_TIMEOUT_MS = 3_000;
const RETRY_PAUSE_MS = 500;
/** waitForStop() looks for signals this often. */
const WAIT_SLICE_MS = 200;
/** How often a pause made elsewhere is checked for its end. */
const PAUSE_POLL_MS = 100;
/** How long the stub may take to report a stop QMP made. */
const STOP_REPLY_WAIT_MS = 1_000;
/** Signals that would end the process: while a session is open they end the session instead. */
const HANDLED_SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
/** The signal QEMU reports for a stop it was asked for (an interrupt or a pause). */
const SIGINT_STOP = 2;

const GDB_CHARDEV = /^gdb: filename=(?:disconnected:)?(tcp|unix|[a-z]+):([^\s,]*)/m;

/**
 * The gdbstub QEMU already has, from `info chardev`: undefined when it has none; a UsageError
 * when it has one vmlens cannot reach (not TCP).
 */
export function parseGdbChardev(infoChardev: string): { host: string; port: number } | undefined {
  const m = GDB_CHARDEV.exec(infoChardev);
  if (!m) return undefined;
  const [, kind, address] = m as unknown as [string, string, string];
  if (kind !== 'tcp') throw new UsageError(`QEMU's gdbstub listens on ${kind}:${address}; vmlens reaches gdbstubs over TCP only`);
  const colon = address.lastIndexOf(':');
  const port = Number(address.slice(colon + 1));
  if (colon < 0 || !Number.isInteger(port) || port <= 0 || port > 65535) throw new TargetError(`cannot read the gdbstub address from QEMU: '${address}'`);
  let host = address.slice(0, colon).replace(/^\[|\]$/g, '');
  // A stub listening on every interface is reached on loopback.
  if (host === '' || host === '0.0.0.0' || host === '::') host = '127.0.0.1';
  return { host, port };
}

/** QEMU's gdbstub for this machine: the existing one, or a new one on a free loopback port. */
async function gdbEndpointOf(machine: Machine): Promise<GdbEndpoint> {
  if (!(machine instanceof QemuMachine)) throw new UsageError(`${machine.name} is not a live QEMU guest: vCPU control needs one (--qmp or --lab)`);
  if (machine.memory.kind === 'gdb') {
    throw new UsageError('vCPU control needs the gdbstub, which --source gdb already holds for memory reads: use --source file or proc');
  }
  const existing = parseGdbChardev(await machine.qmp.hmp('info chardev'));
  if (existing) return { ...existing, startedHere: false };
  const port = await freeLoopbackPort();
  const reply = await machine.qmp.hmp(`gdbserver tcp:127.0.0.1:${port}`);
  if (!/Waiting for gdb connection/i.test(reply)) throw new TargetError(`QEMU did not start a gdbstub: ${reply.trim()}`);
  return { host: '127.0.0.1', port, startedHere: true };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Connect, retrying while the stub serves another debugger, until the deadline. */
async function connectPatiently(host: string, port: number, opts: VcpuControlOptions): Promise<GdbRemote> {
  const total = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const deadline = Date.now() + total;
  // The stub's silence is how a busy stub shows itself: attempts are short, requests later get
  // the full request timeout (one GdbRemote has one timeout for both).
  const attemptMs = Math.min(opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS, ATTEMPT_TIMEOUT_MS);
  let told = false;
  for (;;) {
    try {
      return await GdbRemote.connect(host, port, { timeoutMs: Math.max(500, Math.min(attemptMs, deadline - Date.now())) });
    } catch (e) {
      const busy = e instanceof TargetError && /did not answer/.test(e.message);
      if (!busy) throw e;
      if (Date.now() + RETRY_PAUSE_MS >= deadline) throw new TargetError(`the gdbstub at ${host}:${port} stayed busy with another debugger for ${total} ms`);
      if (!told) opts.notice?.(`gdbstub at ${host}:${port} is busy with another debugger; waiting`);
      told = true;
      await sleep(RETRY_PAUSE_MS);
    }
  }
}

/**
 * One vCPU control session. Open it with `VcpuControl.open(machine)`, always `close()` it
 * (a `finally`): close is what removes breakpoints and resumes the guest.
 */
export class VcpuControl {
  private readonly breakpoints = new Set<bigint>();
  private readonly cleanups: { what: string; run: () => Promise<void> }[] = [];
  private closed = false;
  private signalCount = 0;
  private lastSignal: NodeJS.Signals | undefined;
  private readonly onSignal = (s: NodeJS.Signals): void => {
    this.signalCount++;
    this.lastSignal = s;
  };

  private constructor(
    readonly remote: GdbRemote,
    readonly endpoint: GdbEndpoint,
    /** Whether the guest ran when the session began (it is stopped while the session holds it). */
    readonly wasRunning: boolean,
    private readonly machine: Machine | undefined,
    private readonly signalsHandled: boolean,
    private readonly notice: ((message: string) => void) | undefined,
  ) {
    if (signalsHandled) {
      for (const sig of HANDLED_SIGNALS) process.on(sig, this.onSignal);
    }
  }

  /**
   * Attach to a live QEMU guest's vCPUs. The guest is stopped once this returns (QEMU stops it
   * when a debugger connects).
   */
  static async open(machine: Machine, opts: VcpuControlOptions = {}): Promise<VcpuControl> {
    const endpoint = opts.gdb ? { ...opts.gdb, startedHere: false } : await gdbEndpointOf(machine);
    let remote: GdbRemote;
    try {
      // QMP's view first: a stub that answers `T02` on connect says the same, but only QMP
      // knows of a pause another client made.
      const pausedBefore = machine.live ? await machine.isPaused() : true;
      remote = await connectPatiently(endpoint.host, endpoint.port, opts);
      return new VcpuControl(remote, endpoint, !pausedBefore || remote.stoppedOnConnect, machine, opts.handleSignals ?? true, opts.notice);
    } catch (e) {
      if (endpoint.startedHere && machine instanceof QemuMachine) await machine.qmp.hmp('gdbserver none').catch(() => undefined);
      throw e;
    }
  }

  /** How many SIGINT/SIGTERM/SIGHUP arrived while the session was open. */
  get signalsReceived(): number {
    return this.signalCount;
  }

  /** The latest signal received, if any. */
  get lastSignalReceived(): NodeJS.Signals | undefined {
    return this.lastSignal;
  }

  /** Breakpoints currently set by this session. */
  get activeBreakpoints(): readonly bigint[] {
    return [...this.breakpoints];
  }

  private check(): void {
    if (this.closed) throw new TargetError('vCPU control session is closed');
  }

  /** vCPU thread ids (QEMU: vCPU index + 1). */
  async threads(): Promise<number[]> {
    this.check();
    return this.remote.threads();
  }

  // No selection is cached: QEMU moves both selections to the vCPU that stopped, at every stop.
  private async selectForRegisters(thread: number): Promise<void> {
    await this.remote.selectThread(thread, 'g');
  }

  private async selectForExecution(thread: number): Promise<void> {
    await this.remote.selectThread(thread, 'c');
  }

  async registers(thread: number): Promise<X86Registers> {
    this.check();
    await this.selectForRegisters(thread);
    return this.remote.readRegisters();
  }

  /** Set registers of one vCPU (only the fields given). */
  async setRegisters(thread: number, values: Partial<X86Registers>): Promise<void> {
    this.check();
    await this.selectForRegisters(thread);
    await this.remote.writeRegisters(values);
  }

  async insertBreakpoint(addr: bigint): Promise<void> {
    this.check();
    if (this.breakpoints.has(addr)) return;
    if (this.breakpoints.size >= MAX_BREAKPOINTS) throw new UsageError(`at most ${MAX_BREAKPOINTS} breakpoints at once (x86 debug registers)`);
    // Tracked before the request: a reply lost to a timeout may still have set it.
    this.breakpoints.add(addr);
    await this.remote.insertBreakpoint(addr, 'hw');
  }

  async removeBreakpoint(addr: bigint): Promise<void> {
    this.check();
    if (!this.breakpoints.has(addr)) return;
    await this.remote.removeBreakpoint(addr, 'hw');
    this.breakpoints.delete(addr);
  }

  async removeAllBreakpoints(): Promise<void> {
    for (const a of [...this.breakpoints]) await this.removeBreakpoint(a);
  }

  /** Resume every vCPU; the next stop comes to waitForStop(). */
  async resume(): Promise<void> {
    this.check();
    await this.remote.cont();
  }

  /** Whether the guest runs because this session resumed it (and no stop came yet). */
  get running(): boolean {
    return this.remote.running;
  }

  /**
   * Stop the guest if this session set it running. A stop of the session's own (a breakpoint
   * hit) that raced with the interrupt is returned: it happened, and the caller must see it.
   */
  async stop(): Promise<StopReply | undefined> {
    if (!this.remote.running) return undefined;
    return this.takeBack();
  }

  /**
   * The next stop after resume()/a step, or a timeout, or a signal to this process. On a timeout
   * or a signal the guest is stopped again before this returns (so the session stays in
   * control), unless `keepRunning` is set. Waits in short slices so that a signal is noticed
   * quickly. `signalsSeen` is the signalsReceived count the caller has dealt with (default: the
   * count now): a signal that came earlier, while the caller was busy, ends the wait at once.
   */
  async waitForStop(timeoutMs: number, opts: { readonly keepRunning?: boolean; readonly signalsSeen?: number } = {}): Promise<WaitOutcome> {
    this.check();
    const deadline = Date.now() + timeoutMs;
    const seen = opts.signalsSeen ?? this.signalCount;
    for (;;) {
      if (this.signalCount === seen) {
        const slice = Math.max(1, Math.min(WAIT_SLICE_MS, deadline - Date.now()));
        try {
          return { kind: 'stop', stop: await this.remote.waitForStop(slice) };
        } catch (e) {
          if (!(e instanceof TargetError && /did not stop within/.test(e.message))) throw e;
        }
      }
      const signalled = this.signalCount !== seen;
      if (!signalled && Date.now() < deadline) continue;
      if (!opts.keepRunning) {
        const late = await this.takeBack();
        if (late) return { kind: 'stop', stop: late };
      }
      return signalled ? { kind: 'signal', signal: this.lastSignal ?? 'SIGINT' } : { kind: 'timeout' };
    }
  }

  /**
   * After a stop for SIGINT this session did not ask for — a pause made elsewhere (a QMP `stop`
   * from another monitor, a human at the HMP) — wait until that party resumes the guest, so as
   * not to run it under their feet. Returns false on timeout or a signal to this process.
   */
  async waitWhilePausedElsewhere(timeoutMs: number): Promise<boolean> {
    const m = this.machine;
    if (!m?.live) return true;
    const deadline = Date.now() + timeoutMs;
    const seen = this.signalCount;
    while (Date.now() < deadline && this.signalCount === seen) {
      if (await m.isPaused()) {
        await sleep(PAUSE_POLL_MS);
        continue;
      }
      // Running again, while the stub's client still holds it stopped. Stop it once more, the
      // way the stub can see: its stop reply is then acknowledged while the guest stands still.
      // (An acknowledgement reaching QEMU after the next `c` would read as an interrupt.)
      const before = this.remote.lastStop;
      if (m.pause) await m.pause();
      const until = Date.now() + STOP_REPLY_WAIT_MS;
      while (this.remote.lastStop === before && Date.now() < until) await sleep(5);
      return true;
    }
    return false;
  }

  /** Whether a stop is a pause made elsewhere (see waitWhilePausedElsewhere). */
  static isForeignPause(stop: StopReply): boolean {
    return stop.kind === 'signal' && stop.signal === SIGINT_STOP;
  }

  /**
   * Stop a guest this session set running. A stop of its own (a breakpoint) that raced with the
   * interrupt is returned: it happened, and the caller must see it.
   */
  private async takeBack(): Promise<StopReply | undefined> {
    const stop = await this.remote.interrupt();
    if (stop === undefined) return this.remote.waitForStop(0).catch(() => undefined);
    return stop.kind === 'signal' && stop.signal === SIGINT_STOP ? undefined : stop;
  }

  /**
   * Move one vCPU past the instruction at a breakpoint of this session, leaving the breakpoint
   * set: QEMU would stop again at once on resuming a vCPU there. Other vCPUs run meanwhile.
   */
  async stepOver(thread: number, addr: bigint, timeoutMs = 5_000): Promise<StopReply> {
    this.check();
    const had = this.breakpoints.has(addr);
    if (had) await this.removeBreakpoint(addr);
    await this.selectForExecution(thread);
    try {
      return await this.remote.step(timeoutMs);
    } catch (e) {
      // A step that did not finish leaves the guest running: take it back before anything else.
      await this.remote.interrupt().catch(() => undefined);
      throw e;
    } finally {
      if (had) await this.insertBreakpoint(addr);
    }
  }

  /**
   * Run `run` when the session closes, before breakpoints are removed and the guest resumed
   * (newest first). Returns a function that unregisters it (when it is no longer needed).
   */
  onClose(what: string, run: () => Promise<void>): () => void {
    const entry = { what, run };
    this.cleanups.push(entry);
    return () => {
      const i = this.cleanups.indexOf(entry);
      if (i >= 0) this.cleanups.splice(i, 1);
    };
  }

  /**
   * End the session: registered cleanups, breakpoints removed, the guest resumed if it was
   * running before, the stub stopped if this session started it. Never throws; what could not
   * be done is returned (and told through `notice`), so a caller's own error is not masked.
   */
  async close(): Promise<string[]> {
    if (this.closed) return [];
    const problems: string[] = [];
    const attempt = async (what: string, fn: () => Promise<void>): Promise<void> => {
      try {
        await fn();
      } catch (e) {
        problems.push(`${what}: ${e instanceof Error ? e.message : String(e)}`);
      }
    };
    await attempt('stopping the guest', async () => {
      await this.stop();
    });
    while (this.cleanups.length > 0) {
      const c = this.cleanups.pop()!;
      await attempt(c.what, c.run);
    }
    await attempt('removing breakpoints', () => this.removeAllBreakpoints());
    this.closed = true;
    if (this.wasRunning) {
      // `D` removes whatever breakpoints are left and resumes the guest.
      await attempt('resuming the guest', () => this.remote.detach());
      const m = this.machine;
      if (m?.live && m.resume) {
        await attempt('resuming the guest', async () => {
          if (await m.isPaused()) await m.resume!();
        });
      }
    } else this.remote.close();
    if (this.endpoint.startedHere && this.machine instanceof QemuMachine) {
      await attempt('stopping the gdbstub', async () => {
        await (this.machine as QemuMachine).qmp.hmp('gdbserver none');
      });
    }
    if (this.signalsHandled) {
      for (const sig of HANDLED_SIGNALS) process.off(sig, this.onSignal);
    }
    for (const p of problems) this.notice?.(`could not finish cleanly: ${p}`);
    return problems;
  }
}
