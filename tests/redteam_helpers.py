"""Helpers of the red-team suites (tests/test_redteam_*.py): tiny runs, a tree snapshot to prove
nothing outside a directory changed, the CLI in-process, and child processes for real concurrency."""
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grokfast
from grokfast import Config, cli

# paper-real, short: a run takes a fraction of a second on the torch backend
TINY = Config.preset("paper-real", steps=300, log_every=10, eval_every=20)
CHUNK = 50
ROOT = Path(__file__).resolve().parents[1]


def snapshot(root, skip=None) -> dict:
    """path → (kind, sha256 / link target) of everything under root but `skip` (a directory)."""
    root, out = Path(root), {}
    skip = None if skip is None else Path(skip).resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if skip is not None and d.resolve() == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = d / name
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            elif p.is_dir() and skip is not None and p.resolve() == skip:
                continue
            else:
                out[str(p)] = ("dir", "")
    return out


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """grokfast's CLI in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code, err, *words):
    """Exit 2 with one `error:` line naming `words`, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]


def tiny_args(steps=300):
    return ["--preset", "paper-real", "--set", f"steps={steps}", "--set", "log_every=10",
            "--set", "eval_every=20", "--backend", "torch", "--quiet"]


def child(code: str, cwd, env_extra=None) -> subprocess.Popen:
    """A Python child process running `code` (dedented) with the repo's tests on sys.path."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# the smallest reproduce commands (scaling: 2 seeds, as its interval needs; no model groks)
SCALING = ["--weight-decays", "8e-4", "--lrs", "2", "--seeds", "2", "--steps", "200",
           "--backend", "torch"]
PAPER = ["--seeds", "1", "--sim-steps", "2", "--real-steps", "20", "--probe-every", "10",
         "--backend", "torch"]


def finished_sweep(d):
    grokfast.sweep(TINY.replace(steps=100), grid={"lr": [0.5]}, seeds=[0], out=d, figures=False)
    return d


def finished_run(d, **kw):
    grokfast.train(TINY.replace(steps=100), out=d, backend="torch", **kw)
    return d
