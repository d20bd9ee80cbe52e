#!/usr/bin/env bash
# A long scripted conversation on the virtual sound card with the generated models (barge-ins included):
#   scripts/soak.sh [MINUTES] [test|real-size]     default: 30 minutes, tiny test models
# Reports RSS at start/end, TTFA p50 in the first and last 5 minutes, overruns, underruns, worst loop lag,
# and turns answered vs fed; raw numbers in soak.json.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/voicecli bench --soak-minutes "${1:-30}" --models "${2:-test}" --json soak.json
