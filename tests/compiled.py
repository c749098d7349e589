"""The compiled code of numba kernels for another CPU target, read in a fresh process (numba picks
its target when it starts, and its cache keys on the host): the one helper the assembly tests of
kernels/cpu share."""
import os
import subprocess
import sys
from typing import Optional

# the features of a Haswell (AVX2 + FMA3), for NUMBA_CPU_FEATURES with NUMBA_CPU_NAME=haswell
HASWELL = "+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+avx,+avx2,+fma,+bmi,+bmi2"


def compiled(script: str, cache, cpu_name: str, features: Optional[str] = None) -> list:
    """Run `script` (Python that prints "KERNEL <header>" then the code of each kernel) under
    NUMBA_CPU_NAME=cpu_name (and NUMBA_CPU_FEATURES) with a fresh numba cache in `cache`;
    [(header, code), …] in the order printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    env.update(NUMBA_CPU_NAME=cpu_name, NUMBA_CACHE_DIR=str(cache))
    if features is not None:
        env["NUMBA_CPU_FEATURES"] = features
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(part.split("\n", 1)) for part in proc.stdout.split("KERNEL ")[1:]]


def instructions(asm: str) -> list:
    """The instructions of an assembly listing, each [mnemonic, operands] (no directives,
    labels or symbol names)."""
    return [line.split(None, 1) for line in (raw.strip() for raw in asm.splitlines())
            if line and not line.startswith((".", "_", '"', "#")) and not line.endswith(":")]
