"""bench/gpu_check.sh and bench/bench_gpu.py, checked on the CPU for what their dry run cannot show:
the configs the GPU benchmarks build carry device="cuda" on a CUDA machine (backend="triton" refuses
a "cpu" config there, the interpreter accepts it), every GPU test case is reported (no pytest -x),
and the script's time limits leave a rerun inside a 15-minute GPU budget."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
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


def plan(*flags, env=None) -> dict:
    """What bench/gpu_check.sh would run (its --plan output): limits and command lines."""
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--plan", *flags],
                         capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "PYTHON": sys.executable, **(env or {})}).stdout
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
    limits = [int(p[k]) for k in ("tests_limit_s", "bench_limit_s", "fingerprint_limit_s",
                                  "sanitizer_limit_s", "sanitizer_limit_s", "ncu_limit_s")]
    # 6 minutes a run, every step at its limit and killed kill_after_s later: two runs and a start
    # fit 15
    assert sum(limits) + len(limits) * int(p["kill_after_s"]) <= 360
    bench = int(p["bench_limit_s"])
    assert int(p["long_budget_s"]) < bench / 2
    assert "--long-budget" in p["bench"].split() and p["bench"].split()[-1] == p["long_budget_s"]


def _fake_tools(tmp_path) -> dict:
    """A PATH with stand-ins named compute-sanitizer and ncu (never run here)."""
    for name in ("compute-sanitizer", "ncu"):
        tool = tmp_path / name
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(0o755)
    return {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}


def test_sanitizer_and_ncu_commands(tmp_path):
    """A GPU run's memcheck, racecheck and ncu command lines: the tool found on PATH, its options,
    then the python and bench/gpu_kernels_once.py (tiny for the sanitizers, real for ncu)."""
    p = plan(env=_fake_tools(tmp_path))
    for name, tool, size in (("memcheck", "compute-sanitizer", "tiny"),
                             ("racecheck", "compute-sanitizer", "tiny"), ("ncu", "ncu", "real")):
        words = p[name].split()
        assert words[0] == str(tmp_path / tool), p[name]
        program = words.index(sys.executable)
        assert words[program + 1:] == ["bench/gpu_kernels_once.py", "--size", size, "--steps", "2"]
        assert (ROOT / words[program + 1]).is_file()
        if tool == "compute-sanitizer":
            assert words[1:3] == ["--tool", name] and "--error-exitcode" in words[:program]
        else:
            kernels = words[words.index("--kernel-name") + 1]
            assert kernels == "regex:_fused_steps_kernel|_rows_fwd_bwd_kernel"
            assert {"SpeedOfLight", "Occupancy", "LaunchStats"} <= set(words[:program])
            assert "local_op" in words[words.index("--metrics") + 1]


def test_a_missing_tool_is_reported_and_skipped(tmp_path):
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin" + os.pathsep + "/bin",
           "CUDA_HOME": str(tmp_path)}   # an empty CUDA_HOME: no tools anywhere (bar /usr/local)
    if any(os.access(f"/usr/local/cuda/bin/{t}", os.X_OK) for t in ("compute-sanitizer", "ncu")):
        pytest.skip("this machine has the tools in /usr/local/cuda/bin, where the script looks last")
    p = plan(env=env)
    assert p["memcheck"].startswith("SKIPPED (compute-sanitizer not found)")
    assert p["racecheck"].startswith("SKIPPED (compute-sanitizer not found)")
    assert p["ncu"].startswith("SKIPPED (ncu not found)")


def test_dry_run_adds_the_cost_model_and_the_sanitizers_program():
    p = plan("--dry-run")
    assert p["cost"].split()[1:] == ["bench/cost_model.py"] and (ROOT / "bench/cost_model.py").is_file()
    assert p["kernels"].split()[1:] == ["bench/gpu_kernels_once.py", "--size", "tiny", "--steps", "2"]


def test_unknown_option_is_refused():
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--fast"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "unknown option --fast" in r.stderr


def test_cost_model_reads_a_cached_compiles_source_from_this_checkout(monkeypatch, tmp_path):
    """A kernel compiled (and cached by Triton, which keys on the source, not its path) from a
    bare copy since deleted names a file that is gone: the cost model reads the line from the file
    of the same name in this checkout's kernels/triton instead of finding an empty statement."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("cost_model", None)
    import cost_model
    gone = str(tmp_path / "deleted-copy" / "kernels" / "triton" / "common.py")
    here = ROOT / "kernels" / "triton" / "common.py"
    assert Path(cost_model.source_path(gone)).resolve() == here
    assert cost_model.source_path(str(here)) == str(here)
    assert cost_model.source_path(None) == ""
    line = next(i for i, t in enumerate(here.read_text().splitlines(), 1) if "for h0 in range" in t)
    import linecache
    assert linecache.getline(cost_model.source_path(gone), line).strip().startswith("for h0")
