"""numba kernels of the torch backend on the CPU (grad.py: forward and backward of many models)."""
