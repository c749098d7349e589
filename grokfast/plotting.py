"""matplotlib for every figure of the package: the Agg backend (files, no screen), imported lazily
so that training never pays for matplotlib."""
from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt

