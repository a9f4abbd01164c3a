import type { Command } from 'commander';
import { openKernel } from '../../kernel/open.ts';
import { uname } from '../../analyses/uname.ts';
import { globalOptions, setSession, type Session } from '../context.ts';
import { runShell } from '../shell/shell.ts';
import { openTarget } from '../target.ts';

export function register(program: Command): void {
  program
    .command('shell')
    .description('an interactive shell on one guest: every command, tab completion, history')
    .action(async (_o: unknown, cmd: Command) => {
      const opts = globalOptions(cmd);
      const machine = await openTarget(opts);
      const session: Session = { machine };
      setSession(session);
      try {
        let label = machine.name;
        try {
          session.kernel = await openKernel(machine, { btfFile: opts.btf, systemMapFile: opts.systemMap });
          if (machine.live) session.kernel.space.reader.setFrozen(false);
          label = `${machine.name} ${uname(session.kernel).release} ${session.kernel.layout.levels}-level`;
        } catch (e) {
          // Memory commands still work on a guest whose kernel cannot be read (yet).
          process.stderr.write(`vmlens: ${(e as Error).message}\n`);
        }
        await machine.releaseMonitor?.();
        await runShell({ session, label });
      } finally {
        setSession(undefined);
        await machine.close();
      }
    });
}
