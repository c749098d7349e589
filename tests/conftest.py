"""Test-session setup shared by every test file.

Without CUDA the Triton kernels run in Triton's interpreter, which must be chosen before anything
imports triton: hence at import time, here.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
