"""grokfast: fast, instrumented training and theory for grokking on modular arithmetic.

Data path: Config (config.py) → make_dataset (data.py) → train (engine.py) → a backend stepper
(reference.py, torch_backend.py, triton_backend.py over kernels/) → history → Result (result.py);
sweep.py plans grids of configs into launches of that loop, phases.py classifies and plots them.
Implements "The Geometry of Grokking: Norm Minimization on the Zero-Loss Manifold" (arXiv 2511.01938).
"""
from . import reference
from .config import PRESETS, Config
from .data import Dataset, make_dataset
from .engine import train
from .errors import GrokfastError
from .filters import gradfilter_ema, gradfilter_ma
from .model import STAT_NAMES
from .result import Result, ResultBatch
from .sweep import SweepResult, sweep

__all__ = ["Config", "PRESETS", "Dataset", "make_dataset", "train", "sweep", "reference",
           "GrokfastError", "gradfilter_ema", "gradfilter_ma", "STAT_NAMES", "Result",
           "ResultBatch", "SweepResult"]
__version__ = "0.1.0"
