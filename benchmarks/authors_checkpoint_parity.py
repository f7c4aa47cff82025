"""Our MambaAD against the authors' own code on the same random weights, through load_pretrained.

The authors' ``model/mambaad.py`` (ADer's or the official repository's; neither is part of this
project, bring a checkout) builds their model with random weights; its state dict goes through
:func:`mambaad.load_pretrained` (strict) into ``mambaad.create_model("mambaad")``; both run on one
image and the decoder features and anomaly maps are compared. The authors' anomaly map is their
``cal_anomaly_map`` taken from their ``util/metric.py`` (mode ``add``, sigma 4).

What stands in for what the authors' file imports (so it runs on a CPU without mamba_ssm): a
``model`` package with their registry and ``get_model`` (timm ``resnet34``, ``features_only``,
out_indices 1..3, as their config) and ``mamba_ssm.ops.selective_scan_interface`` with
:func:`mambaad_kernels.reference.selective_scan` (the plain-PyTorch oracle with mamba_ssm's
signature; fp32 state for fp32 inputs, as mamba_ssm). Their other imports must be installed:
``pip install einops numpy-hilbert-curve pyzorder scipy``.

Usage::

    python benchmarks/authors_checkpoint_parity.py --model-file ADer/model/mambaad.py \\
        --metric-file ADer/util/metric.py [--backend cpu] [--dtype fp32]

Prints one JSON object; exits 1 when a relative error exceeds ``--tol``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
import types

import numpy as np
import timm
import torch
import torch.nn.functional as F

import mambaad
from mambaad_kernels import reference


class _Registry:
    def register_module(self, fn, name=None):
        return fn


def _install_stand_ins() -> None:
    model_pkg = types.ModuleType("model")
    model_pkg.MODEL = _Registry()
    model_pkg.get_model = lambda cfg: timm.create_model("resnet34", pretrained=False, features_only=True,
                                                        out_indices=(1, 2, 3))
    scan = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    scan.selective_scan_fn = scan.selective_scan_ref = reference.selective_scan
    for name in ("mamba_ssm", "mamba_ssm.ops"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules.update({"model": model_pkg, "mamba_ssm.ops.selective_scan_interface": scan})


def _load_function(path: str, name: str):
    """One function of a source file, compiled on its own (their metric module imports a CUDA
    evaluator and more that this comparison does not need)."""
    tree = ast.parse(open(path).read())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    fn.decorator_list = []
    from scipy.ndimage import gaussian_filter

    scope = {"np": np, "F": F, "torch": torch, "gaussian_filter": gaussian_filter}
    exec(compile(ast.Module([fn], []), path, "exec"), scope)
    return scope[name]


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-file", required=True, help="the authors' model/mambaad.py")
    ap.add_argument("--metric-file", required=True, help="ADer's util/metric.py (for cal_anomaly_map)")
    ap.add_argument("--backend", default=None, help="our scan backend (default: the best available)")
    ap.add_argument("--dtype", choices=("fp32", "fp64"), default="fp32")
    ap.add_argument("--size", type=int, default=256, help="image size (the authors' scan sizes need 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    dtype = torch.float64 if args.dtype == "fp64" else torch.float32

    _install_stand_ins()
    spec = importlib.util.spec_from_file_location("authors_mambaad", args.model_file)
    authors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(authors)
    cal_anomaly_map = _load_function(args.metric_file, "cal_anomaly_map")

    torch.manual_seed(args.seed)
    net = authors.MAMBAAD(model_t=None, model_s={"depths_decoder": [3, 4, 6, 3], "scan_type": "hilbert",
                                                 "num_direction": 8})
    with torch.no_grad():  # move every weight and norm statistic off its initial value
        for p in net.parameters():
            if p.is_floating_point():
                p.add_(0.05 * torch.randn_like(p))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    net = net.to(dtype).eval()
    state = net.state_dict()
    ours = mambaad.create_model("mambaad", backend=args.backend).to(dtype).eval()
    naming = mambaad.checkpoint_naming(state)
    mambaad.load_pretrained(ours, {"net": state})  # strict: raises on any missing or unexpected key

    x = torch.randn(1, 3, args.size, args.size, dtype=dtype)
    with torch.no_grad():
        feats_t, feats_s = net(x)
        enc, dec = ours.forward_features(x)
        out = ours(x)
    amap, _ = cal_anomaly_map([f.float() for f in feats_t], [f.float() for f in feats_s],
                              out_size=[args.size, args.size], amap_mode="add", gaussian_sigma=4)
    result = {
        "naming": naming, "dtype": args.dtype, "backend": args.backend, "tensors": len(state),
        "encoder_rel": max(_rel(e, t) for e, t in zip(enc, feats_t)),
        "decoder_rel": [_rel(d, s) for d, s in zip(dec, feats_s)],
        "anomaly_map_rel": _rel(out.anomaly_map[:, 0], amap),
        "score": [float(out.pred_score[0]), float(amap.max())],
    }
    print(json.dumps(result))
    worst = max(result["encoder_rel"], result["anomaly_map_rel"], *result["decoder_rel"])
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
