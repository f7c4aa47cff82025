"""Does a SIGKILLed and resumed ``mambaad train`` continue exactly (issue 22's scenario)?

Two ``mambaad train`` runs side by side (mambaad_test, 64 px, batch 4, 300 iterations, a checkpoint
every 7 steps, ``--workers 0``, CPU): one left alone, one SIGKILLed as soon as its ``last.pt`` holds
step 91 or later and then resumed with ``--resume``. Prints the step it was killed at, the largest
per-step loss difference, the first differing step and whether the final weights are identical.

    python benchmarks/dev/resume_check.py --repo . --root DATA --output /tmp/resume_check

``--repo`` may point at another checkout (an older version, to see the difference it had); a
generated dataset: ``python -c "from tests.datagen import make_tiny_mvtec; make_tiny_mvtec('DATA')"``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import torch


def _cmd(repo: str, root: str, out: str, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "mambaad.cli", "train", "--root", root, "--dataset", "mvtec", "--model",
           "mambaad_test", "--image-size", "64", "--batch-size", "4", "--iterations", "300", "--save-every",
           "7", "--workers", "0", "--device", "cpu", "--output", out, *extra]
    with open(os.path.join(repo, "mambaad", "cli.py")) as f:
        if "--eval-every" in f.read():  # versions with evaluation during training: off
            cmd += ["--eval-every", "0"]
    return cmd


def _step(path: str) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=".", help="checkout to run (default: this one)")
    parser.add_argument("--root", required=True, help="MVTec-layout dataset root")
    parser.add_argument("--output", required=True, help="folder for the two runs")
    parser.add_argument("--kill-at", type=int, default=91, help="kill once last.pt holds this step")
    args = parser.parse_args()
    repo = os.path.abspath(args.repo)
    env = dict(os.environ, PYTHONPATH=repo, OMP_NUM_THREADS="1")
    ref_dir, run_dir = os.path.join(args.output, "ref"), os.path.join(args.output, "run")
    quiet = {"cwd": repo, "env": env, "stderr": subprocess.DEVNULL}
    ref = subprocess.Popen(_cmd(repo, args.root, ref_dir), **quiet)
    run = subprocess.Popen(_cmd(repo, args.root, run_dir), start_new_session=True, **quiet)
    last = os.path.join(run_dir, "last.pt")
    while (_step(last) or 0) < args.kill_at:
        if run.poll() is not None:
            sys.exit("the run ended before it could be killed")
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)  # one process, workers 0: its group is all of it
    run.wait()
    killed = _step(last)
    subprocess.run(_cmd(repo, args.root, run_dir, "--resume"), check=True, **quiet)
    ref.wait()
    logs = []
    for d in (ref_dir, run_dir):
        with open(os.path.join(d, "train_log.json")) as f:
            logs.append(json.load(f)["steps"])
    a, b = logs
    diff = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
    first = next((x["step"] for x, y in zip(a, b) if x["loss"] != y["loss"]), None)
    wa, wb = (torch.load(os.path.join(d, "last.pt"), weights_only=True)["state_dict"]
              for d in (ref_dir, run_dir))
    same = all(torch.equal(v, wb[k]) for k, v in wa.items())
    print(f"killed with last.pt at step {killed}; steps {len(a)} / {len(b)}; max |loss difference| {diff:g}; "
          f"first differing step {first}; final loss {a[-1]['loss']:.6f} vs {b[-1]['loss']:.6f}; "
          f"final weights identical: {same}")


if __name__ == "__main__":
    main()
