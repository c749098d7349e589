"""bench/cost_model.py's SASS counting on a hand-written listing (no compiler needed): loops found
from backward branches, trip counts from their `for` statements, nested loops multiplied, code
outside the step loop divided by the steps of a launch, memory bytes from the access width; an
unknown loop stops the model. (The whole model runs in bench/gpu_check.sh --dry-run.)"""
import os
import sys
from collections import Counter

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import cost_model  # noqa: E402

SOURCE = "s = 0\nfor _ in range(N_STEPS):  # the step loop\n    for c0 in range(0, N, BLOCK_C):\n"


def listing(path: str) -> list:
    return f"""
	//## File "{path}", line 1
        /*0000*/                   MOV R1, R2 ;
.L_x_0:
	//## File "{path}", line 2
        /*0010*/                   FFMA R1, R2, R3, R4 ;
        /*0018*/                   DFMA R6, R2, R4, R6 ;
.L_x_1:
	//## File "{path}", line 3
        /*0020*/                   LDS.128 R4, [R2] ;
        /*0028*/                   STG.E desc[UR4][R2.64], R4 ;
        /*0030*/               @P0 BRA `(.L_x_1) ;
	//## File "{path}", line 2
        /*0040*/               @P1 BRA `(.L_x_0) ;
        /*0050*/                   EXIT ;
""".splitlines()


@pytest.fixture
def fused_source(tmp_path):
    path = tmp_path / "fused.py"   # LOOPS keys on the file's name and the `for` statement
    path.write_text(SOURCE)
    return str(path)


def test_counts_multiply_nested_trip_counts(fused_source):
    ins, labels = cost_model.parse(listing(fused_source))
    assert [op for _a, op, *_ in ins] == ["MOV", "FFMA", "DFMA", "LDS", "STG", "BRA", "BRA", "EXIT"]
    c = cost_model.count(ins, labels, dict(N=40, BLOCK_C=16, N_STEPS=10), per_launch_steps=10)
    assert c["fp32"] == 1 and c["fp64"] == 1              # once per step
    assert c["shared"] == 3 and c["global"] == 3          # cdiv(40, 16) chunks per step
    assert c["shared_bytes"] == 3 * 32 * 16 and c["global_bytes"] == 3 * 32 * 4
    assert c["other"] == pytest.approx(0.1 + 3 + 1 + 0.1)  # MOV, EXIT once per launch of 10


def test_bound_is_the_largest_resource_term():
    c = Counter({"all": 50, "fp32": 30, "fp64": 30, "shared_bytes": 32 * 4 * 10})
    seconds, kind = cost_model.bound_s(c, warps=8, programs=1)
    # fp64: 30 warp instructions × 8 warps × 32 lanes / 64 lanes per clock = 120 clocks (issue:
    # 50 × 8 / 4 = 100, fp32: 60, shared: 10 × 8 = 80)
    assert kind == "fp64" and seconds == pytest.approx(120 / cost_model.CLOCK_HZ)
    many, _ = cost_model.bound_s(c, warps=8, programs=4 * cost_model.SMS)
    assert many == pytest.approx(4 * seconds)            # four programs per SM


def test_unknown_loop_stops_the_model(tmp_path):
    path = tmp_path / "fused.py"
    path.write_text(SOURCE.replace("range(0, N, BLOCK_C)", "range(0, N, 2 * BLOCK_C)"))
    ins, labels = cost_model.parse(listing(str(path)))
    with pytest.raises(SystemExit, match="no trip count for the loop at fused.py:3"):
        cost_model.count(ins, labels, dict(N=40, BLOCK_C=16, N_STEPS=10), per_launch_steps=10)
