"""bench/gpu_check.sh and bench/bench_gpu.py, checked on the CPU for what their dry run cannot show:
the configs the GPU benchmarks build carry device="cuda" on a CUDA machine (backend="triton" refuses
a "cpu" config there, the interpreter accepts it), every GPU test case is reported (no pytest -x),
and the script's time limits leave a rerun inside a 15-minute GPU budget."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench_gpu(monkeypatch, cuda: bool):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    sys.modules.pop("bench_gpu", None)
    import bench_gpu
    return bench_gpu


def test_benchmark_configs_are_on_the_gpu_when_there_is_one(monkeypatch):
    bench_gpu = _bench_gpu(monkeypatch, cuda=True)
    for dry in (False, True):
        for name, case in bench_gpu.cases(dry).items():
            for prov in bench_gpu.PROVIDERS:
                assert bench_gpu.provider_config(case, prov).device == "cuda", (name, prov)
        assert bench_gpu.long_config(1000, dry).device == "cuda"
    case = bench_gpu.cases()["gromov-512"]
    assert bench_gpu.provider_config(case, "triton-tf32").precision == "tf32"
    assert bench_gpu.provider_config(case, "triton").precision == "ieee"


def test_benchmark_configs_stay_on_the_cpu_without_one(monkeypatch):
    bench_gpu = _bench_gpu(monkeypatch, cuda=False)
    assert {c.config.device for c in bench_gpu.cases(True).values()} == {"cpu"}
    assert bench_gpu.long_config(10, True).device == "cpu"


def plan(*flags) -> dict:
    """What bench/gpu_check.sh would run (its --plan output): limits and command lines."""
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--plan", *flags],
                         capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "PYTHON": sys.executable}).stdout
    return dict(line.split("=", 1) if "=" in line.split(":", 1)[0] else line.split(": ", 1)
                for line in out.splitlines() if not line.startswith(("#", "dry run")))


def test_gpu_tests_run_every_case_and_the_existing_test_files():
    for flags in ((), ("--dry-run",)):
        p = plan(*flags)
        tests = p["tests"].split()
        assert tests[:3] == [sys.executable, "-m", "pytest"], p["tests"]
        assert not {"-x", "--exitfirst"} & set(tests) and not any(t.startswith("--maxfail")
                                                                  for t in tests)
        files = [t.split("::")[0] for t in tests if t.startswith("tests/")]
        assert files and all((ROOT / f).is_file() for f in files), files
        assert p["bench"].split()[1] == "bench/bench_gpu.py" and (ROOT / "bench/bench_gpu.py").is_file()
        if not flags or importlib.util.find_spec("numba"):  # the dry run skips it without numba
            assert p["fingerprint"].split()[1:4] == ["-m", "grokfast", "fingerprint"], p["fingerprint"]


def test_time_limits_leave_a_rerun_in_a_15_minute_budget():
    p = plan()
    tests, bench, finger, kill = (int(p[k]) for k in ("tests_limit_s", "bench_limit_s",
                                                      "fingerprint_limit_s", "kill_after_s"))
    assert tests + bench + finger + 3 * kill <= 360  # 6 minutes a run: two runs and a start fit 15
    assert int(p["long_budget_s"]) < bench / 2
    assert "--long-budget" in p["bench"].split() and p["bench"].split()[-1] == p["long_budget_s"]


def test_unknown_option_is_refused():
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--fast"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "unknown option --fast" in r.stderr
