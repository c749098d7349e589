"""The golden runs (grokfast.reproduce.fingerprint.GOLDEN_RUNS) in this process; prints {run: SHA-256} as JSON.

Run by tests/test_portability.py in fresh processes under other numba targets (NUMBA_CPU_NAME and
NUMBA_CPU_FEATURES, with a fresh NUMBA_CACHE_DIR), ATen CPU capabilities (ATEN_CPU_CAPABILITY),
MKL code paths (MKL_ENABLE_INSTRUCTIONS) and thread counts. Like tests/batch_invariance_check.py it
uses torch (an MKL matmul) before importing grokfast.

    python tests/portability_check.py THREADS [NUMERICS] [RUN,RUN,...]
"""
import json
import sys

import torch

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
torch.randn(64, 64) @ torch.randn(64, 64)

from grokfast.reproduce import fingerprint  # noqa: E402


def main() -> int:
    numerics = sys.argv[2] if len(sys.argv) > 2 else "portable"
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(fingerprint.GOLDEN_RUNS)
    out = {}
    for name in names:
        base, changes = fingerprint.GOLDEN_RUNS[name]
        configs = [base.replace(numerics=numerics, **ch) for ch in changes]
        out[name] = fingerprint.run_hash(fingerprint.run_configs(configs))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
