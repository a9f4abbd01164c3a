#!/usr/bin/env bash
# The whole test suite: type check, then every test (lab guests are booted and shared by the run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
npx tsc --noEmit -p .
npx vitest run "$@"
