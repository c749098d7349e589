"""The one error the kernels raise: a launch they cannot run (bad tensors, sizes or settings).

Kernels know nothing of the package; the backend that launches them (grokfast.backends.triton)
turns a KernelError into the package's GrokfastError with the same message.
"""


class KernelError(ValueError):
    """A kernel launch was refused; the message says what was wrong and which backend to use."""
