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
KINDS = {"ex2": "ex2.", "shfl": "shfl.", "ld.shared": "ld.shared", "st.shared": "st.shared",
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


def state_loops(lines: list[str]) -> list[dict]:
    """The innermost backward-branch loops whose body holds an ex2, with their instruction mix."""
    labels = {}
    loops = []
    for i, line in enumerate(lines):
        m = LABEL.match(line.strip())
        if m:
            labels[m.group(1)] = i
        b = BRANCH.search(line)
        if b and b.group(1) in labels and labels[b.group(1)] < i:
            body = lines[labels[b.group(1)]:i + 1]
            if any("ex2." in ln for ln in body):
                loops.append((labels[b.group(1)], i, body))
    inner = [lp for lp in loops if not any(o is not lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    out = []
    for start, end, body in inner:
        ops = [opcode(ln) for ln in body if is_instruction(ln)]
        mix = {k: sum(1 for op in ops if op.startswith(prefix)) for k, prefix in KINDS.items()}
        out.append({"lines": [start, end], "instructions": len(ops), **mix})
    return out


def census(text: str) -> list[dict]:
    rows = []
    lines = text.splitlines()
    starts = [(i, ENTRY.match(ln).group(1)) for i, ln in enumerate(lines) if ENTRY.match(ln)]
    for j, (i, name) in enumerate(starts):
        m = CONFIG.search(name)
        if not m:
            continue
        kind, nw, lpc, ti = m.group(1), *map(int, m.groups()[1:])
        body = lines[i:starts[j + 1][0] if j + 1 < len(starts) else len(lines)]
        for loop in state_loops(body):
            if loop["ex2"] < ti:  # not a state loop (the parameter loads take one exp per element)
                continue
            rows.append({"kernel": kind, "config": [nw, lpc, ti], **loop,
                         "per_step": loop["instructions"] / ti})
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
    print(f"# state-loop census, fp32 kernels, sm_{args.arch} PTX (one pass = one state n, TI steps)")
    print(f"{'kernel':6} {'<NW,LPC,TI>':12} {'instr':>6} {'per step':>8} {'ex2':>4} {'shfl':>5} "
          f"{'ld.sh':>6} {'st.sh':>6} {'bar':>4} {'ld.gl':>6} {'st.gl':>6}")
    for r in rows:
        cfg = "<" + ",".join(map(str, r["config"])) + ">"
        print(f"{r['kernel']:6} {cfg:12} {r['instructions']:6d} {r['per_step']:8.1f} {r['ex2']:4d} "
              f"{r['shfl']:5d} {r['ld.shared']:6d} {r['st.shared']:6d} {r['bar']:4d} "
              f"{r['ld.global']:6d} {r['st.global']:6d}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
