"""Backends: steppers over a batch of models that share every shape.

base (the contract every backend meets) ← reference (plain autograd + torch.optim), torch/ (hand
derived gradients over all models at once; numba or MKL), triton/ (fused GPU kernels) ← registry
(a backend name → its stepper; the engine's one door in).
"""
