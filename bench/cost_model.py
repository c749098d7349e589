"""Static cost model of the Triton engine on an H100 (sm_90), from the compiled code, without a GPU.

    python bench/cost_model.py        # the table (Triton's NVIDIA backend; no GPU needed)

For the paper-real fused path (one program per model running many steps) and the gromov tiled path
(width 512, p = 97, 30 % of the ordered pairs: 3–5 launches per step), float32 with IEEE products:
the kernels of a step are recorded and compiled for sm_90 as tests/kernels/test_kernel_compile.py
does (record_launches, compile_launch), disassembled with the nvdisasm in Triton's wheel
(triton/backends/nvidia/bin), and their SASS instructions counted per model-step by kind.

Loop trip counts. `nvdisasm -g` prints each instruction's source line. A loop is a backward branch
(target address below the branch's); its body is the address range [target, branch] (nested
ranges: nested loops). The branch's source line is the loop's `for` statement; LOOPS below gives its
trip count from the launch's arguments (e.g. `for c0 in range(0, N, BLOCK_C)`: cdiv(N, BLOCK_C))
and the share of the programs that run it (the rows kernel's backward: training blocks only; the
test chunks: evaluation steps only, 1/eval_every). An instruction counts the product of the trip
counts of the loops around it; the fused kernel's step loop is the unit (code outside it runs once
per launch of n steps). A `for` the table does not know stops the model (no silent guess). Code
outside loops counts once per program whichever branch a program takes (an overestimate for
update_grad's W1/W2 tiles and the rows kernel's test blocks, small beside the loops).

Lower bound per step: each resource must do at least its work, so the step takes at least the
largest of: warp instructions / issue rate; FP32, FP64, MUFU, INT instructions / their pipe's rate;
shared-memory and global (L1) bytes / 128 B per clock per SM. A fused model is one program on one SM
(64 seeds: 64 SMs, the same time); a tiled launch spreads its programs over the SMs (at least one
program's time, at least the total over 132 SMs). Latency is not in it: one program of 8 warps per
SM hides little of it, and each step chains barriers (counted, shown), so the real time will be
above the bound; the bound is what the measured time is held against.
"""
from __future__ import annotations

import linecache
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "kernels"))

# H100 SXM5 (sm_90). Sources: NVIDIA H100 Tensor Core GPU datasheet (67 TFLOPS FP32, 34 TFLOPS FP64,
# 3.35 TB/s HBM3), NVIDIA Hopper architecture whitepaper (132 SMs; per SM 128 FP32, 64 FP64,
# 64 INT32 lanes, 4 warp schedulers issuing one warp instruction per clock each), CUDA C++
# Programming Guide, "Arithmetic Instructions" throughput table, compute capability 9.0 (16 MUFU
# results per clock per SM; 32 shuffle results), and its shared-memory section (32 banks × 4 B per
# clock). Clock: 67 TFLOPS / (132 SMs × 128 lanes × 2 flop) = 1.98 GHz (the boost clock).
SMS = 132
CLOCK_HZ = 1.98e9
ISSUE_PER_CLOCK = 4            # warp instructions per clock per SM
LANES_PER_CLOCK = {"fp32": 128, "fp64": 64, "mufu": 16, "int": 64, "shuffle": 32}
BYTES_PER_CLOCK = {"shared": 128, "global": 128, "local": 128}   # per SM: L1/shared memory
HBM_BYTES_PER_S = 3.35e12
GOAL_STEPS, GOAL_S = 10 ** 6, 15.0           # README: 10⁶ paper-real steps in < 15 s
SEEDS, GOAL_SPEEDUP = 64, 100                # README: 64 seeds batched ≥ 100× sequential
# ANCHORS.md: the plain PyTorch loop on a GPU, ~0.15–0.7 ms per step (an estimate, not measured here)
REFERENCE_STEP_S = (0.15e-3, 0.7e-3)

KINDS = {
    "fp32": ("FFMA", "FADD", "FMUL", "FMNMX", "FSETP", "FSEL", "FSET", "FCHK", "FRND", "FSWZADD"),
    "fp64": ("DFMA", "DADD", "DMUL", "DSETP", "DMNMX"),
    "mufu": ("MUFU",),
    "tensor": ("HMMA", "DMMA", "HGMMA", "IMMA"),
    "int": ("IMAD", "IADD3", "ISETP", "LOP3", "SHF", "LEA", "IMNMX", "IABS", "VIADD", "IADD"),
    "shared": ("LDS", "STS", "LDSM", "ATOMS"),
    "global": ("LDG", "STG", "LD", "ST", "RED", "ATOMG", "ATOM"),
    "local": ("LDL", "STL"),
    "shuffle": ("SHFL",),
    "barrier": ("BAR",),
}
KIND_OF = {op: kind for kind, ops in KINDS.items() for op in ops}
COLUMNS = ("fp32", "fp64", "mufu", "tensor", "int", "shared", "global", "local", "shuffle",
           "barrier", "other")


def cdiv(a, b):
    return -(-a // b)


def _programs(v: dict) -> dict:
    """Rows kernel: the share of its programs that are training blocks (per evaluated step)."""
    nb, nb_all, every = v["NB"], v["NB_ALL"], v["EVAL_EVERY"]
    return nb / (nb + (nb_all - nb) / every)


# (file, `for` statement) → trip count and share of programs running it, from the launch's values v
LOOPS = {
    ("fused.py", "for _ in range(N_STEPS):"): lambda v: (1, 1.0),   # the unit: one step
    ("fused.py", "for c0 in range(0, N, BLOCK_C):"): lambda v: (cdiv(v["N"], v["BLOCK_C"]), 1.0),
    ("fused.py", "for c0 in range(N, N + N_TEST, BLOCK_C):"):
        lambda v: (cdiv(v["N_TEST"], v["BLOCK_C"]), 1 / v["EVAL_EVERY"]),
    # both layers' copies of each update pass: the mean of the two layers' tile counts
    ("fused.py", "for e0 in range(L0, L1, BLOCK_E):"):
        lambda v: ((cdiv(v["D_IN"] * v["H"], v["BLOCK_E"])
                    + cdiv(v["D"] - v["D_IN"] * v["H"], v["BLOCK_E"])) / 2, 1.0),
    ("common.py", "for h0 in range(0, H, BLOCK_H):"):
        lambda v: (cdiv(v["H"], v.get("BLOCK_HS", v["BLOCK_H"])), 1.0),
    ("common.py", "for k in range(count - 1):"): lambda v: (v["WINDOW"] - 1, 1.0),
    ("rows.py", "for h0 in range(0, H, BLOCK_H):"):
        lambda v: (cdiv(v["H"], v["BLOCK_H"]), _programs(v)),
    ("update.py", "for k in range(MAXDEG):"): lambda v: (v["MAXDEG"], v["T1"] / v["T"]),
    ("update.py", "for b in range(0, NB - NB % 8, 8):"):
        lambda v: (v["NB"] // 8, 1 - v["T1"] / v["T"]),
    ("update.py", "for b in range(NB - NB % 8, NB):"):
        lambda v: (v["NB"] % 8, 1 - v["T1"] / v["T"]),
}

INSTRUCTION = re.compile(  # /*addr*/ [@predicate] OPCODE[.suffixes] operands ;
    r"\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)(.*);")


def nvdisasm() -> str | None:
    """The nvdisasm of Triton's wheel (or on PATH), None when there is none."""
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    return path if os.path.exists(path) else shutil.which("nvdisasm")


def sass_lines(cubin: bytes, tool: str) -> list:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, "-g", "-c", f.name], capture_output=True, text=True,
                              check=True).stdout.splitlines()


def parse(lines: list) -> tuple:
    """SASS text → (instructions [(address, opcode, suffixes, operands, file, line)], labels)."""
    ins, labels, pending, where = [], {}, [], (None, None)
    for text in lines:
        m = re.match(r'\s*//## File "(.*)", line (\d+)', text)
        if m:
            where = (m.group(1), int(m.group(2)))
            continue
        m = re.match(r"\s*(\.L_x_\d+):", text)
        if m:
            pending.append(m.group(1))
            continue
        m = INSTRUCTION.match(text)
        if m:
            addr = int(m.group(1), 16)
            labels.update({p: addr for p in pending})
            pending = []
            ins.append((addr, m.group(2), m.group(3), m.group(4), *where))
    return ins, labels


KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "kernels", "triton")


def source_path(path: str) -> str:
    """The kernel source file a SASS line names: the path it was compiled from or, where that file
    is gone (a compile cached by another checkout, e.g. an earlier bare copy in a deleted temporary
    directory: Triton keys its cache on the source text, not its path), the file of the same name
    in this checkout's kernels/triton — the same source, so the same line numbers."""
    if path and not os.path.exists(path):
        local = os.path.join(KERNEL_DIR, os.path.basename(path))
        if os.path.exists(local):
            return local
    return path or ""


def loops(ins: list, labels: dict, values: dict) -> list:
    """[(start, end, trips × share)] of every backward branch, its `for` looked up in LOOPS."""
    out = []
    for addr, op, _suffix, operands, path, line in ins:
        target = re.search(r"\((\.L_x_\d+)\)", operands)
        if op != "BRA" or not target or labels[target.group(1)] >= addr:
            continue
        statement = linecache.getline(source_path(path), line or 0).strip().split("  #")[0]
        key = (os.path.basename(path or ""), statement)
        if key not in LOOPS:
            raise SystemExit(f"cost model: no trip count for the loop at {key[0]}:{line} "
                             f"({statement!r}); add it to LOOPS in bench/cost_model.py")
        trips, share = LOOPS[key](values)
        out.append((labels[target.group(1)], addr, trips * share, key[1].startswith("for _ in")))
    return out


def width(suffix: str) -> int:
    """Bytes per lane of a memory instruction (.64, .128, .U8, …; 4 by default)."""
    for tag, n in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if tag in suffix:
            return n
    return 4


def count(ins: list, labels: dict, values: dict, per_launch_steps: int) -> dict:
    """Per-program, per-step counts by kind (warp instructions of one warp) and memory bytes."""
    found = loops(ins, labels, values)
    step_loops = [(s, e) for s, e, _w, is_step in found if is_step]
    out = Counter()
    for addr, op, suffix, _operands, _path, _line in ins:
        weight = 1.0
        for start, end, w, _is_step in found:
            if start <= addr <= end:
                weight *= w
        if not any(s <= addr <= e for s, e in step_loops):
            weight /= per_launch_steps     # once per launch of many steps
        kind = KIND_OF.get(op, "other")
        out[kind] += weight
        out["all"] += weight
        if kind in BYTES_PER_CLOCK:
            out[kind + "_bytes"] += weight * 32 * width(suffix)
    return out


def bound_s(c: Counter, warps: int, programs: float) -> tuple:
    """Lower bound (s) of `programs` programs with per-program counts c, and the binding resource."""
    terms = {"issue": c["all"] * warps / ISSUE_PER_CLOCK}
    for kind, lanes in LANES_PER_CLOCK.items():
        terms[kind] = c[kind] * warps * 32 / lanes
    for kind, per_clock in BYTES_PER_CLOCK.items():
        terms[kind] = c[kind + "_bytes"] * warps / per_clock
    per_sm = max(1.0, programs / SMS)   # programs spread over the SMs, at least one each
    terms = {k: v * per_sm / CLOCK_HZ for k, v in terms.items()}
    kind = max(terms, key=terms.get)
    return terms[kind], kind


def model(preset: str, regime: str, n_steps: int) -> tuple:
    """(config, rows): per kernel of one model's step: launches per step, programs per launch,
    warps, warp instructions per step by kind (all programs), lower bound s per step, binding."""
    import test_kernel_compile as tkc
    tool = nvdisasm()
    c, launches = tkc.record_launches(dict(preset=preset), "ieee", regimes=(regime,),
                                      n_steps=n_steps)
    models = 2   # record_launches steps two models; rows are per model
    rows = {}
    for fn, grid, args, kwargs in launches:
        if fn.__name__ in rows:
            rows[fn.__name__]["launches"] += 1
            continue
        v = {**dict(zip(fn.arg_names, args)), **kwargs}
        kernel, _log = tkc.compile_launch(fn, args, kwargs)
        ins, labels = parse(sass_lines(kernel.asm["cubin"], tool))
        steps = v.get("N_STEPS", 1)                  # steps one launch runs
        programs = math.prod(grid) / models
        if fn.__name__ == "_rows_fwd_bwd_kernel":   # test blocks work at evaluation steps only
            programs = v["NB"] + (v["NB_ALL"] - v["NB"]) / v["EVAL_EVERY"]
        rows[fn.__name__] = dict(kernel=fn.__name__, launches=1, steps=steps, programs=programs,
                                 warps=kwargs.get("num_warps", 4),
                                 per_program=count(ins, labels, v, steps))
    for r in rows.values():
        r["launches_per_step"] = r["launches"] / n_steps
        unit = r["launches_per_step"] * r["steps"]   # count() is per step of a launch already
        bound, r["binding"] = bound_s(r["per_program"], r["warps"], r["programs"])
        r["bound_s"] = bound * unit
        r["warp_instructions"] = {k: n * unit * r["programs"] * r["warps"]
                                  for k, n in r["per_program"].items()}
    return c, list(rows.values())


def table() -> str:
    tool = nvdisasm()
    import triton
    if tool is None:
        return (f"cost model: skipped, no nvdisasm in Triton {triton.__version__}'s wheel or on "
                f"PATH (it reads the SASS of the compiled kernels)")
    out = [f"static cost model (Triton {triton.__version__}, sm_90 SASS by {tool}; H100 SXM5 "
           f"{SMS} SMs at {CLOCK_HZ / 1e9:.2f} GHz): SASS instructions per model-step by kind "
           f"(warp instructions, all programs), lower bound µs per step and what binds it"]
    head = (f"{'kernel':<24} {'launch/step':>11} {'programs':>8} {'warps':>5} "
            + " ".join(f"{k:>8}" for k in COLUMNS) + f" {'µs/step':>8}  bound by")
    totals = {}
    for label, preset, regime, n_steps in (("paper-real fused", "paper-real", "fused", 1000),
                                           ("gromov tiled", "gromov", "tiled", 10)):
        c, rows = model(preset, regime, n_steps)
        out += ["", f"{label}: p={c.p}, width={c.width}, {c.optimizer}, {c.loss}, "
                    f"eval/log every {c.eval_every}/{c.log_every}", head]
        total = 0.0
        for r in rows:
            cnt = r["warp_instructions"]
            out.append(f"{r['kernel']:<24} {r['launches_per_step']:>11.3g} {r['programs']:>8.4g} "
                       f"{r['warps']:>5} "
                       + " ".join(f"{cnt.get(k, 0):>8.4g}" for k in COLUMNS)
                       + f" {r['bound_s'] * 1e6:>8.3g}  {r['binding']}")
            total += r["bound_s"]
        totals[label] = (total, sum(r["launches_per_step"] for r in rows))
        out.append(f"{'step':<24} {totals[label][1]:>11.3g} "
                   + " " * (8 + 1 + 5 + 9 * len(COLUMNS) + 1) + f"{total * 1e6:>8.3g}")
    fused, _ = totals["paper-real fused"]
    gromov, launches = totals["gromov tiled"]
    ref_lo, ref_hi = REFERENCE_STEP_S
    out += ["",
            f"paper-real, 10⁶ steps: ≥ {fused * GOAL_STEPS:.2f} s predicted (lower bound) against "
            f"the README's goal < {GOAL_S:g} s, i.e. ≤ {GOAL_S / GOAL_STEPS * 1e6:g} µs per step: "
            f"{'within' if fused * GOAL_STEPS < GOAL_S else 'NOT within'} the goal by the bound, "
            f"a ×{GOAL_S / (fused * GOAL_STEPS):.1f} margin for latency and barriers",
            f"paper-real, {SEEDS} seeds in one launch ({SEEDS} SMs of {SMS}): ≥ {fused * 1e6:.3g} "
            f"µs per step for all of them; {SEEDS} sequential PyTorch-loop runs at "
            f"{ref_lo * 1e3:g}–{ref_hi * 1e3:g} ms per step (ANCHORS.md's estimate) take "
            f"{SEEDS * ref_lo * 1e3:g}–{SEEDS * ref_hi * 1e3:g} ms: at most "
            f"{SEEDS * ref_lo / fused:.0f}–{SEEDS * ref_hi / fused:.0f}× by the bound against the "
            f"goal ≥ {GOAL_SPEEDUP}× (needs ≤ {SEEDS * ref_lo / GOAL_SPEEDUP * 1e6:.0f} µs per "
            f"step at the low estimate)",
            f"gromov width 512, 10⁶ steps: ≥ {gromov * GOAL_STEPS:.1f} s predicted (+ ~1 µs per "
            f"CUDA-graph node × {launches:.3g} launches per step = "
            f"{launches * GOAL_STEPS * 1e-6:.1f} s, ANCHORS.md)"]
    return "\n".join(out)


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)   # compiling needs the real @triton.jit
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # as the kernels are compiled to run
    print(table())
