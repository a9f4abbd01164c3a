import type { Command } from 'commander';
import * as info from './info.ts';
import * as kernel from './kernel.ts';
import * as lab from './lab.ts';
import * as memory from './memory.ts';

export interface CommandModule {
  register(program: Command): void;
}

/** Every command module, in the order `vmlens --help` lists them. */
export const commandModules: readonly CommandModule[] = [info, memory, kernel, lab];
