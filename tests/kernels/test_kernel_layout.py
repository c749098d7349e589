"""kernels/cpu/layout.py: the register-tile transpose copies every element exactly into a strided
view, touching nothing outside it, for whole and ragged tiles, both dtypes, and the payloads of
NaNs and signed zeros (a copy, not arithmetic)."""
import numpy as np
import pytest

from grokfast.kernels.errors import KernelError
from grokfast.kernels.cpu import layout


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("R, C", [(11, 128), (128, 11), (97, 40), (3, 5), (1, 1), (8, 8),
                                  (9, 17), (16, 4), (0, 4)])
def test_transpose_is_an_exact_copy_into_a_view(dt, R, C):
    rng = np.random.default_rng(R * 131 + C)
    a = rng.standard_normal((R, C)).astype(dt)
    if a.size:
        bits = a.view(np.uint32 if dt == np.float32 else np.uint64)
        bits.flat[0] = 0x7FC00123 if dt == np.float32 else 0x7FF8000000000123   # NaN payload
        a.flat[-1] = -0.0
    big = np.full((C + 1, R + 5), 7, dt)
    out = big[:C, 2:2 + R]                                    # strided rows, unit stride along r
    layout.transpose(a, out)
    assert out.tobytes() == np.ascontiguousarray(a.T).tobytes()
    assert (big[:, :2] == 7).all() and (big[:, 2 + R:] == 7).all() and (big[C] == 7).all()


def test_transpose_refuses_a_strided_last_axis():
    a = np.zeros((4, 8), np.float32)
    with pytest.raises(KernelError, match="unit stride"):
        layout.transpose(a[:, ::2], np.zeros((4, 4), np.float32))
