"""The engine: the training loop over a launch of models (loop.py) and its parts.

options (RunOptions) · resume (what a resume continues) · chunks (the chunk plan) · monitor
(divergence, milestones, grok stops, progress) · sink (run directory or memory) · signals
(Ctrl-C / SIGTERM). It drives a backend stepper (grokfast.backends) and writes grokfast.store's files.
"""
from grokfast.backends.base import BACKENDS, SHARED_FIELDS, check_batch
from grokfast.backends.registry import make_stepper, stepper_class

from .loop import run, train
from .options import DEFAULT_CHECKPOINT_SECONDS, STOP_AT, RunOptions

__all__ = ["train", "run", "RunOptions", "STOP_AT", "DEFAULT_CHECKPOINT_SECONDS", "BACKENDS",
           "SHARED_FIELDS", "check_batch", "make_stepper", "stepper_class"]
