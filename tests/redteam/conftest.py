"""Red-team cases save no curves.png (~0.5 s of matplotlib each; figures are tested elsewhere)."""
import pytest


@pytest.fixture(autouse=True)
def no_curves(monkeypatch):
    monkeypatch.setattr("grokfast.store.result.plot_curves", lambda result, path: None)
