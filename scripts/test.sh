#!/usr/bin/env bash
# Set up if needed, then run the test suite on each Detectron2 the project supports ("legs"):
#   v0.6   the default install (scripts/setup.sh) in $VENV (default .venv);
#   main   Detectron2 main compiled from its source snapshot, in $MAIN_VENV (default .venv-main),
#          which shares the first environment's torch (setup.sh TORCH_FROM=...) and has its own
#          Detectron2, numpy and Pillow. The snapshot is $DETECTRON2_MAIN_SOURCE (default: the
#          shared/ folder beside the clone, as on CI); without it the leg is skipped with a message.
# Extra arguments go to pytest, on every leg. LEGS="v0.6" (or "main") runs one leg only.
# Each leg's setup and test times are printed; the exit status is non-zero if any leg fails.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-$ROOT/.venv}
MAIN_VENV=${MAIN_VENV:-$ROOT/.venv-main}
MAIN_SOURCE=${DETECTRON2_MAIN_SOURCE:-$ROOT/../shared/detectron2/detectron2-main-02b5c4e.tar.gz}
LEGS=${LEGS:-v0.6 main}

failed=()
summary=()
run_leg() {  # name, venv, setup environment (VAR=value ...) -- pytest arguments
  local name=$1 venv=$2 t0 t1 t2 rc
  shift 2
  local setup_env=()
  while [ "$1" != "--" ]; do setup_env+=("$1"); shift; done
  shift
  echo "[test] leg $name: setting up $venv"
  t0=$(date +%s)
  if ! env VENV="$venv" "${setup_env[@]}" bash scripts/setup.sh; then
    failed+=("$name (setup)")
    summary+=("$name: setup FAILED after $(( $(date +%s) - t0 )) s")
    return
  fi
  t1=$(date +%s)
  echo "[test] leg $name: $("$venv/bin/python" -W ignore -c 'import detectron2, detectron2._C as c, os; print("detectron2", detectron2.__version__, "from", os.path.dirname(detectron2.__file__), "with", "our PyTorch ops" if c.__file__.endswith(".py") else "its compiled ops")')"
  "$venv/bin/python" -m pytest "$@"
  rc=$?
  t2=$(date +%s)
  [ "$rc" -eq 0 ] || failed+=("$name")
  summary+=("$name: setup $(( t1 - t0 )) s, tests $(( t2 - t1 )) s, pytest exit status $rc")
}

for leg in $LEGS; do
  case "$leg" in
    v0.6) run_leg v0.6 "$VENV" -- "$@" ;;
    main)
      if [ -f "$MAIN_SOURCE" ] || [ -d "$MAIN_SOURCE" ]; then
        [ -x "$VENV/bin/python" ] || VENV=$VENV bash scripts/setup.sh  # the torch it shares
        run_leg main "$MAIN_VENV" DETECTRON2_SOURCE="$MAIN_SOURCE" TORCH_FROM="$VENV" -- "$@"
      else
        summary+=("main: SKIPPED, no Detectron2 main snapshot at $MAIN_SOURCE (set DETECTRON2_MAIN_SOURCE to a source tree or archive to run it)")
      fi ;;
    *) echo "[test] unknown leg '$leg' in LEGS (known: v0.6 main)" >&2; exit 2 ;;
  esac
done

echo "[test] ---- summary ----"
printf '[test] %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "[test] FAILED: ${failed[*]}"
  exit 1
fi
