"""kernels/cpu/segment.py: ∇W1 as a segmented sum in registers equals, bit for bit, row adds in
memory in index_add_'s order (position 0 of samples 0 … N−1, then position 1) and the final
doubling for x², for both dtypes, ragged and masked column ranges, rows no sample adds, and
special values (±0, ±inf, NaN); with dZ from fma.hidden_grad_dz's epilogue, ∇W1 agrees with
autograd's to the tolerance; and the compiled code (Haswell) adds and never multiplies or fuses.
"""
import numpy as np
import pytest
import torch

from compiled import HASWELL, compiled, instructions
from grokfast.kernels.cpu import fma, segment
from tolerances import assert_close

DTYPES = [np.float32, np.float64]
IDS = ["float32", "float64"]


def written_order(dZ, i0, i1, R, quadratic, g, k0, k1):
    """Row adds in memory in plain numpy, one rounding per operation in this order."""
    N, w = dZ.shape
    G = np.zeros((R, w), dZ.dtype)
    for idx in (i0, i1):
        for n in range(N):
            G[idx[n], k0:k1] = G[idx[n], k0:k1] + dZ[n, k0:k1]
    if quadratic:
        G = G + G
    g[:R * w].reshape(R, w)[:, k0:k1] = G[:, k0:k1]


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("quadratic", [False, True], ids=["relu", "x2"])
@pytest.mark.parametrize("N, w, R, k0, k1", [(59, 128, 11, 0, 128), (45, 40, 10, 0, 40),
                                             (30, 150, 7, 16, 133), (3, 9, 5, 2, 9),
                                             (70, 64, 6, 0, 64)])
def test_w1_grad_is_the_row_adds_bitwise(dt, quadratic, N, w, R, k0, k1):
    rng = np.random.default_rng(N + w)
    i0 = rng.integers(0, R - 1, N)                  # row R − 1: no sample (a zero row)
    i1 = rng.integers(0, R - 1, N)
    dZ = (rng.standard_normal((N, w)) * 10.0 ** rng.integers(-3, 3, (N, w))).astype(dt)
    dZ[1, :6] = [-0.0, np.nan, np.inf, -np.inf, 0.0, -1.0]
    dZ[2, :2] = [-0.0, -0.0]
    want = np.full(R * w + 3, 7, dt)
    got = want.copy()
    written_order(dZ, i0, i1, R, quadratic, want, k0, k1)
    order, starts = segment.sample_order(i0, i1, R)
    segment.w1_grad(dZ, order, starts, quadratic, got, k0, k1)
    assert got.tobytes() == want.tobytes()


def test_sample_order_is_position_0_then_1_in_sample_order():
    i0, i1 = np.array([2, 0, 2, 1]), np.array([0, 2, 1, 2])
    order, starts = segment.sample_order(i0, i1, 4)
    assert starts.tolist() == [0, 2, 4, 8, 8]
    assert order.tolist() == [1, 0, 3, 2, 0, 2, 1, 3]


@pytest.mark.parametrize("quadratic", [False, True], ids=["relu", "x2"])
def test_backward_to_w1_matches_autograd(quadratic):
    """dZ by fma.hidden_grad_dz (dŶ W2ᵀ, σ' in its epilogue), then ∇W1 by w1_grad: autograd's."""
    rng = np.random.default_rng(5)
    N, w, R, p = 40, 24, 9, 5
    i0, i1 = rng.integers(0, R, N), rng.integers(0, R, N)
    W1 = torch.randn(R, w, dtype=torch.float64, requires_grad=True)
    W2 = torch.randn(w, p, dtype=torch.float64)
    Z = W1[torch.from_numpy(i0)] + W1[torch.from_numpy(i1)]
    H = Z * Z if quadratic else torch.relu(Z)
    dY = torch.randn(N, p, dtype=torch.float64)
    (H @ W2).backward(dY)
    order, starts = segment.sample_order(i0, i1, R)
    sig = (Z if quadratic else H).detach().numpy()
    dZ, g = np.zeros((N, w)), np.zeros(R * w)
    fma.hidden_grad_dz(dY.numpy(), W2.T.contiguous().numpy(), 0, N, dZ, sig, quadratic)
    segment.w1_grad(dZ, order, starts, quadratic, g, 0, w)
    assert_close(torch.from_numpy(g).view(R, w), W1.grad, "dW1", dtype=torch.float64)


ASM = """
import numpy as np
from grokfast.kernels.cpu import segment
for dt in (np.float32, np.float64):
    i0 = np.array([0, 1, 1]); order, starts = segment.sample_order(i0, i0, 2)
    segment.w1_grad(np.ones((3, 70), dt), order, starts, True, np.zeros(140, dt), 0, 70)
for sig, asm in segment.w1_grad.inspect_asm().items():
    print("KERNEL", sig[0].dtype)
    print(asm)
"""


def test_the_sums_are_vector_adds_only(tmp_path):
    """∇W1 is adds in a written order (x²'s 2 an add too): on an FMA target (Haswell) the
    compiled code has vector adds and no multiply or vfmadd (LLVM would fuse only if told to)."""
    parts = compiled(ASM, tmp_path / "cache", "haswell", HASWELL)
    assert len(parts) == 2
    for head, asm in parts:
        ops = [ins[0] for ins in instructions(asm)]
        assert not [op for op in ops if op.startswith(("vfmadd", "vmulp", "vmuls"))], head
        assert [op for op in ops if op.startswith("vaddp")], head
