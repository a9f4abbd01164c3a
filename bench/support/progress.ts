/**
 * What the benchmark is doing, on one line of a terminal's stderr; nothing when stderr is not a
 * terminal (piped, CI), so that logs hold only the results.
 */
export interface Progress {
  /** Start a step; the line shows `[n] section: text` and the time the section has taken. */
  step(section: string, text: string): void;
  /** A line that stays (a notice worth keeping on screen). */
  note(text: string): void;
  done(): void;
}

export function terminalProgress(enabled = process.stderr.isTTY === true): Progress {
  if (!enabled) return { step: () => undefined, note: () => undefined, done: () => undefined };
  let n = 0;
  let shown = false;
  const started = Date.now();
  const clear = (): void => {
    if (shown) process.stderr.write('\r\x1b[K');
    shown = false;
  };
  return {
    step(section, text) {
      n++;
      const width = (process.stderr.columns ?? 100) - 1;
      const line = `[${n}] ${((Date.now() - started) / 1000).toFixed(0)}s ${section}: ${text}`;
      clear();
      process.stderr.write(line.length > width ? line.slice(0, width) : line);
      shown = true;
    },
    note(text) {
      clear();
      process.stderr.write(`${text}\n`);
    },
    done: clear,
  };
}
