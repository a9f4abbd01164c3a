import type { Command } from 'commander';
import * as admin from './admin.ts';
import * as call from './call.ts';
import * as check from './check.ts';
import * as forensics from './forensics.ts';
import * as info from './info.ts';
import * as kernel from './kernel.ts';
import * as lab from './lab.ts';
import * as memory from './memory.ts';
import * as shell from './shell.ts';

export interface CommandModule {
  register(program: Command): void;
}

/** Every command module, in the order `vmlens --help` lists them. */
export const commandModules: readonly CommandModule[] = [info, memory, kernel, forensics, check, admin, call, shell, lab];
