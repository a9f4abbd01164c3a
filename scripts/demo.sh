#!/usr/bin/env bash
# The main job on the built-in lab guest: boot it if it is not up, then show what vmlens sees.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bin/vmlens lab up
bin/vmlens --lab default overview
