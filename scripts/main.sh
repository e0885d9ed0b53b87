#!/usr/bin/env bash
# The main job: set up if needed, then train the flagship model (R^3-CNN) on the embedded shapes dataset,
# evaluate it with COCOEvaluator and print the AP tables. Extra arguments go to train_net.py
# (e.g. SOLVER.MAX_ITER 300, --num-gpus 2, or a different --config-file).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
CONFIG=${CONFIG:-configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml}
exec "${VENV:-$ROOT/.venv}/bin/python" train_net.py --config-file "$CONFIG" "$@"
