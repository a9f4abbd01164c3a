import type { Machine } from './types.ts';

/** A pause held for one command; `resume()` says how long the guest was stopped. */
export interface PauseHandle {
  readonly startedAt: bigint;
  resume(): Promise<number>;
}

/**
 * Pause a live guest for the duration of a command (`--consistent`): every read then sees one
 * instant of the guest. A guest that was already paused stays paused afterwards. The time the
 * guest spent stopped is reported on stderr — it is the cost of consistency to the guest.
 */
export async function pauseForCommand(machine: Machine, report: (ms: number) => void = defaultReport): Promise<PauseHandle | undefined> {
  if (!machine.live || !machine.pause || !machine.resume) return undefined;
  const wasPaused = await machine.isPaused();
  const startedAt = process.hrtime.bigint();
  if (!wasPaused) await machine.pause();
  return {
    startedAt,
    async resume(): Promise<number> {
      if (!wasPaused) await machine.resume!();
      const ms = Number(process.hrtime.bigint() - startedAt) / 1e6;
      if (!wasPaused) report(ms);
      return ms;
    },
  };
}

function defaultReport(ms: number): void {
  process.stderr.write(`vmlens: guest paused for ${ms.toFixed(1)} ms\n`);
}
