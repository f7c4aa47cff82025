"""Static instruction census of the CUDA scan kernels' state loops (no GPU needed, needs nvcc).

Compiles ``csrc/cuda/kernel_{fwd,bwd}_f32.cu`` to PTX for one architecture and, for every kernel
configuration, finds the loops whose body evaluates exponentials (the loop over the N states: its
body handles the TI steps of one lane for one state n) and counts what one pass of the body issues:
all instructions, ``ex2``, shuffles, shared loads / stores, barriers. ``per step`` divides by the
TI steps of a lane, so it is the PTX instruction count per (t, n) element, to set against the
~6 instructions a step of the recurrence needs (decay argument, EX2, input term, state update, C
contraction, a share of the B / C loads) and against the SM's 4 issue slots and 16 EX2 per clock.

PTX is not SASS (ptxas drops moves and may re-schedule), so the counts are a model for comparing
configurations before a GPU run, not a measurement of what runs.

usage: python benchmarks/ptx_census.py [--arch 90] [--json F]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY = re.compile(r"^\.visible \.entry (\S+)\(")
LABEL = re.compile(r"^(\$L__BB\d+_\d+):")
BRANCH = re.compile(r"bra(?:\.uni)?\s+(\$L__BB\d+_\d+);")
CONFIG = re.compile(r"hss_(fwd|bwd)_kernelI\w+?Li(\d+)ELi(\d+)ELi(\d+)E")
LANES = re.compile(r"hss_fwd_lanes_kernelI(\w+?)Li(\d+)ELi(\d+)E")
STEPS_PER_PASS = 4  # the lane-sequential kernel's state loop: 4 steps x 16 states per pass
N_STATES = 16
KINDS = {"ex2": "ex2.", "fma": "fma.", "shfl": "shfl.", "ld.shared": "ld.shared", "st.shared": "st.shared",
         "bar": "bar.", "ld.global": "ld.global", "st.global": "st.global"}


def compile_ptx(source: Path, arch: str, out: Path) -> str:
    import torch.utils.cpp_extension as ce

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise SystemExit("ptx_census.py needs nvcc on PATH")
    includes = [f"-I{p}" for p in ce.include_paths()] + [f"-I{REPO / 'csrc'}",
                                                         f"-I{sysconfig.get_paths()['include']}"]
    cmd = [nvcc, "-O3", "-std=c++20", "--use_fast_math", "--expt-relaxed-constexpr",
           "-DMAMBAAD_WITH_CUDA", *includes, f"-arch=sm_{arch}", "-ptx", str(source), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"nvcc failed on {source}:\n{res.stderr[-3000:]}")
    return out.read_text()


def is_instruction(line: str) -> bool:
    s = line.strip()
    return bool(s) and s.endswith(";") and not s.startswith(("//", ".reg", ".local", ".shared",
                                                             ".param", ".loc", ".file", "{", "}"))


def opcode(line: str) -> str:
    """The opcode of a PTX instruction line (after a predicate guard, if any)."""
    tokens = line.split()
    return tokens[1] if tokens[0].startswith("@") else tokens[0]


def _loops(lines: list[str]) -> list[tuple[int, int, list[str]]]:
    """Every loop of a kernel as (first line, last line, body): a label and a branch back to it."""
    labels, loops = {}, []
    for i, line in enumerate(lines):
        m = LABEL.match(line.strip())
        if m:
            labels[m.group(1)] = i
        b = BRANCH.search(line)
        if b and b.group(1) in labels and labels[b.group(1)] < i:
            loops.append((labels[b.group(1)], i, lines[labels[b.group(1)]:i + 1]))
    return loops


def _innermost(loops):
    return [lp for lp in loops if not any(o is not lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]


def _mix(body: list[str]) -> dict:
    ops = [opcode(ln) for ln in body if is_instruction(ln)]
    mix = {k: sum(1 for op in ops if op.startswith(prefix)) for k, prefix in KINDS.items()}
    return {"instructions": len(ops), **mix}


def state_loops(lines: list[str]) -> list[dict]:
    """The innermost loops whose body holds an ex2, with their instruction mix."""
    with_ex2 = [lp for lp in _loops(lines) if any("ex2." in ln for ln in lp[2])]
    return [{"lines": [a, b], **_mix(body)} for a, b, body in _innermost(with_ex2)]


def dt_loop(lines: list[str]) -> dict | None:
    """The loop over the dt rank R (16-byte shared loads and FMAs, nothing else of note)."""
    for a, b, body in _innermost(_loops(lines)):
        ops = [opcode(ln) for ln in body if is_instruction(ln)]
        if any(op.startswith("ld.shared.v") for op in ops) and any(op.startswith("fma") for op in ops) \
                and not any(op.startswith(("ex2", "st.", "cp.async", "shfl", "bar")) for op in ops):
            return {"lines": [a, b], **_mix(body)}
    return None


def census(text: str) -> list[dict]:
    """One row per kernel configuration: its state loop, its dt loop, instructions per (t, n) step."""
    rows = []
    lines = text.splitlines()
    starts = [(i, ENTRY.match(ln).group(1)) for i, ln in enumerate(lines) if ENTRY.match(ln)]
    for j, (i, name) in enumerate(starts):
        seg, lanes = CONFIG.search(name), LANES.search(name)
        if seg:
            kind, config = seg.group(1), [int(v) for v in seg.groups()[1:]]
            steps, states = config[2], 1  # a pass: TI steps of one state
        elif lanes:
            if "Half" in lanes.group(1) or "BFloat16" in lanes.group(1):
                continue  # the fp32 instantiation only
            kind, config = "fwd-lanes", [int(lanes.group(2)), int(lanes.group(3))]
            steps, states = STEPS_PER_PASS, N_STATES  # a pass: 4 steps of all 16 states
        else:
            continue
        body = lines[i:starts[j + 1][0] if j + 1 < len(starts) else len(lines)]
        dt = dt_loop(body)
        for loop in state_loops(body):
            if loop["ex2"] < steps * states:  # not a state loop (the parameter loads: one exp each)
                continue
            nested = dt is not None and loop["lines"][0] <= dt["lines"][0] and dt["lines"][1] <= loop["lines"][1]
            own = loop["instructions"] - (dt["instructions"] if nested else 0)
            per_step = own / (steps * states)
            # one r of the dt loop: an FMA per step of the lane's TI (segment) or 4 (lanes) steps;
            # nvcc unrolls the loop, so a pass holds fma / steps values of r
            dt_steps = config[2] if seg else STEPS_PER_PASS
            r_per_pass = max(1, dt["fma"] // dt_steps) if dt else 1
            dt_per_r = dt["instructions"] / r_per_pass / (dt_steps * N_STATES) if dt else 0.0
            rows.append({"kernel": kind, "config": config, **loop, "per_step": per_step,
                         "dt_loop_instructions": dt["instructions"] if dt else None,
                         "dt_r_per_pass": r_per_pass,
                         "dt_per_r": dt_per_r, "per_step_r4": per_step + 4 * dt_per_r,
                         "per_step_r32": per_step + 32 * dt_per_r})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="90")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("fwd", "bwd"):
            src = REPO / "csrc" / "cuda" / f"kernel_{kind}_f32.cu"
            rows += census(compile_ptx(src, args.arch, Path(tmp) / f"{kind}.ptx"))
    print(f"# state-loop census, fp32 kernels, sm_{args.arch} PTX; per (t, n) step: the state loop's "
          "instructions per step and state, + R x the dt loop's (the delta projection)")
    print(f"{'kernel':9} {'config':12} {'instr':>6} {'ex2':>4} {'shfl':>5} {'ld.sh':>6} {'st.sh':>6} "
          f"{'bar':>4} {'per step':>8} {'dt/r':>6} {'R=4':>6} {'R=32':>6}")
    for r in rows:
        cfg = "<" + ",".join(map(str, r["config"])) + ">"
        print(f"{r['kernel']:9} {cfg:12} {r['instructions']:6d} {r['ex2']:4d} {r['shfl']:5d} "
              f"{r['ld.shared']:6d} {r['st.shared']:6d} {r['bar']:4d} {r['per_step']:8.2f} "
              f"{r['dt_per_r']:6.3f} {r['per_step_r4']:6.2f} {r['per_step_r32']:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
