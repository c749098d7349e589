"""bench/gpu_check.sh and bench/bench_gpu.py, checked on the CPU for what their dry run cannot show:
the configs the GPU benchmarks build carry device="cuda" on a CUDA machine (backend="triton" refuses
a "cpu" config there, the interpreter accepts it), every GPU test case is reported (no pytest -x),
and the script's time limits leave a rerun inside a 15-minute GPU budget."""
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = (ROOT / "bench" / "gpu_check.sh").read_text()


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


def test_gpu_tests_run_without_stop_at_first_failure():
    pytest_lines = [line for line in SCRIPT.splitlines() if "-m pytest" in line]
    assert pytest_lines
    for line in pytest_lines:
        assert not re.search(r"\s(-x|--exitfirst|--maxfail)\b", line), line


def test_time_limits_leave_a_rerun_in_a_15_minute_budget():
    limits = {k: int(v) for k, v in re.findall(r"^(TESTS_LIMIT_S|BENCH_LIMIT_S)=(\d+)$", SCRIPT,
                                               re.M)}
    kill_after = [int(k) for k in re.findall(r"--kill-after=(\d+)", SCRIPT)]
    assert set(limits) == {"TESTS_LIMIT_S", "BENCH_LIMIT_S"} and kill_after
    assert sum(limits.values()) + len(limits) * max(kill_after) <= 360  # 6 min: two runs fit 15
    assert re.search(r"LONG_BUDGET_S:-(\d+)", SCRIPT)
    assert int(re.search(r"LONG_BUDGET_S:-(\d+)", SCRIPT).group(1)) < limits["BENCH_LIMIT_S"] / 2
