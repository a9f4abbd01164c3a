/**
 * A byte-count progress bar for long copies (dump, dump-proc): on stderr, only on a terminal and
 * not with --json, so piped output and scripts see nothing of it.
 */
import cliProgress from 'cli-progress';

export interface ByteProgress {
  /** Bytes done so far of `total`. */
  update(done: number, total: number): void;
  /** Take the bar off the screen's live line (its last state stays). */
  stop(): void;
}

export function byteProgressBar(label: string, json: boolean | undefined): ByteProgress | undefined {
  if (!process.stderr.isTTY || json) return undefined;
  const bar = new cliProgress.SingleBar(
    { format: `${label} {bar} {percentage}% {value}/{total} MiB`, stream: process.stderr, hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
  const mib = (n: number) => Math.round(n / 2 ** 20);
  let started = false;
  return {
    update(done, total) {
      if (!started) {
        bar.start(mib(total), 0);
        started = true;
      }
      bar.update(mib(done));
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
