"""Forward time of the frozen encoders at one input size on this machine: MobileNetV2 (TFLite,
converted) beside timm's resnet34 (random weights: the time does not depend on them).

usage: python benchmarks/encoder_bench.py [--size 256] [--batch 1] [--threads 2] [--iters 5]
The encoders are interleaved call by call; the median and minimum per encoder are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mambaad.encoders import TFLITE_MOBILENET, build_encoder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--encoders", nargs="+", default=[TFLITE_MOBILENET, "resnet34"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, args.size, args.size)
    encoders = {name: build_encoder(name) for name in args.encoders}
    times: dict[str, list[float]] = {name: [] for name in encoders}
    with torch.inference_mode():
        for enc in encoders.values():
            enc(x)  # warm-up
        for _ in range(args.iters):
            for name, enc in encoders.items():
                t0 = time.perf_counter()
                enc(x)
                times[name].append(time.perf_counter() - t0)
    print(f"# {args.batch} x 3 x {args.size} x {args.size}, {args.threads} threads, torch "
          f"{torch.__version__}, load {os.getloadavg()[0]:.2f}")
    for name, ts in times.items():
        chans = getattr(encoders[name], "channels", None)
        print(f"{name:22s} median {statistics.median(ts) * 1e3:8.1f} ms  min {min(ts) * 1e3:8.1f} ms  "
              f"channels {chans}")


if __name__ == "__main__":
    main()
