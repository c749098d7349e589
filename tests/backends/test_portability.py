"""Portable numerics: the golden runs give the same SHA-256 of parameters and history under every
code path this CPU can execute, and the committed golden hashes (grokfast/reproduce/golden_hashes.json).

Each variant runs tests/portability_check.py in a fresh process: numba compiled for another target
(NUMBA_CPU_NAME + NUMBA_CPU_FEATURES, fresh NUMBA_CACHE_DIR: generic x86-64 with SSE2 only,
Haswell AVX2, Skylake AVX-512), torch's CPU capability (ATEN_CPU_CAPABILITY), MKL's code path
(MKL_ENABLE_INSTRUCTIONS, or MKL_CBWR=COMPATIBLE), glibc's libm variants (GLIBC_TUNABLES) and 1 or 2
threads. A variant this CPU cannot run is skipped.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grokfast.reproduce.fingerprint import GOLDEN_RUNS, golden_hashes

CHECK = Path(__file__).parents[1] / "portability_check.py"
HASWELL = "+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+avx,+avx2,+fma,+bmi,+bmi2,+f16c,+lzcnt,+movbe"
SKYLAKE_AVX512 = HASWELL + ",+avx512f,+avx512cd,+avx512bw,+avx512dq,+avx512vl"
# glibc's libm picks its exp / log / sin / cos variant (FMA or not) by CPU features: hide them
GLIBC_NO_AVX = "glibc.cpu.hwcaps=-AVX,-AVX2,-FMA,-AVX512F,-AVX512DQ,-AVX512VL,-AVX512BW"
# name → (environment, threads, CPU flags needed)
VARIANTS = {
    "host": ({}, 1, ()),
    "generic-sse2-aten-default-mkl-sse42-glibc-no-avx-2threads": (
        dict(NUMBA_CPU_NAME="generic", ATEN_CPU_CAPABILITY="default",
             MKL_ENABLE_INSTRUCTIONS="SSE4_2", GLIBC_TUNABLES=GLIBC_NO_AVX), 2, ()),
    "haswell-avx2-aten-avx2-mkl-cbwr-compatible": (
        dict(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=HASWELL, ATEN_CPU_CAPABILITY="avx2",
             MKL_CBWR="COMPATIBLE"), 1, ("avx2", "fma")),
    "skylake-avx512-aten-avx512-2threads": (
        dict(NUMBA_CPU_NAME="skylake-avx512", NUMBA_CPU_FEATURES=SKYLAKE_AVX512,
             ATEN_CPU_CAPABILITY="avx512", MKL_ENABLE_INSTRUCTIONS="AVX512"), 2,
        ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
}


def cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split()}


def run_variant(name: str, tmp_path: Path) -> dict:
    env_changes, threads, needs = VARIANTS[name]
    if needs and not set(needs) <= cpu_flags():
        pytest.skip(f"this CPU lacks {', '.join(sorted(set(needs) - cpu_flags()))}")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MKL_", "NUMBA_CPU", "ATEN_CPU"))}
    env.update(env_changes)
    if env_changes:  # another numba target must not reuse this machine's cached machine code
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")
    proc = subprocess.run([sys.executable, str(CHECK), str(threads)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_golden_runs_match_golden_hashes_under_code_path(variant, tmp_path):
    got, gold = run_variant(variant, tmp_path), golden_hashes()
    assert set(gold) == set(GOLDEN_RUNS), "golden_hashes.json does not list every golden run"
    bad = {k: (got[k][:16], gold[k][:16]) for k in GOLDEN_RUNS if got[k] != gold[k]}
    assert not bad, (f"under {variant} these runs differ from their golden hashes (got, golden): "
                     f"{bad}; a deliberate change of numerics regenerates them with "
                     f"`grokfast fingerprint --write` (README, changelog of results)")
