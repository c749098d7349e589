"""The project's own kernels, installed as grokfast.kernels; they know nothing of configs, files or
logging, and import nothing of the package.

cpu/     numba loops for the torch backend on the CPU (forward and backward of many small models)
triton/  fused Triton kernels for the GPU (tested on the CPU through Triton's interpreter)
errors   KernelError, the one error they raise (the backends translate it)
"""
