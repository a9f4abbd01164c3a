import { existsSync } from 'node:fs';
import { defineConfig } from 'vitest/config';

const globalSetup = 'tests/support/global-setup.ts';

export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    // Lab guests boot under TCG (tens of seconds); tests that use them share one boot per run.
    testTimeout: 120_000,
    hookTimeout: 600_000,
    pool: 'forks',
    maxWorkers: 2,
    globalSetup: existsSync(globalSetup) ? [globalSetup] : [],
  },
});
