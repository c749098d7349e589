"""Triton kernels: common.py (device functions, slot layouts, CODES) and launch.py (KernelSpec,
State, launch checks) under the fused one-program-per-model kernel (fused.py) and the row-block
kernels of larger models (rows.py: forward / backward tiles, update.py: filters and optimizers,
stats.py: the statistics rows)."""
