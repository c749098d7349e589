#!/usr/bin/env bash
# GPU check of the Triton engine, for a CUDA machine, in under 8 minutes:
#   1. the Triton tests on the GPU: every Config variant against the CPU reference (IEEE products:
#      float64 1e-12, float32 1e-5; TF32 within the tolerance documented in
#      tests/test_triton_backend.py), per-kernel tests, determinism, batch == alone, CUDA graphs;
#   2. the benchmark table of bench/bench_gpu.py (paper-real, width 512 gromov-like, 64 seeds batched
#      against 64 sequential reference runs) and one timed 10⁶-step paper-real run.
#
#   bash bench/gpu_check.sh            # on the GPU machine, from anywhere in the repository
#   bash bench/gpu_check.sh --dry-run  # on a CPU machine: the same steps, tiny, in Triton's interpreter
#
# Everything printed is also written to $OUT/gpu_check.md (OUT defaults to bench/); the exit status
# is the number of failed steps. Environment: PYTHON (default python3), LONG_STEPS (default 10⁶),
# LONG_BUDGET_S (default 150: the long run stops there and reports its rate and projection).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-bench}
REPORT="$OUT_DIR/gpu_check.md"
mkdir -p "$OUT_DIR"
: >"$REPORT"
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
FAILED=0

say() { echo "$@" | tee -a "$REPORT"; }

# step NAME TIMEOUT_S COMMAND...: run, log, count a failure or a timeout, go on
step() {
    local name=$1 limit=$2
    shift 2
    say ""
    say "## $name"
    local t0=$SECONDS
    timeout --signal=INT "$limit" "$@" 2>&1 | tee -a "$REPORT"
    local rc=${PIPESTATUS[0]}
    if ((rc == 124)); then
        say "TIMEOUT after ${limit} s: $name"
    fi
    if ((rc != 0)); then
        FAILED=$((FAILED + 1))
        say "FAILED (exit $rc, $((SECONDS - t0)) s): $name"
    else
        say "ok ($((SECONDS - t0)) s): $name"
    fi
}

say "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ((DRY)); then
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    say "dry run: CPU, Triton's interpreter, tiny models (checks this script, not the GPU)"
    TESTS=(tests/test_kernel_compile.py "tests/test_triton_backend.py::test_engine_history_matches_reference"
           "tests/test_triton_backend.py::test_tf32_within_documented_tolerance")
    BENCH=(bench/bench_gpu.py --dry-run --long 30)
else
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
        --format=csv,noheader 2>&1 | tee -a "$REPORT"
    TESTS=(tests/test_triton_backend.py tests/test_kernel_rows.py tests/test_kernel_update.py)
    BENCH=(bench/bench_gpu.py --repeats 5 --long "${LONG_STEPS:-1000000}" --long-budget "${LONG_BUDGET_S:-150}")
fi
"$PY" -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$REPORT"

step "GPU correctness tests" 270 "$PY" -m pytest -q -x -p no:cacheprovider -o addopts="" -rs "${TESTS[@]}"
step "benchmark table and the long paper-real run" 330 "$PY" "${BENCH[@]}"

say ""
say "failed steps: $FAILED (report: $REPORT)"
exit "$FAILED"
