#!/usr/bin/env bash
# Set up everything the project needs, from the package registries alone. Idempotent: a second run
# with nothing changed returns at once.
#   VENV=path    the virtual environment to create or reuse (default: .venv in the repository)
#   PYTHON=cmd   the Python that creates it (default: python3; 3.11 is what the pins are tested on)
#   DETECTRON2_SOURCE=path  build Detectron2 from this source tree or archive (.tar.gz/.tgz/.zip;
#                e.g. a checkout or `git archive` of upstream main) with its own C++ ops, compiled
#                for the CPU (CUDA too if torch sees a GPU and nvcc; a few minutes on 2 cores).
#                The compiled wheel is cached under .cache/detectron2/, keyed by the source.
#   TORCH_FROM=venv  do not install PyTorch: use that environment's torch/torchvision (linked into
#                this one and put on its path with a .pth file; this environment's own packages
#                come first). scripts/test.sh uses it for its Detectron2-main leg.
# Steps: venv -> torch/torchvision -> Detectron2 (default: v0.6; an installed build with compiled
# ops is kept untouched; otherwise our wheel of the pb1-detectron2 archive with our PyTorch ops.
# With DETECTRON2_SOURCE: that source, compiled) -> this project, editable, with its test extras.
# Pins: constraints.txt; its "Detectron2 v0.6 only" section applies only when v0.6 is installed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
OPS=projects/d2infra/ops/detectron2_c.py
STAMP=$VENV/.imbalance-setup
SRC=${DETECTRON2_SOURCE:-}
TORCH_FROM=${TORCH_FROM:-}
cache=$ROOT/.cache/detectron2
mkdir -p "$cache"

# Identify the source (archive: its sha256; tree: its path and newest file) for the stamp and cache.
src_id=""
if [ -n "$SRC" ]; then
  SRC=$(cd "$(dirname "$SRC")" && pwd)/$(basename "$SRC")
  if [ -f "$SRC" ]; then
    src_id=$(sha256sum "$SRC" | cut -c1-16)
  elif [ -d "$SRC/detectron2" ]; then
    src_id=$( (echo "$SRC"; find "$SRC/detectron2" "$SRC/setup.py" -type f -printf '%T@ %p\n' | sort | tail -1) | sha256sum | cut -c1-16)
  else
    echo "[setup] DETECTRON2_SOURCE=$SRC is neither an archive nor a tree with detectron2/ in it" >&2
    exit 1
  fi
fi
want=$( (cat constraints.txt pyproject.toml tools/detectron2/SOURCE tools/detectron2/*.py "$OPS"; echo "$src_id $TORCH_FROM") | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$PY" -c "import detectron2, d2infra, imbalance" 2>/dev/null; then
  exit 0
fi
start=$(date +%s)
[ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
pip() { "$PY" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
# pip's own exit status is checked by the import checks below.

# The pins for this route: all of constraints.txt for v0.6; for a source whose code no longer uses
# Image.LINEAR (Detectron2 main), only the section above the "Detectron2 v0.6 only" line.
PINS=$ROOT/constraints.txt
if [ -n "$SRC" ]; then
  transform=detectron2/data/transforms/transform.py
  if [ -f "$SRC" ]; then
    case "$SRC" in
      *.zip) code=$(unzip -p "$SRC" "*/$transform" 2>/dev/null || true) ;;
      *) code=$(tar -xOf "$SRC" --wildcards "*/$transform" 2>/dev/null || true) ;;
    esac
  else
    code=$(cat "$SRC/$transform" 2>/dev/null || true)
  fi
  [ -n "$code" ] || { echo "[setup] $SRC has no $transform: not a Detectron2 source" >&2; exit 1; }
  if ! grep -q "Image\.LINEAR\b" <<<"$code"; then
    PINS=$VENV/constraints-main.txt
    sed '/^# ---- Detectron2 v0.6 only/,$d' constraints.txt > "$PINS"
  fi
fi

if [ -n "$TORCH_FROM" ]; then
  echo "[setup] torch and torchvision shared from $TORCH_FROM (not installed again)"
  [ -x "$TORCH_FROM/bin/python" ] || { echo "[setup] TORCH_FROM=$TORCH_FROM is not a virtual environment" >&2; exit 1; }
  ver='import sys; print(sys.version_info[:2])'
  [ "$("$TORCH_FROM/bin/python" -c "$ver")" = "$("$PY" -c "$ver")" ] \
    || { echo "[setup] TORCH_FROM=$TORCH_FROM runs another Python version than $VENV" >&2; exit 1; }
  "$TORCH_FROM/bin/python" tools/detectron2/share_torch.py "$VENV/shared-torch" >/dev/null
  site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # A .pth line is appended to sys.path after this environment's own site-packages.
  echo "$VENV/shared-torch" > "$site/shared_torch.pth"
fi
echo "[setup] torch and the build tools (pins: ${PINS#$ROOT/})"
pip install -c "$PINS" torch torchvision numpy "setuptools" wheel

if [ -n "$SRC" ]; then
  wheels=$cache/source-$src_id
  if ls "$wheels"/detectron2-*.whl >/dev/null 2>&1; then
    echo "[setup] Detectron2 from $SRC: the wheel compiled before (${wheels#$ROOT/})"
  else
    echo "[setup] Detectron2 from $SRC, compiling its C++ ops"
    build=$(mktemp -d "$cache/build.XXXX")
    # Build a copy: the compile writes build/ and a model_zoo/configs link into the tree.
    if [ -f "$SRC" ]; then
      case "$SRC" in *.zip) unzip -q "$SRC" -d "$build" ;; *) tar -xf "$SRC" -C "$build" ;; esac
    else
      cp -a "$SRC" "$build/"
    fi
    # The shallowest setup.py: the archive's top folder (or the tree's root), not a project's.
    src_dir=$(dirname "$(find "$build" -maxdepth 3 -name setup.py | awk -F/ '{print NF, $0}' | sort -n | head -1 | cut -d' ' -f2-)")
    # --no-build-isolation: setup.py imports torch to compile against it. CFLAGS=-g0 (unless set):
    # no debug info, which Python's default flags ask for and which slows the compile.
    t0=$(date +%s)
    CFLAGS=${CFLAGS:--g0} "$PY" -m pip --disable-pip-version-check -q wheel --no-deps --no-build-isolation -w "$wheels" "$src_dir" \
      || { echo "[setup] compiling Detectron2 from $SRC failed" >&2; rm -rf "$build" "$wheels"; exit 1; }
    rm -rf "$build"
    echo "[setup] compiled in $(( $(date +%s) - t0 )) s"
  fi
  pip install -c "$PINS" --force-reinstall --no-deps "$wheels"/detectron2-*.whl
  pip install -c "$PINS" "$wheels"/detectron2-*.whl
elif "$PY" - <<'PYEOF' 2>/dev/null
import detectron2._C as c, sys
sys.exit(0 if c.__file__.endswith((".so", ".pyd")) else 1)
PYEOF
then
  echo "[setup] a Detectron2 with compiled ops is installed: using it untouched"
else
  echo "[setup] Detectron2 v0.6 from the registry archive, with our PyTorch ops"
  source tools/detectron2/SOURCE
  if [ ! -f "$cache/$archive" ] || ! echo "$sha256  $cache/$archive" | sha256sum -c --quiet - 2>/dev/null; then
    rm -f "$cache/$archive"
    # --no-build-isolation: the archive's setup.py imports torch just to write its metadata.
    pip download --no-deps --no-build-isolation "$package" -d "$cache"
  fi
  echo "$sha256  $cache/$archive" | sha256sum -c --quiet - || { echo "[setup] sha256 mismatch for $archive" >&2; exit 1; }
  rm -f "$cache"/detectron2-*.whl
  wheel=$("$PY" tools/detectron2/build_wheel.py "$cache/$archive" "$OPS" "$cache" | tail -1)
  pip install -c "$PINS" --force-reinstall --no-deps "$wheel"
  pip install -c "$PINS" "$wheel"
fi

echo "[setup] this project (editable) and its test tools"
pip install -c "$PINS" --no-build-isolation -e ".[test]"
"$PY" -W ignore -c "import torch, detectron2, detectron2._C, detectron2.modeling, d2infra, imbalance, r3cnn, iou_aware, offset_bin" \
  || { echo "[setup] failed: the packages do not import (see the pip output above)" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[setup] done in $(( $(date +%s) - start )) s; $(du -sh "$VENV" | cut -f1) in $VENV" \
  "(detectron2 $("$PY" -W ignore -c "import detectron2, os; print(os.path.dirname(detectron2.__file__))"))"
