#!/usr/bin/env bash
# The whole test suite from a fresh machine: set-up, lint, type check, generated models, virtual sound card, pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k chunker).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check voicecli tests scripts; ruff format --check voicecli tests scripts
echo "== mypy"; mypy
echo "== pytest"
# The virtual sound card is started once by the test session (tests/vsound.py) and stopped at its end.
pytest -q -ra "$@"
