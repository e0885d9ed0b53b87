#!/usr/bin/env bash
# Set up everything the project needs, from the package registries alone. Idempotent: a second run
# with nothing changed returns at once.
#   VENV=path    the virtual environment to create or reuse (default: .venv in the repository)
#   PYTHON=cmd   the Python that creates it (default: python3; 3.11 is what the pins are tested on)
# Steps: venv -> pinned torch/torchvision -> Detectron2 v0.6 (an installed build with compiled ops is
# kept untouched; otherwise our wheel of the pb1-detectron2 archive with our PyTorch ops) -> this
# project, editable, with its test extras.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
OPS=projects/d2infra/ops/detectron2_c.py
STAMP=$VENV/.imbalance-setup
want=$(cat constraints.txt pyproject.toml tools/detectron2/SOURCE tools/detectron2/build_wheel.py "$OPS" | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$PY" -c "import detectron2, d2infra, imbalance" 2>/dev/null; then
  exit 0
fi
start=$(date +%s)
[ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
pip() { "$PY" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
# pip's own exit status is checked by the import checks below.

echo "[setup] torch and the pinned build tools"
pip install -c constraints.txt torch torchvision numpy "setuptools" wheel

if "$PY" - <<'PYEOF' 2>/dev/null
import detectron2._C as c, sys
sys.exit(0 if c.__file__.endswith((".so", ".pyd")) else 1)
PYEOF
then
  echo "[setup] a Detectron2 with compiled ops is installed: using it untouched"
else
  echo "[setup] Detectron2 v0.6 from the registry archive, with our PyTorch ops"
  source tools/detectron2/SOURCE
  cache=$ROOT/.cache/detectron2
  mkdir -p "$cache"
  if [ ! -f "$cache/$archive" ] || ! echo "$sha256  $cache/$archive" | sha256sum -c --quiet - 2>/dev/null; then
    rm -f "$cache/$archive"
    # --no-build-isolation: the archive's setup.py imports torch just to write its metadata.
    pip download --no-deps --no-build-isolation "$package" -d "$cache"
  fi
  echo "$sha256  $cache/$archive" | sha256sum -c --quiet - || { echo "[setup] sha256 mismatch for $archive" >&2; exit 1; }
  rm -f "$cache"/detectron2-*.whl
  wheel=$("$PY" tools/detectron2/build_wheel.py "$cache/$archive" "$OPS" "$cache" | tail -1)
  pip install -c constraints.txt --force-reinstall --no-deps "$wheel"
  pip install -c constraints.txt "$wheel"
fi

echo "[setup] this project (editable) and its test tools"
pip install -c constraints.txt --no-build-isolation -e ".[test]"
"$PY" -W ignore -c "import detectron2, detectron2._C, detectron2.modeling, d2infra, imbalance, r3cnn, iou_aware, offset_bin" \
  || { echo "[setup] failed: the packages do not import (see the pip output above)" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[setup] done in $(( $(date +%s) - start )) s; $(du -sh "$VENV" | cut -f1) in $VENV"
