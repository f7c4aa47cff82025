"""How many instructions per (t, n) step does each CUDA scan kernel issue? A static census (nvcc, no GPU).

Compiles ``csrc/cuda/kernel_{fwd,bwd}_f32.cu`` for one architecture and reads the machine code
(SASS, disassembled with ``cuobjdump -sass``: the CUDA toolkit's, or the copy triton ships), or the
PTX where no disassembler is found (``--ptx`` forces it; PTX counts moves that ptxas removes). For
every kernel configuration it finds the state loop (the innermost loop whose body evaluates
exponentials: in the segment kernels one pass is the TI steps of one lane for one state n, in the
lane-sequential kernel 4 steps of all 16 states) and the dt loop (one pass per dt rank r, or a few:
the delta projection), and counts what one pass issues: all instructions, exponentials, shuffles,
shared loads / stores, barriers. ``per step`` is the state loop's instruction count per (t, n)
element; ``dt/r`` what the dt loop adds per element per unit of R; ``R=4`` / ``R=32`` the sum at
MambaAD's smallest and largest dt rank. Set it against the ~6 instructions a step of the
recurrence needs (decay argument, EX2, input term, state update, C contraction, a share of the B / C
loads) and against the SM's 4 issue slots and 16 EX2 per clock: below 8 per step the kernel is
bound by the EX2s. A static count, not a measurement of what runs: instructions in rarely taken
branches (the checkpoint stores) count fully, loops nested in a state loop (other than the dt
loop) once.

usage: python benchmarks/dev/kernel_census.py [--arch 90] [--ptx] [--json F]
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
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = re.compile(r"hss_(fwd|bwd)_kernelI\w+?Li(\d+)ELi(\d+)ELi(\d+)E")
LANES = re.compile(r"hss_fwd_lanes_kernelI(\w+?)Li(\d+)ELi(\d+)E")
STEPS_PER_PASS = 4  # the lane-sequential kernel's state loop: 4 steps x 16 states per pass
N_STATES = 16
# what is counted, by opcode prefix, in each format
KINDS = {
    "ptx": {"ex2": ("ex2.",), "fma": ("fma.",), "shfl": ("shfl.",), "ld.shared": ("ld.shared",),
            "st.shared": ("st.shared",), "bar": ("bar.",), "ld.global": ("ld.global",),
            "st.global": ("st.global",), "async": ("cp.async",)},
    "sass": {"ex2": ("MUFU.EX2",), "fma": ("FFMA",), "shfl": ("SHFL",), "ld.shared": ("LDS",),
             "st.shared": ("STS",), "bar": ("BAR",), "ld.global": ("LDG",), "st.global": ("STG",),
             "async": ("LDGSTS",)},
}
PTX_ENTRY = re.compile(r"^\.visible \.entry (\S+)\(")
PTX_LABEL = re.compile(r"^(\$L__BB\d+_\d+):")
PTX_BRANCH = re.compile(r"bra(?:\.uni)?\s+(\$L__BB\d+_\d+);")
SASS_FUNCTION = re.compile(r"Function : (\S+)")
SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
SASS_TARGET = re.compile(r"0x([0-9a-f]+)")


@dataclass
class Kernel:
    """A kernel's instructions (opcodes in program order) and loops (first, last instruction)."""

    name: str
    ops: list[str] = field(default_factory=list)
    loops: list[tuple[int, int]] = field(default_factory=list)


def _nvcc(source: Path, arch: str, out: Path, what: str) -> None:
    import torch.utils.cpp_extension as ce

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise SystemExit("kernel_census.py needs nvcc on PATH")
    includes = [f"-I{p}" for p in ce.include_paths()] + [f"-I{REPO / 'csrc'}",
                                                         f"-I{sysconfig.get_paths()['include']}"]
    cmd = [nvcc, "-O3", "-std=c++20", "--use_fast_math", "--expt-relaxed-constexpr",
           "-DMAMBAAD_WITH_CUDA", *includes, f"-arch=sm_{arch}", f"-{what}", str(source), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"nvcc failed on {source}:\n{res.stderr[-3000:]}")


def cuobjdump() -> str | None:
    """The CUDA toolkit's cuobjdump, else the one triton ships, else None."""
    tool = shutil.which("cuobjdump")
    if tool:
        return tool
    try:
        import triton
    except ImportError:
        return None
    cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(cand) if cand.exists() else None


def parse_ptx(text: str) -> list[Kernel]:
    kernels: list[Kernel] = []
    labels: dict[str, int] = {}
    for line in text.splitlines():
        s = line.strip()
        m = PTX_ENTRY.match(s)
        if m:
            kernels.append(Kernel(m.group(1)))
            labels = {}
            continue
        if not kernels:
            continue
        k = kernels[-1]
        m = PTX_LABEL.match(s)
        if m:
            labels[m.group(1)] = len(k.ops)
            continue
        if not s.endswith(";") or s.startswith(("//", ".", "{", "}")):
            continue
        tokens = s.split()
        k.ops.append(tokens[1] if tokens[0].startswith("@") else tokens[0])
        b = PTX_BRANCH.search(s)
        if b and b.group(1) in labels:
            k.loops.append((labels[b.group(1)], len(k.ops) - 1))
    return kernels


def parse_sass(text: str) -> list[Kernel]:
    kernels: list[Kernel] = []
    index: dict[int, int] = {}
    pending: list[tuple[int, int]] = []

    def close():
        if kernels:
            kernels[-1].loops = [(index[t], i) for t, i in pending if t in index]

    for line in text.splitlines():
        m = SASS_FUNCTION.search(line)
        if m:
            close()
            kernels.append(Kernel(m.group(1)))
            index, pending = {}, []
            continue
        m = SASS_LINE.search(line)
        if not m or not kernels:
            continue
        k = kernels[-1]
        addr, op = int(m.group(1), 16), m.group(2)
        index[addr] = len(k.ops)
        k.ops.append(op)
        if op.startswith("BRA"):
            t = SASS_TARGET.search(m.group(3))
            if t and int(t.group(1), 16) <= addr:  # a branch back: a loop
                pending.append((int(t.group(1), 16), len(k.ops) - 1))
    close()
    return kernels


def _mix(ops: list[str], fmt: str) -> dict:
    return {"instructions": len(ops),
            **{kind: sum(1 for op in ops if op.startswith(prefixes))
               for kind, prefixes in KINDS[fmt].items()}}


def _innermost(loops: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]


def census(kernels: list[Kernel], fmt: str) -> list[dict]:
    """One row per kernel configuration: its state loop, its dt loop, instructions per (t, n) step."""
    rows = []
    for k in kernels:
        seg, lanes = CONFIG.search(k.name), LANES.search(k.name)
        if seg:
            kind, config = seg.group(1), [int(v) for v in seg.groups()[1:]]
            steps, states, dt_steps = config[2], 1, config[2]  # a pass: TI steps of one state
        elif lanes and not re.search(r"Half|BFloat16", lanes.group(1)):  # the fp32 one only
            kind, config = "fwd-lanes", [int(lanes.group(2)), int(lanes.group(3))]
            steps, states, dt_steps = STEPS_PER_PASS, N_STATES, STEPS_PER_PASS  # 4 steps, 16 states
        else:
            continue
        mixes = {lp: _mix(k.ops[lp[0]:lp[1] + 1], fmt) for lp in k.loops}
        # the state loop: the innermost loop of exponentials (loops nested in it hold none)
        state = _innermost([lp for lp in k.loops if mixes[lp]["ex2"] > 0])
        # dt loops: shared loads and FMAs, no exponentials, stores, shuffles, barriers or copies (the
        # compiler may split one into an unrolled loop and a remainder loop)
        dts = [lp for lp in _innermost(k.loops) if mixes[lp]["ld.shared"] and mixes[lp]["fma"] and not any(
            mixes[lp][c] for c in ("ex2", "st.shared", "st.global", "shfl", "bar", "async"))]
        dt = max(dts, key=lambda lp: mixes[lp]["fma"], default=None)  # the unrolled one
        for lp in state:
            mix = mixes[lp]
            if mix["ex2"] < steps * states:  # not a state loop (the parameter loads: one exp each)
                continue
            # a pass of the state loop without the dt loops nested in it (counted apart); other
            # nested loops (the backward's channel sums) count once, as if they ran once per pass
            inner = [o for o in dts if lp[0] <= o[0] and o[1] <= lp[1]]
            own = mix["instructions"] - sum(mixes[o]["instructions"] for o in inner)
            per_step = own / (steps * states)
            # one r of the dt loop is an FMA per step of the lane's dt_steps; unrolled loops hold several
            r_per_pass = max(1, mixes[dt]["fma"] // dt_steps) if dt else 1
            dt_per_r = mixes[dt]["instructions"] / r_per_pass / (dt_steps * N_STATES) if dt else 0.0
            rows.append({"kernel": kind, "config": config, "format": fmt, **mix, "per_step": per_step,
                         "dt_loop_instructions": mixes[dt]["instructions"] if dt else None,
                         "dt_r_per_pass": r_per_pass, "dt_per_r": dt_per_r,
                         "per_step_r4": per_step + 4 * dt_per_r, "per_step_r32": per_step + 32 * dt_per_r})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="90")
    ap.add_argument("--ptx", action="store_true", help="count PTX even where SASS can be had")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    tool = None if args.ptx else cuobjdump()
    fmt = "sass" if tool else "ptx"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("fwd", "bwd"):
            src = REPO / "csrc" / "cuda" / f"kernel_{kind}_f32.cu"
            if tool:
                cubin = Path(tmp) / f"{kind}.cubin"
                _nvcc(src, args.arch, cubin, "cubin")
                res = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True, check=True)
                rows += census(parse_sass(res.stdout), fmt)
            else:
                ptx = Path(tmp) / f"{kind}.ptx"
                _nvcc(src, args.arch, ptx, "ptx")
                rows += census(parse_ptx(ptx.read_text()), fmt)
    print(f"# inner-loop census, fp32 kernels, sm_{args.arch} {fmt.upper()}; per (t, n) step: the state "
          "loop's instructions per step and state, + R x the dt loop's (the delta projection)")
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
