#!/usr/bin/env bash
# Run the test suite: sets up .venv with the pinned packages on a fresh machine, then pytest.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ensure_venv
cd "$ROOT"
exec "$PY" -m pytest "${@:--q}"
