"""The small sweep the sweep tests (and the Ray tests) share."""
from grokfast import Config

TINY = Config.preset("paper-real", width=32, lr=8.0, weight_decay=8e-4, steps=1000, log_every=10,
                     eval_every=20)
CHUNK = 100
# width changes shapes (separate launches); weight_decay and lr share one; 3 models per launch
GRID = {"width": [32, 48], "weight_decay": [4e-4, 8e-4], "lr": [8.0]}
SEEDS = [0, 1]


def table_without(rows, *drop):
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]
