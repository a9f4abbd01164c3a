import type { TestProject } from 'vitest/node';
import { labDown, labList } from '../../src/lab/index.ts';
import { isAlive } from '../../src/lab/state.ts';

/**
 * Runs once per `vitest run`, in the main process. Hands out the run's guest-name prefix,
 * clears away guests left by earlier runs that died before their teardown, and at the end
 * stops this run's guests (all of them: tests/support/lab.ts boots them lazily, in workers).
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const keep = process.env.VMLENS_TEST_KEEP === '1';
  const prefix = keep ? 'test' : `t${process.pid.toString(36)}`;
  project.provide('vmlensLabPrefix', prefix);
  project.provide('vmlensLabOwner', process.pid);

  for (const g of await labList()) {
    if (g.ownerPid !== undefined && !isAlive(g.ownerPid)) await labDown(g.name).catch(() => undefined);
  }

  return async () => {
    if (keep) return;
    for (const g of await labList()) {
      if (g.name.startsWith(`${prefix}-`)) await labDown(g.name).catch(() => undefined);
    }
  };
}
