#!/usr/bin/env bash
# Mutation testing with mutmut 3 (a dev tool, not a project dependency; not part of CI):
#   .venv/bin/python -m pip install "mutmut==3.8.1"
#   bash tests/mutation/run.sh TARGET        # TARGET: coder | output_layers | samplers | iou_branch | r3cnn
#
# mutmut never touches this repository: the work tree (without .git, .venv, outputs) is copied to
# $MUT_ROOT/TARGET (default /tmp/mut), with the packages of projects/ moved to the copy's top level
# (mutmut derives module names from file paths: offset_bin/coder.py -> offset_bin.coder, as the tests
# import it). mutmut then mutates a second copy in $MUT_ROOT/TARGET/mutants/ and runs, for each
# mutant, only the tests of that target (below) that execute the mutated function.
# Results: `mutmut results` / `mutmut show NAME` in $MUT_ROOT/TARGET; the summary is printed at the
# end (killed, survived, timeouts, no tests). Heavy: wrap in `flock /tmp/heavy.lock` on a shared box.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
MUTMUT=$(dirname "$PY")/mutmut
TARGET=${1:?usage: run.sh coder|output_layers|samplers|iou_branch|r3cnn}
case "$TARGET" in  # the module(s) to mutate, and the test files that run for its mutants
  coder)         only='"offset_bin/coder.py"';               tests="tests/test_offset_bin_*.py" ;;
  output_layers) only='"offset_bin/output_layers.py"';       tests="tests/test_offset_bin_*.py" ;;
  samplers)      only='"imbalance/samplers/*.py"';           tests="tests/test_samplers_*.py" ;;
  iou_branch)    only='"iou_aware/iou_branch.py"';           tests="tests/test_iou_aware_*.py tests/test_iou_branch_*.py" ;;
  r3cnn)         only='"r3cnn/roi_heads.py"';                tests="tests/test_r3cnn_*.py" ;;
  *) echo "unknown target $TARGET" >&2; exit 2 ;;
esac
pkg=${only%%/*}; pkg=${pkg#\"}
tests=$(cd "$REPO" && ls $tests | sed 's/.*/"&"/' | paste -sd, -)
WORK=${MUT_ROOT:-/tmp/mut}/$TARGET
rm -rf "$WORK" && mkdir -p "$WORK"
# The work tree as it is (committed or not), without the heavy or generated parts.
tar -C "$REPO" --exclude='./.venv*' --exclude=./.git --exclude=./output --exclude=./datasets \
    --exclude=./.cache --exclude='*/__pycache__' --exclude=./mutants -cf - . | tar -C "$WORK" -xf -
mv "$WORK"/projects/* "$WORK"/ && rmdir "$WORK/projects"
others=$(cd "$WORK" && ls -d */ | tr -d / | grep -vx -e "$pkg" -e tests -e mutants | sed 's/.*/"&"/' | paste -sd, -)
cat >> "$WORK/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["$pkg"]
only_mutate = [$only]
also_copy = [$others, "train_net.py", "demo.py"]
pytest_add_cli_args_test_selection = [$tests]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
# torch is not fork-safe after its thread pools start: fork the workers from a clean server.
process_isolation = "forkserver"
TOML
cd "$WORK"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# TIME_LIMIT=seconds stops the run there (0: none); the mutants not run yet count as "not checked".
timeout -s INT -k 60 "${TIME_LIMIT:-0}" "$MUTMUT" run --max-children "${MAX_CHILDREN:-2}" || true
"$MUTMUT" results --all true > results.txt 2>&1 || true
# Per mutated module: killed / survived / other (timeout, suspicious, no tests, ...), and the score.
echo "== $TARGET, $(date -u +%F), mutmut $("$PY" -c 'import importlib.metadata as m; print(m.version("mutmut"))') =="
"$PY" - results.txt <<'PYEOF'
import collections, re, sys
counts = collections.defaultdict(collections.Counter)
for line in open(sys.argv[1]):
    m = re.match(r"\s*(\S+?)\.x[_\u01c1].*__mutmut_\d+: (.+)$", line)
    if m:
        counts[m.group(1)][m.group(2).strip()] += 1
for module, c in sorted(counts.items()):
    total, killed = sum(c.values()), c["killed"]
    print(f"{module}: {total} mutants, {killed} killed, {c['survived']} survived, "
          f"other {dict((k, v) for k, v in c.items() if k not in ('killed', 'survived'))}, "
          f"score {killed / total:.1%}")
PYEOF
echo "survivors: grep survived $WORK/results.txt; diff: cd $WORK && $MUTMUT show NAME"
