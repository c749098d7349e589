"""The paper's theory as code, on the ground layer only (config, data, model).

flow (Eq. 20: predicted_dW1, min_norm_W2, simulate, the time map to GD steps) ← fourier (F_k, the
circle statistics, key frequencies, neuron IPR, restricted / excluded loss) and probe (the
zero-loss-manifold alignment: alignment, AlignmentProbe) ← manifold (the exact flow −P_T θ on Z:
tangent_velocity) ← manifold_sim (simulate_manifold). `grokfast.theory.X` is flow's X.
"""
from .flow import (
                   SimResult,
                   activation_derivative,
                   gd_steps_to_sim_time,
                   min_norm_W2,
                   predicted_dW1,
                   sim_time_to_gd_steps,
                   simulate,
)

__all__ = ["SimResult", "activation_derivative", "gd_steps_to_sim_time", "min_norm_W2",
           "predicted_dW1", "sim_time_to_gd_steps", "simulate"]
