#!/usr/bin/env bash
# Set up if needed, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
exec "${VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
