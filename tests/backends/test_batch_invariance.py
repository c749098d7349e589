"""Bitwise batch invariance on any x86 CPU: model i of a launch equals the same model alone.

MKL picks its GEMM code path by CPU (Intel or AMD, AVX2 or AVX-512), by thread count and by the
alignment of the matrices, so a result that is bitwise on one machine may not be on the next. Each
case runs tests/batch_invariance_check.py in a fresh process under a forced MKL code path, with
MKL_CBWR unset, so that one machine exercises what differs between machines.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECK = Path(__file__).parents[1] / "batch_invariance_check.py"
# MKL_ENABLE_INSTRUCTIONS caps the instruction set MKL dispatches to (None: MKL's own choice)
CODE_PATHS = [None, "AVX2", "AVX512", "SSE4_2"]


@pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])
@pytest.mark.parametrize("isa", CODE_PATHS, ids=[f"mkl-{p or 'default'}" for p in CODE_PATHS])
def test_batched_equals_alone_under_mkl_code_path(isa, threads):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MKL_")}
    if isa:
        env["MKL_ENABLE_INSTRUCTIONS"] = isa
    env["MKL_VERBOSE"] = "0"
    proc = subprocess.run([sys.executable, str(CHECK), str(threads)], env=env,
                          capture_output=True, text=True, timeout=600)
    print(proc.stdout, proc.stderr[-3000:])
    assert proc.returncode == 0, f"batch != alone under MKL {isa or 'default'}, {threads} " \
                                 f"thread(s):\n{proc.stdout}\n{proc.stderr[-3000:]}"
