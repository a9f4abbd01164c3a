import { Command, CommanderError, Option } from 'commander';
import { isVmlensError } from '../util/errors.ts';
import { commandModules } from './commands/index.ts';
import { takeExitCode } from './context.ts';

/**
 * The `vmlens` command line. Global options name the target and the output; every command
 * module registers itself (src/cli/commands). Errors a user can cause print one line and exit
 * non-zero; a stack trace only with --debug.
 */
export function buildProgram(): Command {
  const program = new Command('vmlens')
    .description('Agentless introspection and management of live Linux guests, from the host')
    .addOption(new Option('--qmp <socket>', 'live QEMU guest, by its QMP socket'))
    .addOption(new Option('--dump <file>', 'guest memory snapshot (ELF core, LiME or raw; detected)'))
    .addOption(new Option('--lab <name>', 'a running lab guest (see `vmlens lab list`)'))
    .addOption(
      new Option('--source <kind>', 'how to reach a live guest\'s memory').choices(['auto', 'file', 'proc', 'gdb']).default('auto'),
    )
    .addOption(new Option('--btf <file>', 'BTF for a kernel without its own (raw BTF or a vmlinux with .BTF)'))
    .addOption(new Option('--system-map <file>', 'System.map for a kernel without kallsyms'))
    .addOption(new Option('--consistent', 'pause the guest for the duration of the command'))
    .addOption(new Option('--json', 'machine-readable output'))
    .addOption(new Option('--debug', 'show stack traces of errors'))
    // Usage errors are one line, in the same voice as every other error.
    .configureOutput({ outputError: (str, write) => write(`vmlens: ${str.replace(/^error: /, '')}`) });
  program.exitOverride();
  for (const m of commandModules) m.register(program);
  return program;
}

export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  const debug = argv.includes('--debug');
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return takeExitCode();
  } catch (e) {
    takeExitCode();
    if (e instanceof CommanderError) {
      // Commander already printed its message (usage errors, --help, --version).
      return e.exitCode === 0 ? 0 : 2;
    }
    if (isVmlensError(e)) {
      process.stderr.write(`vmlens: ${e.message}\n`);
      if (debug && e.stack) process.stderr.write(`${e.stack}\n`);
      return e.exitCode;
    }
    const err = e instanceof Error ? e : new Error(String(e));
    const hint = debug ? '' : ' (run with --debug for details)';
    process.stderr.write(`vmlens: internal error: ${err.message}${hint}\n`);
    if (debug && err.stack) process.stderr.write(`${err.stack}\n`);
    return 70;
  }
}
