"""Triton kernels (installed as grokfast.kernels). They know nothing of configs, files or logging."""
