/**
 * Tab completion for the shell: command names, their options, and the guest's own names where
 * a command takes them — pids, module names, sysctl names, kernel symbols. Names come from the
 * open kernel at the moment Tab is pressed; a guest that cannot be read completes nothing.
 */
import type { Command } from 'commander';
import { listSysctls } from '../../analyses/sysctl.ts';
import { listModules } from '../../analyses/lsmod.ts';
import { listTasks } from '../../analyses/ps.ts';
import type { Kernel } from '../../kernel/kernel.ts';

/** Commands whose arguments are pids, and options whose values are. */
const PID_COMMANDS = new Set(['kill', 'maps', 'lsof', 'cmdline', 'environ', 'dump-proc']);
const PID_OPTIONS = new Set(['-p', '--pid']);
const MODULE_COMMANDS = new Set(['rmmod']);
const SYSCTL_COMMANDS = new Set(['sysctl']);
const SYMBOL_COMMANDS = new Set(['sym', 'call', 'restore']);
/** Symbols offered at most: a prefix of two letters already narrows 100k names a lot. */
const MAX_SYMBOLS = 500;

export const SHELL_BUILTINS = ['help', 'exit', 'quit'];

export interface CompletionSource {
  readonly program: Command;
  kernel(): Kernel | undefined;
}

/** Words of the line before the cursor; the last one is the word being completed. */
function wordsBefore(line: string): string[] {
  const words = line.split(/\s+/);
  return words.length === 0 ? [''] : words;
}

export function complete(src: CompletionSource, line: string): [string[], string] {
  const words = wordsBefore(line.replace(/^\s+/, ''));
  const current = words[words.length - 1] ?? '';
  if (words.length <= 1) {
    const names = [...src.program.commands.map((c) => c.name()), ...SHELL_BUILTINS];
    return [names.filter((n) => n.startsWith(current)).sort(), current];
  }
  const name = words[0]!;
  const cmd = src.program.commands.find((c) => c.name() === name);
  const previous = words[words.length - 2] ?? '';
  if (current.startsWith('-')) {
    const flags = (cmd?.options ?? []).flatMap((o) => [o.long, o.short]).filter((f): f is string => !!f);
    return [flags.filter((f) => f.startsWith(current)).sort(), current];
  }
  const k = src.kernel();
  if (!k) return [[], current];
  try {
    if (PID_OPTIONS.has(previous) || PID_COMMANDS.has(name)) {
      const pids = listTasks(k).map((t) => String(t.pid));
      return [pids.filter((p) => p.startsWith(current)), current];
    }
    if (MODULE_COMMANDS.has(name)) return [listModules(k).map((m) => m.name).filter((n) => n.startsWith(current)).sort(), current];
    if (SYSCTL_COMMANDS.has(name)) {
      const names = listSysctls(k).map((s) => s.name);
      return [names.filter((n) => n.startsWith(current)).sort(), current];
    }
    if (SYMBOL_COMMANDS.has(name) && current.length >= 2) {
      const out: string[] = [];
      for (const s of symbolNames(k)) {
        if (s.startsWith(current)) out.push(s);
        if (out.length >= MAX_SYMBOLS) break;
      }
      return [out.sort(), current];
    }
  } catch {
    // Completion must never break the line being typed.
  }
  return [[], current];
}

function* symbolNames(k: Kernel): Generator<string> {
  const table = k.symbols as { symbols?: () => Iterable<{ name: string }> };
  if (!table.symbols) return;
  for (const s of table.symbols()) yield s.name;
}
