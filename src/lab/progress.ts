/**
 * Phase lines for slow lab work (downloads, booting), on stderr and only on a terminal: piped
 * or under a test runner the lab is silent. One line per phase with a spinner and elapsed time;
 * a finished phase stays on screen with its duration.
 */
export interface Progress {
  /** Start a phase (finishing the previous one). */
  phase(text: string): void;
  /** Stop the live line so another tool can write its own progress below it. */
  suspend(): void;
  /** Finish the current phase; `note` replaces the elapsed time when given. */
  done(note?: string): void;
}

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

export const silentProgress: Progress = { phase() {}, suspend() {}, done() {} };

export function terminalProgress(stream: NodeJS.WriteStream = process.stderr): Progress {
  return stream.isTTY ? new SpinnerProgress(stream) : silentProgress;
}

class SpinnerProgress implements Progress {
  private text: string | undefined;
  private started = 0;
  private frame = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly stream: NodeJS.WriteStream) {}

  phase(text: string): void {
    this.done();
    this.text = text;
    this.started = Date.now();
    this.timer = setInterval(() => this.draw(), 120);
    // The spinner must never keep a finished command alive.
    this.timer.unref();
    this.draw();
  }

  suspend(): void {
    if (!this.timer) return;
    clearInterval(this.timer);
    this.timer = undefined;
    this.stream.write(`\r\x1b[K… ${this.text}\n`);
  }

  done(note?: string): void {
    if (this.text === undefined) return;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.stream.write(`\r\x1b[K✓ ${this.text} (${note ?? seconds(Date.now() - this.started)})\n`);
    this.text = undefined;
  }

  private draw(): void {
    this.frame = (this.frame + 1) % FRAMES.length;
    this.stream.write(`\r\x1b[K${FRAMES[this.frame]} ${this.text} ${seconds(Date.now() - this.started)}`);
  }
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}
