#!/usr/bin/env bash
# The GPU check, in one command, for a GPU machine as it comes (offline, its own Python and torch with
# CUDA and Triton): installs the loss peers from wheels carried beside the checkout, runs the
# CUDA-marked tests, the loss benchmark in bf16 at Cut-Cross-Entropy's Gemma-2 shape against its peers,
# and the default run for two minutes on the GPU, then writes a dated report.
#
#   bash bench/gpu.sh                      # on the GPU machine: report in docs/benchmarks/DATE-gpu.md
#   bash bench/gpu.sh --dry-run --out DIR  # the same steps on CPU at tiny sizes (CI runs this)
#   bash bench/gpu.sh --fetch-wheels       # beforehand, where PyPI is reachable: bench/wheels/ for Python 3.12
#
# Wheels: bench/wheels/ (ignored by git; carry it to the GPU machine). The peers are pure-Python wheels
# (cut-cross-entropy, liger-kernel); everything else they need (torch, triton) is on the machine.
# Each step has its own time limit, so the whole stays within 10 minutes; a failing step is reported
# and the next one still runs; the exit code is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DRY=0
OUT=""
WHEELS="$ROOT/bench/wheels"
PY="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --wheels) WHEELS="$2"; shift ;;
    --fetch-wheels)
      mkdir -p "$WHEELS"
      exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d "$WHEELS" "cut-cross-entropy>=25.1,<26" "liger-kernel>=0.5,<1" ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "bench/gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

DATE="$(date -u +%Y-%m-%d)"
if [ -z "$OUT" ]; then
  if [ "$DRY" = 1 ]; then OUT="$ROOT/runs/gpu-dry-run"; else OUT="$ROOT/docs/benchmarks"; fi
fi
mkdir -p "$OUT"
REPORT="$OUT/$DATE-gpu$([ "$DRY" = 1 ] && echo -dry-run).md"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"  # headway from this checkout, no build step offline
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; SHAPE="64,32,1000"; REPEATS=2; BENCH_EXTRA=(--skip-memory); BUDGET_ARGS=(--steps 3 --size tiny --seq-len 64 --batch-size 2)
  DATA=(--data "$WORK/corpus" --tokenizer bytes --val-fraction 0.2 --infill-lines 0 --threads 1)
  mkdir -p "$WORK/corpus"
  for i in 0 1 2 3 4; do printf 'def f%s(x):\n    return x * %s  # ϕ\n' "$i" "$i" > "$WORK/corpus/m$i.py"; done
else
  DEVICE=cuda; SHAPE="8192,2304,256000"; REPEATS=5; BENCH_EXTRA=(); BUDGET_ARGS=(--time-budget 120); DATA=()
fi

FAILED=0
section() { printf '\n## %s\n\n' "$1" >> "$REPORT"; }
# step NAME LIMIT_S CMD...: runs CMD with a time limit, its output in a fenced block of the report
step() {
  local name="$1" limit="$2"; shift 2
  section "$name"
  echo "\$ $*" | sed "s#$ROOT/##g" >> "$REPORT"
  echo '```' >> "$REPORT"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$WORK/step.log" 2>&1
  local rc=$?
  tail -n 60 "$WORK/step.log" >> "$REPORT"
  echo '```' >> "$REPORT"
  echo "exit $rc after $((SECONDS - t0)) s (limit $limit s)" >> "$REPORT"
  [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
  echo "bench/gpu.sh: $name: exit $rc ($((SECONDS - t0)) s)"
}

{
  echo "# GPU check$([ "$DRY" = 1 ] && echo ' (dry run on CPU, tiny sizes)')"
  echo
  echo "- Date: $DATE. Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
  "$PY" - <<'PYINFO'
import platform
import torch
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine()
print(f"- Machine: {dev}; Python {platform.python_version()}; torch {torch.__version__}"
      f" (CUDA {torch.version.cuda or 'none'}); triton "
      + (__import__("triton").__version__ if __import__("importlib").util.find_spec("triton") else "absent"))
PYINFO
  echo "- Command: \`bash bench/gpu.sh$([ "$DRY" = 1 ] && echo ' --dry-run')\`"
} > "$REPORT"

section "Peers installed from $(basename "$WHEELS")/"
if ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl >> "$WORK/pip.log" 2>&1 \
    && echo "installed: $(cd "$WHEELS" && ls ./*.whl | xargs -n1 basename | tr '\n' ' ')" >> "$REPORT" \
    || { echo "pip failed: $(tail -n 3 "$WORK/pip.log")" >> "$REPORT"; FAILED=$((FAILED + 1)); }
else
  echo "no wheels in $(basename "$WHEELS")/: the peers run only where already installed" >> "$REPORT"
fi

section "Python packages the steps need"
"$PY" - >> "$REPORT" 2>&1 <<'PYCHECK'
import importlib.util
need = ["torch", "numpy", "pytest", "hypothesis", "tokenizers", "safetensors", "tqdm", "matplotlib", "yaml"]
missing = [n for n in need if importlib.util.find_spec(n) is None]
print("all present: " + ", ".join(need) if not missing else
      "missing: " + ", ".join(missing) + " (put their wheels in bench/wheels/ beside the peers')")
raise SystemExit(1 if missing else 0)
PYCHECK
[ $? = 0 ] || FAILED=$((FAILED + 1))

step "CUDA-marked tests" 90 "$PY" -m pytest -q -m cuda -p no:cacheprovider "$ROOT/tests/loss"
step "The loss in bf16 at N,H,V = $SHAPE" 240 "$PY" "$ROOT/bench/linear_ce.py" --device "$DEVICE" \
  --dtype bfloat16 --shape "$SHAPE" --repeats "$REPEATS" "${BENCH_EXTRA[@]}"
step "The default run on $DEVICE (${BUDGET_ARGS[*]})" 200 "$PY" -m headway train --device "$DEVICE" \
  --out "$WORK/run" "${BUDGET_ARGS[@]}" "${DATA[@]}"

echo "bench/gpu.sh: report in $REPORT ($FAILED failed step(s))"
exit "$FAILED"
