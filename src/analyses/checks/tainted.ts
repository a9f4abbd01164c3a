import { CheckReport, type Check, type CheckContext, type CheckResult } from './types.ts';
export const tainted: Check = { name: 'tainted', description: 'x', run: (_ctx: CheckContext): CheckResult => new CheckReport('tainted').result() };
