#!/usr/bin/env bash
# GPU check of the Triton engine, for a CUDA machine, in about 6 minutes (so a rerun fits a 15-minute
# GPU budget):
#   1. the Triton tests on the GPU: every Config variant against the CPU reference (IEEE products:
#      float64 1e-12, float32 1e-5; TF32 within the tolerance documented in
#      tests/backends/test_triton_backend.py), per-kernel tests, determinism, batch == alone, CUDA graphs;
#      every case is reported (no -x);
#   2. the benchmark table of bench/bench_gpu.py (paper-real, width 512 gromov-like, 64 seeds batched
#      against 64 sequential reference runs; Triton at precision ieee and tf32 side by side) and one
#      timed 10⁶-step paper-real run;
#   3. the GPU's numerics fingerprint: SHA-256 of two fixed short runs on the Triton backend
#      (`grokfast fingerprint`), to compare GPUs of one model (bitwise run to run there); the dry
#      run prints the CPU's instead, checked against the committed golden hashes;
#   4. compute-sanitizer --tool memcheck and --tool racecheck over every kernel on tiny models
#      (bench/gpu_kernels_once.py --size tiny): out-of-bounds accesses and shared-memory races;
#   5. Nsight Compute (ncu) on the fused kernel (paper-real) and the rows kernel (gromov width 512)
#      of a 2-step run: registers, achieved occupancy, local-memory bytes, SM and DRAM throughput as
#      a fraction of peak. A missing compute-sanitizer or ncu (looked up on PATH, then
#      $CUDA_HOME/bin, /usr/local/cuda/bin; COMPUTE_SANITIZER / NCU override) is reported and
#      the other steps run. Nsight Systems (nsys) is a user's step (README, "Profiling with Nsight").
#   The dry run adds the static cost model (bench/cost_model.py: SASS instructions per step, the
#   predicted lower bound µs per step beside the README's goals) and runs step 4's program in the
#   interpreter without the tools, saying whether each tool is there.
#
#   bash bench/gpu_check.sh            # on the GPU machine, from anywhere in the repository
#   bash bench/gpu_check.sh --dry-run  # on a CPU machine: the same steps, tiny, in Triton's interpreter
#   bash bench/gpu_check.sh --plan     # print the limits and commands it would run (with --dry-run:
#                                      # the dry run's), run nothing
#
# It runs from a bare copy of the working tree with the machine's own python3 (torch, triton): when
# `import grokfast.kernels` fails there, it installs grokfast editable, without dependencies or a
# network, into a throwaway venv layered on that python's packages, and says so.
#
# Everything printed is also written to $OUT/gpu_check.md (OUT defaults to bench/); the exit status
# is the number of failed steps (2 when grokfast cannot be made importable). Environment: PYTHON
# (default python3), LONG_STEPS (default 10⁶), LONG_BUDGET_S (default 40: the long run stops there
# and reports its rate and projection), GPU_CHECK_VENV (where the throwaway venv goes, default
# $TMPDIR/grokfast-gpu-check-venv). Time limits (each step is interrupted there, killed 5 s later):
# 130 s for the tests, 85 s for the benchmarks, 25 s for the fingerprint, 30 s each for memcheck,
# racecheck and ncu: 6 minutes at most.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=0
PLAN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --plan) PLAN=1 ;;
        *) echo "error: unknown option $arg (use --dry-run and/or --plan)" >&2; exit 2 ;;
    esac
done
OUT_DIR=${OUT:-bench}
REPORT="$OUT_DIR/gpu_check.md"
((PLAN)) && REPORT=/dev/null  # a plan writes nothing
((PLAN)) || mkdir -p "$OUT_DIR"
((PLAN)) || : >"$REPORT"
FAILED=0
TESTS_LIMIT_S=130
BENCH_LIMIT_S=85
FINGERPRINT_LIMIT_S=25
SANITIZER_LIMIT_S=30   # each of memcheck and racecheck
NCU_LIMIT_S=30
COST_LIMIT_S=180       # the dry run's static cost model (compiles 4 kernels on the CPU)
KILL_AFTER_S=5

say() { echo "$@" | tee -a "$REPORT"; }

# step NAME TIMEOUT_S COMMAND...: run, log, count a failure or a timeout, go on
step() {
    local name=$1 limit=$2
    shift 2
    say ""
    say "## $name"
    local t0=$SECONDS
    timeout --signal=INT --kill-after="$KILL_AFTER_S" "$limit" "$@" 2>&1 | tee -a "$REPORT"
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

# find_tool NAME: its path on PATH, in $CUDA_HOME/bin or in /usr/local/cuda/bin; empty if none
find_tool() {
    local dir
    command -v "$1" 2>/dev/null && return 0
    for dir in "${CUDA_HOME:-}" /usr/local/cuda; do
        [[ -n "$dir" && -x "$dir/bin/$1" ]] && echo "$dir/bin/$1" && return 0
    done
    return 0
}
SANITIZER=${COMPUTE_SANITIZER:-$(find_tool compute-sanitizer)}
NCU=${NCU:-$(find_tool ncu)}
KERNELS_TINY=(bench/gpu_kernels_once.py --size tiny --steps 2)
KERNELS_REAL=(bench/gpu_kernels_once.py --size real --steps 2)
MEMCHECK=(--tool memcheck --leak-check no --error-exitcode 1 --print-limit 20)
RACECHECK=(--tool racecheck --error-exitcode 1 --print-limit 20)
NCU_ARGS=(--kernel-name "regex:_fused_steps_kernel|_rows_fwd_bwd_kernel" --launch-count 2
          --section SpeedOfLight --section Occupancy --section LaunchStats
          --metrics l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum,l1tex__t_bytes_pipe_lsu_mem_local_op_st.sum)

# tool_step NAME LIMIT TOOL_PATH TOOL_NAME ARGS...: step NAME running TOOL_PATH ARGS..., or say that
# the tool is missing (not a failed step) and go on
tool_step() {
    local name=$1 limit=$2 tool=$3 tool_name=$4
    shift 4
    if [[ -z "$tool" ]]; then
        say ""
        say "## $name"
        say "SKIPPED: $tool_name not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin); the other steps run"
        return 0
    fi
    step "$name" "$limit" "$tool" "$@"
}

# make_importable: use $PY as it is when it imports grokfast.kernels from here; else an editable
# install into a throwaway venv that sees $PY's packages (no dependencies, no index, no network).
make_importable() {
    if "$PY" -c "import grokfast.kernels" >/dev/null 2>&1; then
        say "grokfast: importable with $PY as it is (nothing installed)"
        return 0
    fi
    local venv="${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/grokfast-gpu-check-venv}" log
    log=$(mktemp)
    rm -rf "$venv"
    # --without-pip: pip (and torch, triton, pytest) come from $PY's site directories, which a .pth
    # file adds; --system-site-packages alone would miss them when $PY is itself a venv.
    if "$PY" -m venv --system-site-packages --without-pip "$venv" >"$log" 2>&1 &&
        "$PY" -c "import site, sys; print('import site; ' + '; '.join(f'site.addsitedir({d!r})' \
            for d in site.getsitepackages() + [site.getusersitepackages()]))" \
            >"$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_grokfast_parent.pth" &&
        "$venv/bin/python" -m pip install --no-deps --no-build-isolation --no-index -q -e . >>"$log" 2>&1 &&
        "$venv/bin/python" -c "import grokfast.kernels" >>"$log" 2>&1; then
        PY="$venv/bin/python"
        say "grokfast: installed editable (no deps, no network) into the throwaway venv $venv on top of $(command -v "${PYTHON:-python3}")'s packages"
        rm -f "$log"
        return 0
    fi
    say "grokfast: cannot be made importable with $PY (needs pip and setuptools ≥ 64 there):"
    tail -n 20 "$log" | tee -a "$REPORT"
    rm -f "$log"
    return 1
}

say "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ((DRY)); then
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    say "dry run: CPU, Triton's interpreter, tiny models (checks this script, not the GPU)"
    TESTS=(tests/kernels/test_kernel_compile.py "tests/backends/test_triton_backend.py::test_engine_history_matches_reference"
           "tests/backends/test_triton_backend.py::test_tf32_within_documented_tolerance")
    BENCH=(bench/bench_gpu.py --dry-run --long 30)
    if "$PY" -c "import numba" >/dev/null 2>&1; then
        FINGERPRINT=(-m grokfast fingerprint --runs paper-real-16-models)
    else  # the GPU machine's stack has no numba: the portable CPU path cannot run there
        FINGERPRINT=(-c "print('numerics fingerprint skipped: numba is not installed for this python')")
    fi
    TESTS_LIMIT_S=480  # no GPU budget here; a 2-core CPU compiles every kernel for sm_90 (~1–2 min)
    SANITIZER_LIMIT_S=120  # the interpreter runs the sanitizers' program (~15 s on 2 cores)
else
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
        --format=csv,noheader 2>&1 | tee -a "$REPORT"
    TESTS=(tests/backends/test_triton_backend.py tests/kernels/test_kernel_rows.py tests/kernels/test_kernel_update.py)
    BENCH=(bench/bench_gpu.py --repeats 5 --long "${LONG_STEPS:-1000000}" --long-budget "${LONG_BUDGET_S:-40}")
    FINGERPRINT=(-m grokfast fingerprint --backend triton --device cuda
                 --runs paper-real-float32,paper-real-16-models)
fi
if ((PLAN)); then
    echo "tests_limit_s=$TESTS_LIMIT_S"
    echo "bench_limit_s=$BENCH_LIMIT_S"
    echo "fingerprint_limit_s=$FINGERPRINT_LIMIT_S"
    echo "kill_after_s=$KILL_AFTER_S"
    echo "long_budget_s=${LONG_BUDGET_S:-40}"
    echo "sanitizer_limit_s=$SANITIZER_LIMIT_S"
    echo "ncu_limit_s=$NCU_LIMIT_S"
    echo "tests: $PY -m pytest -q -p no:cacheprovider -o addopts= -rsP ${TESTS[*]}"
    echo "bench: $PY ${BENCH[*]}"
    echo "fingerprint: $PY ${FINGERPRINT[*]}"
    # what a GPU run runs under each tool (the dry run: the program alone, and the cost model)
    for t in "memcheck:${SANITIZER:-}:compute-sanitizer:${MEMCHECK[*]} $PY ${KERNELS_TINY[*]}" \
             "racecheck:${SANITIZER:-}:compute-sanitizer:${RACECHECK[*]} $PY ${KERNELS_TINY[*]}" \
             "ncu:${NCU:-}:ncu:${NCU_ARGS[*]} $PY ${KERNELS_REAL[*]}"; do
        IFS=: read -r name path tool args <<<"$t"
        if [[ -n "$path" ]]; then
            echo "$name: $path $args"
        else
            echo "$name: SKIPPED ($tool not found) $args"
        fi
    done
    if ((DRY)); then
        echo "cost_limit_s=$COST_LIMIT_S"
        echo "cost: $PY bench/cost_model.py"
        echo "kernels: $PY ${KERNELS_TINY[*]}"
    fi
    exit 0
fi
make_importable || exit 2
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rsP)  # $PY as make_importable left it
"$PY" -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$REPORT"

if "$PY" -c "import pytest" >/dev/null 2>&1; then
    step "GPU correctness tests" "$TESTS_LIMIT_S" "${PYTEST[@]}" "${TESTS[@]}"
else
    say ""
    say "## GPU correctness tests"
    say "SKIPPED: pytest is not installed for $PY (no registry here to fetch it); the benchmarks still run"
    FAILED=$((FAILED + 1))
fi
step "benchmark table and the long paper-real run" "$BENCH_LIMIT_S" "$PY" "${BENCH[@]}"
step "numerics fingerprint" "$FINGERPRINT_LIMIT_S" "$PY" "${FINGERPRINT[@]}"
if ((DRY)); then
    step "static cost model (sm_90 SASS, H100 lower bound)" "$COST_LIMIT_S" "$PY" bench/cost_model.py
    step "the sanitizers' program, in the interpreter" "$SANITIZER_LIMIT_S" "$PY" "${KERNELS_TINY[@]}"
    say "compute-sanitizer: ${SANITIZER:-not found (a GPU run skips memcheck and racecheck)}"
    say "ncu: ${NCU:-not found (a GPU run skips the Nsight Compute step)}"
else
    tool_step "compute-sanitizer memcheck, every kernel" "$SANITIZER_LIMIT_S" "$SANITIZER" \
        compute-sanitizer "${MEMCHECK[@]}" "$PY" "${KERNELS_TINY[@]}"
    tool_step "compute-sanitizer racecheck, every kernel" "$SANITIZER_LIMIT_S" "$SANITIZER" \
        compute-sanitizer "${RACECHECK[@]}" "$PY" "${KERNELS_TINY[@]}"
    tool_step "Nsight Compute: fused (paper-real) and rows (gromov 512) kernels" "$NCU_LIMIT_S" \
        "$NCU" ncu "${NCU_ARGS[@]}" "$PY" "${KERNELS_REAL[@]}"
fi

say ""
say "failed steps: $FAILED (report: $REPORT)"
exit "$FAILED"
