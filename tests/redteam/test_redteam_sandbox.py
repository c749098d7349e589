"""Red team, every CLI command in a sandbox: a target inside a folder that also holds a sentinel
folder and links planted beside the target and inside it; nothing but the target changes."""
import os

import pytest
from redteam_helpers import PAPER, SCALING, finished_run, finished_sweep, run_cli, snapshot


def _prepared(kind, target):
    if kind == "run":
        finished_run(target, tensorboard=True)
    elif kind == "sweep":
        finished_sweep(target)
    elif kind == "golden":
        from grokfast.reproduce import fingerprint
        target.write_bytes(fingerprint.GOLDEN_FILE.read_bytes())


SMALL = ["--seeds", "2", "--steps", "300", "--weight-decays", "8e-4", "--lrs", "2",
         "--backend", "torch"]
COMMANDS = {  # name → (what the target is made as beforehand, the command with {t} the target)
    "train": (None, ["train", "--preset", "paper-real", "--set", "steps=100", "--backend",
                     "torch", "--quiet", "--tensorboard", "--out", "{t}"]),
    "sweep": (None, ["sweep", "--preset", "paper-real", "--set", "steps=100", "--grid",
                     "lr=0.5,1", "--seeds", "0", "--backend", "torch", "--quiet", "--out", "{t}"]),
    "show run": ("run", ["show", "{t}"]),
    "show sweep": ("sweep", ["show", "{t}"]),
    "export run": ("run", ["export", "tensorboard", "{t}"]),
    "export sweep": ("sweep", ["export", "tensorboard", "{t}"]),
    "reproduce paper": (None, ["reproduce", "paper", *PAPER, "--out", "{t}"]),
    "reproduce scaling": (None, ["reproduce", "scaling", *SCALING[:-4], "--steps", "5000",
                                 "--backend", "torch", "--out", "{t}"]),
    "reproduce prediction": (None, ["reproduce", "prediction", "--quick", *SMALL, "--out",
                                    "{t}"]),
    "fingerprint --write": ("golden", ["fingerprint", "--write", "{t}"]),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "reproduce p" in n
                                  else n for n in COMMANDS])
def test_every_command_changes_nothing_outside_its_target(tmp_path, capsys, monkeypatch,
                                                          golden_copy, name):
    """Each CLI command run on a target inside a sandbox that also holds a sentinel folder and
    links planted beside the target and inside it: nothing but the target changes."""
    sandbox = tmp_path / "sandbox"
    sentinel = sandbox / "sentinel"
    sentinel.mkdir(parents=True)
    (sentinel / "precious.txt").write_text("precious\n")
    (sandbox / "link").symlink_to("sentinel")
    (sandbox / "file_link").symlink_to("sentinel/precious.txt")
    kind, args = COMMANDS[name]
    target = sandbox / ("golden_hashes.json" if kind == "golden" else "target")
    if kind is not None:
        _prepared(kind, target)
    if kind in ("run", "sweep"):
        (target / "planted").symlink_to("../sentinel/precious.txt")
    monkeypatch.chdir(sandbox)

    def outside():
        return {k: v for k, v in snapshot(sandbox).items()
                if k != str(target) and not k.startswith(str(target) + os.sep)}
    before = outside()
    code, out, err = run_cli(capsys, *[a.format(t=target) for a in args])
    assert code == 0, err
    assert outside() == before
    assert (sentinel / "precious.txt").read_text() == "precious\n"
    assert not (target / "planted").exists() or (target / "planted").is_symlink()
