/**
 * Guest data is hostile input: a walk that meets a corrupt structure stops, records a warning
 * and returns what it had. Warnings are collected per command and printed to stderr (or put in
 * the JSON output) by the interface layer; analyses never print.
 */
export interface Warning {
  /** Where it happened, e.g. "ps: task list" or "kallsyms". */
  readonly where: string;
  readonly message: string;
}

export class Warnings {
  readonly items: Warning[] = [];
  /** Cap so a hostile guest cannot make us allocate unboundedly through warnings alone. */
  static readonly MAX = 1000;
  private dropped = 0;

  warn(where: string, message: string): void {
    if (this.items.length < Warnings.MAX) this.items.push({ where, message });
    else this.dropped++;
  }

  get droppedCount(): number {
    return this.dropped;
  }

  clear(): void {
    this.items.length = 0;
    this.dropped = 0;
  }
}
