"""A run directory written by grokfast 0.1.0 before the package took its layered layout
(tests/data/run_0.1.0: paper-real, seeds 0 and 1, 400 steps, stopped by max_steps at step 200 with
checkpoints at 100 and 200) still reads, shows and resumes to the end, keeping every row it had."""
import shutil
from pathlib import Path

import numpy as np

import grokfast
from grokfast.cli import main

OLD = Path(__file__).parents[1] / "data" / "run_0.1.0"


def test_an_old_run_directory_shows_loads_and_resumes(tmp_path, capsys):
    d = tmp_path / "run"
    shutil.copytree(OLD, d)
    saved = [grokfast.Result.load(d / f"model_{i:03d}") for i in range(2)]
    assert [r.steps_done for r in saved] == [200, 200] and all(r.interrupted for r in saved)
    assert main(["show", str(d)]) == 0 and "status interrupted" in capsys.readouterr().out
    # written before the numerics field: it continues with the host numerics it ran with
    assert all(r.config.numerics == "host" for r in saved)
    resumed = grokfast.train(None, resume=d)
    assert [r.steps_done for r in resumed] == [400, 400]
    for i, (old, new) in enumerate(zip(saved, resumed)):
        assert old.config == new.config
        for name in grokfast.STAT_NAMES:  # the 20 rows it had are kept bit for bit
            a, b = np.asarray(old.history[name]), np.asarray(new.history[name])
            assert len(a) == 20 and len(b) == 40
            assert a.tobytes() == b[:20].tobytes(), name
        reloaded = grokfast.Result.load(d / f"model_{i:03d}")
        assert reloaded.steps_done == 400 and not reloaded.interrupted
