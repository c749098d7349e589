"""Red team, every command owns its output the way `train` does: `export tensorboard`,
`reproduce …` and `fingerprint --write` write only inside the directory named, under one rule
(grokfast.store.output.command_output), never through a link; names read back from files pass one
validator (grokfast.store.ownership.check_name)."""
import json
import os

import pytest
from redteam_helpers import TINY, assert_clean_error, child, run_cli, snapshot

import grokfast
from grokfast import GrokfastError
from grokfast.store.ownership import check_name

SCALING = ["--weight-decays", "8e-4", "--lrs", "2", "--seeds", "2", "--steps", "200",
           "--backend", "torch"]
PAPER = ["--seeds", "1", "--sim-steps", "10", "--real-steps", "100", "--probe-every", "50",
         "--backend", "torch"]


def finished_sweep(d):
    grokfast.sweep(TINY.replace(steps=100), grid={"lr": [0.5]}, seeds=[0], out=d, figures=False)
    return d


def finished_run(d, **kw):
    grokfast.train(TINY.replace(steps=100), out=d, backend="torch", **kw)
    return d


# ---------------------------------------------------------------- one validator of names read back
@pytest.mark.parametrize("name,what", [("../x", "model"), ("launch_000/..", "launch"),
                                       ("../../x", "field"), ("/etc", "file"),
                                       ("a/../../b", "path"), ("", "path"), ("a//b", "path"),
                                       (5, "file")])
def test_check_name_refuses_every_way_out(name, what):
    with pytest.raises(GrokfastError, match="plan.json"):
        check_name(name, what, "plan.json")


def test_export_plan_values_keys_cannot_write_outside(tmp_path, capsys):
    """Defect 1: plan.json row keys made the TensorBoard run paths; ../ escaped the sweep."""
    d = finished_sweep(tmp_path / "deep" / "sweep")
    plan = json.loads((d / "plan.json").read_text())
    for r in plan["rows"]:
        r["values"] = {"../../../escape/x": 0.5}
    (d / "plan.json").write_text(json.dumps(plan))
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "export", "tensorboard", d)
    assert_clean_error(code, err, "plan.json")
    assert snapshot(tmp_path) == before


def test_edited_plan_grid_key_is_named_as_plan_json(tmp_path, capsys):
    """Defect 15: a bad grid key read "--grid ../../x: not a config field" (no --grid passed)."""
    d = finished_sweep(tmp_path / "sweep")
    plan = json.loads((d / "plan.json").read_text())
    plan["grid"] = {"widthh": plan["grid"]["lr"]}
    for r in plan["rows"]:
        r["values"] = {"widthh": r["values"]["lr"]}
    (d / "plan.json").write_text(json.dumps(plan))
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "sweep", "--resume", d, "--quiet", "--tensorboard")
    assert_clean_error(code, err, "plan.json", "widthh")
    assert "--grid" not in err
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- reproduce owns its directory
@pytest.mark.parametrize("what,args", [("scaling", SCALING), ("paper", PAPER)])
def test_reproduce_into_a_training_run_through_a_link_is_refused(tmp_path, capsys, what, args):
    """Defect 2: reproduce accepted a finished training run and wrote report.md through a link."""
    d = finished_run(tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("victim\n")
    (d / "report.md").symlink_to("../victim.txt")
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "reproduce", what, *args, "--out", d)
    assert_clean_error(code, err, str(d))
    assert victim.read_text() == "victim\n"
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def scaling_dir(tmp_path_factory):
    from grokfast.cli import main
    d = tmp_path_factory.mktemp("scaling") / "out"
    # λη = 1.6e-3: paper-real groks in ~2–5k steps (the figures need a grokked model)
    assert main(["reproduce", "scaling", *SCALING[:-4], "--steps", "5000", "--backend", "torch",
                 "--out", str(d)]) == 0
    return d


def test_reproduce_output_replaces_planted_links_never_follows(scaling_dir, tmp_path, capsys):
    """Defect 2: a link planted in a reproduce directory is replaced by --report-only, never
    written through; a second command's output there is refused."""
    import shutil
    d = tmp_path / "out"
    shutil.copytree(scaling_dir, d, symlinks=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("victim\n")
    for name in ("report.md", "scaling_collapse.png"):
        (d / name).unlink()
        (d / name).symlink_to("../victim.txt")
    code, out, err = run_cli(capsys, "reproduce", "scaling", "--report-only", "--out", d)
    assert code == 0, err
    assert victim.read_text() == "victim\n"
    assert not any((d / n).is_symlink() for n in ("report.md", "scaling_collapse.png"))
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "reproduce", "paper", *PAPER, "--out", d)
    assert_clean_error(code, err, "reproduce scaling")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- fingerprint --write
@pytest.fixture
def golden_copy(tmp_path, monkeypatch):
    """A temporary copy of the golden hashes and one fast golden run (the committed file is
    never touched)."""
    from grokfast.reproduce import fingerprint
    copy = tmp_path / "golden_hashes.json"
    copy.write_bytes(fingerprint.GOLDEN_FILE.read_bytes())
    monkeypatch.setattr(fingerprint, "GOLDEN_FILE", copy)
    fast = {"paper-real-16-models": fingerprint.GOLDEN_RUNS["paper-real-16-models"]}
    monkeypatch.setattr(fingerprint, "GOLDEN_RUNS", fast)
    monkeypatch.setattr("grokfast.cli.fingerprint.GOLDEN_RUNS", fast)
    return copy


@pytest.mark.parametrize("bad", [["--runs", "nope"], ["--backend", "nonsense"],
                                 ["--device", "tpu"], ["--backend", "reference"]],
                         ids=["runs", "backend", "device", "not-torch"])
def test_fingerprint_write_checks_its_options_first(golden_copy, tmp_path, capsys, bad):
    """Defect 6: --write ignored --runs nope --backend nonsense --device tpu and rewrote it."""
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "fingerprint", "--write", golden_copy, *bad)
    assert_clean_error(code, err, bad[0])
    assert snapshot(tmp_path) == before


def test_fingerprint_write_by_rename_never_through_a_link(golden_copy, tmp_path, capsys):
    """Defect 11: --write truncated the file in place and followed a link planted there."""
    other = tmp_path / "hard_link.json"
    os.link(golden_copy, other)
    old = other.read_bytes()
    code, out, err = run_cli(capsys, "fingerprint", "--write", golden_copy)
    assert code == 0, err
    assert other.read_bytes() == old  # renamed over, not rewritten in place
    assert list(json.loads(golden_copy.read_text())["hashes"]) == ["paper-real-16-models"]
    victim = tmp_path / "victim.txt"
    victim.write_text("victim\n")
    link = tmp_path / "link.json"
    link.symlink_to(victim)
    code, out, err = run_cli(capsys, "fingerprint", "--write", link)
    assert_clean_error(code, err, "link")
    assert victim.read_text() == "victim\n"


@pytest.mark.parametrize("where", ["site-packages/grokfast/golden_hashes.json", "notes.txt"])
def test_fingerprint_write_refuses_installed_packages_and_foreign_files(golden_copy, tmp_path,
                                                                        capsys, where):
    """Defect 6: an installed package's golden file, or any file, was rewritten."""
    target = tmp_path / where
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"precious\n" if where == "notes.txt" else golden_copy.read_bytes())
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "fingerprint", "--write", target)
    assert_clean_error(code, err, str(target))
    assert snapshot(tmp_path) == before


def test_fingerprint_write_needs_the_file_named(capsys):
    """Defect 6: a bare --write rewrote the package's golden_hashes.json."""
    from grokfast.reproduce.fingerprint import GOLDEN_FILE
    before = GOLDEN_FILE.read_bytes(), GOLDEN_FILE.stat().st_mtime_ns
    code, out, err = run_cli(capsys, "fingerprint", "--write")
    assert code == 2 and "--write" in err
    assert (GOLDEN_FILE.read_bytes(), GOLDEN_FILE.stat().st_mtime_ns) == before


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without GPU")
def test_fingerprint_cuda_without_gpu_names_its_own_option(capsys):
    """Defect 10: the advice was `--set device=cpu`; fingerprint has no --set."""
    code, out, err = run_cli(capsys, "fingerprint", "--device", "cuda", "--runs",
                             "gromov-width-512")
    assert_clean_error(code, err, "--device")
    assert "--set" not in err
