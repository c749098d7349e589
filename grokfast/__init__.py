"""grokfast: fast, instrumented training and theory for grokking on modular arithmetic.

The package in layers, each importing only those below it (tests/test_imports.py enforces it):

    kernels/    (grokfast.kernels) numba and Triton kernels, importing nothing of the package
    ground      errors, config, data, model, filters, numerics, inputs, profiling, plotting
    backends/   the stepper contract, the reference, torch/ and triton/ backends, the registry
    store/      history chunks, checkpoints, results on disk, ownership, checksums, recovery
    tracking/   the logger protocol and the TensorBoard writer
    engine/     the training loop over a launch of models (train, run)
    sweeps/     grids × seeds packed into launches, executors, tables, phase diagrams
    theory/     Eq. 20, the Fourier statistics, the alignment probe (on the ground layer)
    reproduce/  the paper's figures, the scaling and prediction studies, the numerics fingerprint
    cli/        the `grokfast` command

Implements "The Geometry of Grokking: Norm Minimization on the Zero-Loss Manifold" (arXiv 2511.01938).
"""
from . import reference
from .config import PRESETS, Config
from .data import Dataset, make_dataset
from .engine import train
from .errors import GrokfastError
from .filters import gradfilter_ema, gradfilter_ma
from .reproduce.fingerprint import numerics_fingerprint
from .model import STAT_NAMES
from .store.result import Result, ResultBatch
from .sweeps import SweepResult, sweep

__all__ = ["Config", "PRESETS", "Dataset", "make_dataset", "train", "sweep", "reference",
           "GrokfastError", "gradfilter_ema", "gradfilter_ma", "STAT_NAMES", "Result",
           "ResultBatch", "SweepResult", "numerics_fingerprint"]
__version__ = "0.1.0"
