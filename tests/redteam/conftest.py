"""Red-team cases save no curves.png (~0.5 s of matplotlib each; figures are tested elsewhere);
`golden_copy`: fingerprint --write into a temporary copy."""
import pytest


@pytest.fixture(autouse=True)
def no_curves(monkeypatch):
    monkeypatch.setattr("grokfast.store.result.plot_curves", lambda result, path: None)


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
