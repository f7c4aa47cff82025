"""MMAD (mambaad/mmad.py): parameter counts, structure, forward / backward, train / eval contract,
input sizes, checkpoints, the DMF's dilated path, the CLI, the model benchmark, and the grouped (GSS)
scan on every backend at MMAD shapes (test_parity.py has the small "gss" cases; test_modules.py
checks that a GSS block with K = 1 is the one-direction HSS block)."""

import dataclasses

import pytest
import torch
import torch.nn as nn

import mambaad
import mambaad_kernels as mk
from mambaad import DMF, MambaADConfig, anomaly_map, create_model
from mambaad.decoder import LSSModule
from mambaad_kernels.modules import SS2D, GSSBlock, HSSBlock
from mambaad_kernels.paths import scan_paths

from .datagen import make_tiny_mvtec
from .model_helpers import (FAST_BACKEND, check_train_step, count_params as _count,  # noqa: F401
                            one_thread, seeded_model)
from .parity import BACKENDS, make_params, run_case


def _test_model(seed: int = 0, **overrides) -> mambaad.MambaAD:
    return seeded_model("mmad_test", seed, **overrides)


# ---------------------------------------------------------------------------------------------
# Parameter counts and structure of `mmad` (resnet34)
# ---------------------------------------------------------------------------------------------

# GSS block on C channels (d_inner E = 2C, R = ceil(C / 16), N = 16, K = 8 groups of E / K):
#   ln_1 2C + in_proj 4C^2 + conv2d 10E + x_proj K (R + 2N) (E / K) + dt_projs K (E / K) R + K (E / K)
#   + A_logs E N + Ds E + out_norm 2E + out_proj 2C^2
#   = 6C^2 + 2C + 20C + (2CR + 64C) + 2CR + 2C + 32C + 2C + 4C = 6C^2 + C (126 + 4R)
#   (K cancels: the parameters of a one-direction HSS block)
#   C=512 (R=32): 1,702,912   C=256 (R=16): 441,856   C=128 (R=8): 118,528   C=64 (R=4): 33,664
# LSS extras (as MambaAD): 4 conv1x1 (C^2 + C) + dw 5x5 25C + dw 7x7 49C + fuse (3C^2 + C) = 7C^2 + 79C
#   C=512: 1,875,456   C=256: 478,976   C=128: 124,800   C=64: 33,728
# PatchExpand into C: 8C^2 + 2C             C=256: 524,800   C=128: 131,328   C=64: 32,896
# Stage 0 (512, 1 x 3):          3 * 1,702,912 + 1,875,456                  = 6,984,192
# Stage 1 (256, 2 x 2): 524,800 + 2 * (2 * 441,856 + 478,976)              = 3,250,176
# Stage 2 (128, 2 x 3): 131,328 + 2 * (3 * 118,528 + 124,800)              = 1,092,096
# Stage 3 (64, 1 x 3):   32,896 + 3 * 33,664 + 33,728                        =   167,616
# Hybrid Mamba Decoder                                                      = 11,494,080
# DMF (64, 128, 256 -> 512):
#   HFPN fusion: down1 3x3 64->128 73,728 + BN 256; lat2 1x1+b 16,512 + BN 256; down2 3x3 128->256
#     294,912 + BN 512; lat3 and fuse 1x1+b 256 2 x (65,792 + BN 512)         =   518,784
#   dilated 3 x (3x3 256->256 589,824 + BN 512)                              = 1,771,008
#   merge 1x1 768->256 196,608 + BN 512                                      =   197,120
#   down 3x3 stride 2 256->512 1,179,648 + BN 1,024                          = 1,180,672
#   Mamba block: one-direction HSS on 512 (as the GSS formula, C=512)        = 1,702,912
#   DMF                                                                      = 5,370,496
# Trainable = 11,494,080 + 5,370,496 = 16,864,576; frozen resnet34 to layer3 = 8,170,304.
MMAD_STAGES = (6_984_192, 3_250_176, 1_092_096, 167_616)
MMAD_DECODER = 11_494_080
MMAD_DMF_PARTS = {"fusion": 518_784, "dilated": 1_771_008, "merge": 197_120, "down": 1_180_672,
                  "mamba": 1_702_912}
MMAD_DMF = 5_370_496
MMAD_TRAINABLE = 16_864_576
MMAD_FROZEN = 8_170_304


def test_mmad_parameter_counts_and_structure():
    model = create_model("mmad")
    assert model.model_name == "mmad" and isinstance(model, mambaad.MambaAD)
    assert [_count(s) for s in model.decoder.stages] == list(MMAD_STAGES)
    assert _count(model.decoder) == MMAD_DECODER == sum(MMAD_STAGES)
    dmf = model.bottleneck
    assert isinstance(dmf, DMF)
    fusion = sum(_count(getattr(dmf, n)) for n in ("down1", "lat2", "down2", "lat3", "fuse"))
    parts = {"fusion": fusion, **{n: _count(getattr(dmf, n)) for n in ("dilated", "merge", "down", "mamba")}}
    assert parts == MMAD_DMF_PARTS
    assert _count(dmf) == MMAD_DMF == sum(MMAD_DMF_PARTS.values())
    assert _count(model, trainable=True) == MMAD_TRAINABLE == MMAD_DECODER + MMAD_DMF
    assert _count(model, trainable=False) == MMAD_FROZEN == _count(model.encoder)
    assert all(isinstance(p, nn.Identity) for p in model.proj)
    # same skeleton as the paper's MambaAD: dims, depths, modules, scan path
    paper = MambaADConfig()
    assert (model.config.dims, model.config.stage_layout, model.config.scan_method) == (
        paper.dims, paper.stage_layout, "hilbert")
    # HMD: every state-space block of every LSS module is a GSS block (K = 8, Hilbert), beside
    # the 5x5 and 7x7 local branches
    lss = [m for m in model.decoder.modules() if isinstance(m, LSSModule)]
    assert [len(m.ssm) for m in lss] == [3, 2, 2, 3, 3, 3]
    for m in lss:
        assert m.local5.dw.kernel_size == (5, 5) and m.local7.dw.kernel_size == (7, 7)
        for blk in m.ssm:
            assert type(blk) is GSSBlock
            ss2d = blk.self_attention
            assert ss2d.grouped and ss2d.directions == 8 and ss2d.scan_method == "hilbert"
            assert ss2d.x_proj_weight.shape[-1] == ss2d.d_inner // 8
    # DMF: dilations 1, 2, 4 (same padding), one plain Mamba block: sweep, one direction, not grouped
    assert [b.conv.dilation for b in dmf.dilated] == [(1, 1), (2, 2), (4, 4)]
    assert [b.conv.padding for b in dmf.dilated] == [(1, 1), (2, 2), (4, 4)]
    assert type(dmf.mamba) is HSSBlock
    assert (dmf.mamba.self_attention.scan_method, dmf.mamba.self_attention.directions) == ("sweep", 1)
    assert not dmf.mamba.self_attention.grouped
    assert not any("index" in k for k in model.state_dict())


def test_registry_and_config_errors():
    assert {"mmad", "mmad_test"} <= set(mambaad.list_models())
    model = _test_model()
    assert model.model_name == "mmad_test"
    assert (model.config.block, model.config.bottleneck, model.config.encoder) == ("gss", "dmf", "resnet18")
    with pytest.raises(ValueError, match="divisible by K"):
        _test_model(dims=(16, 8, 4, 2))  # d_inner 4 at the last stage: not 8 groups
    with pytest.raises(ValueError, match="fuser_dilations"):
        _test_model(fuser_dilations=(1, 0))
    with pytest.raises(ValueError, match="unknown MambaADConfig field"):
        _test_model(dilations=(1, 2))
    with pytest.raises(ValueError, match="three encoder scales"):
        DMF((64, 128), 64)


# ---------------------------------------------------------------------------------------------
# Forward, backward, train / eval contract, sizes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_mmad_test_forward_backward_64(backend):
    reason = mk.backends.unavailable_reason(backend, "cpu")
    if reason:
        pytest.skip(f"{backend} backend unavailable: {reason}")
    model = _test_model(backend=backend)
    check_train_step(model)
    ss2d = [m for m in model.modules() if isinstance(m, SS2D)]  # 4 decoder GSS blocks + the DMF's
    assert len(ss2d) == 5 and sum(m.grouped for m in ss2d) == 4
    assert all(m.A_logs.grad.abs().sum() > 0 for m in ss2d)
    assert all(b.conv.weight.grad.abs().sum() > 0 for b in model.bottleneck.dilated)


def test_train_eval_contract():
    model = _test_model()
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert isinstance(out, tuple) and len(out) == 2 and all(len(f) == 3 for f in out)
    assert model.bottleneck.training and not any(m.training for m in model.encoder.modules())
    model.eval()
    with torch.no_grad():
        a = model(x)
        b = model(x)
        enc, dec = model.forward_features(x)
    assert isinstance(a, mambaad.AnomalyOutput) and a.anomaly_map.shape == (2, 1, 64, 64)
    assert a.pred_score.shape == (2,)
    torch.testing.assert_close(a.pred_score, a.anomaly_map.flatten(1).amax(1), rtol=0, atol=0)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=0, atol=0)
    torch.testing.assert_close(a.anomaly_map, anomaly_map(enc, dec, (64, 64), 4.0), rtol=0, atol=0)


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (160, 224)])
def test_any_input_size(size):
    model = _test_model().eval()
    h, w = size
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        out = model(x)
        _, dec = model.forward_features(x)
        bott = model.bottleneck(model.encoder(x))
    assert out.anomaly_map.shape == (1, 1, h, w) and torch.isfinite(out.anomaly_map).all()
    assert bott.shape == (1, 64, h // 32, w // 32)  # the DMF ends at the decoder's first grid
    assert [tuple(f.shape[-2:]) for f in dec] == [(h // s, w // s) for s in (4, 8, 16)]


def test_set_backend_reaches_the_fuser():
    model = _test_model(backend="reference").set_backend(None)
    assert model.bottleneck.mamba.self_attention.backend is None
    assert all(m.backend is None for m in model.modules() if isinstance(m, SS2D))


# ---------------------------------------------------------------------------------------------
# The Dilated Mamba Fuser
# ---------------------------------------------------------------------------------------------


def _feats(seed: int, b: int = 2, h: int = 64, w: int = 96) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, h // s, w // s, generator=g) for c, s in ((16, 4), (24, 8), (32, 16))]


def test_dmf_has_no_skip_around_the_dilated_branch():
    torch.manual_seed(0)
    dmf = DMF((16, 24, 32), 48, dilations=(1, 2, 4), d_state=4, backend="reference").eval()
    with torch.no_grad():
        a, b = dmf(_feats(1)), dmf(_feats(2))
        assert a.shape == (2, 48, 2, 3) and not torch.allclose(a, b)
        # cut the dilated branch (the 1x1 merge sees zeros): the output no longer depends on the input
        dmf.merge.conv.weight.zero_()
        a, b = dmf(_feats(1)), dmf(_feats(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dmf_each_dilation_contributes():
    torch.manual_seed(0)
    dmf = DMF((16, 24, 32), 48, dilations=(1, 2, 4), d_state=4, backend="reference").eval()
    feats = _feats(3, h=128, w=128)  # an 8 x 8 grid at stride 16: every dilation reaches inside
    with torch.no_grad():
        full = dmf(feats)
        for branch in dmf.dilated:
            saved = branch.conv.weight.clone()
            branch.conv.weight.zero_()
            assert not torch.allclose(dmf(feats), full)
            branch.conv.weight.copy_(saved)
        torch.testing.assert_close(dmf(feats), full, rtol=0, atol=0)


def test_dmf_mamba_block_sweeps_the_grid():
    """One-direction sweep: the first cell of the deepest grid sees only the cells before it in the
    sweep (itself and, through the 3x3 convs, its neighbours), the last one sees the whole map."""
    torch.manual_seed(0)
    dmf = DMF((16, 24, 32), 48, d_state=4, backend="reference").eval()
    x = torch.randn(1, 8, 8, 48, requires_grad=True)  # (b, h, w, c) at the Mamba block's input
    y = dmf.mamba(x)
    (first,) = torch.autograd.grad(y[0, 0, 0].sum(), x, retain_graph=True)
    (last,) = torch.autograd.grad(y[0, -1, -1].sum(), x)
    assert (first.abs().sum(-1)[0] > 0).sum() <= 4  # cells (0, 0), (0, 1), (1, 0), (1, 1) at most
    assert (last.abs().sum(-1)[0] > 0).all()


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, dict(fuser_dilations=(1, 3), directions=4, scan_method="zigzag")])
def test_checkpoint_round_trip(tmp_path, overrides):
    src = _test_model(0, **overrides).eval()
    ckpt = {"model": src.model_name, "config": dataclasses.asdict(src.config), "state_dict": src.state_dict()}
    torch.save(ckpt, tmp_path / "m.pth")
    loaded = torch.load(tmp_path / "m.pth", weights_only=True)
    torch.manual_seed(1)
    dst = create_model(loaded["model"], **loaded["config"]).eval()
    assert dst.config == src.config and dst.model_name == "mmad_test"
    assert dst.config.block == "gss" and dst.config.bottleneck == "dmf"
    result = mambaad.load_pretrained(dst, loaded, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(dst(x).anomaly_map, src(x).anomaly_map, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# The CLI: `mambaad train --model mmad_test`, then `mambaad eval` of its checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> str:
    """tests/datagen.py's MVTec-layout data, small: 4 training and 2 + 1 per defect test images."""
    return make_tiny_mvtec(str(tmp_path_factory.mktemp("tiny_mvtec")), n_train=4, n_good=2, n_defect=1)


def test_cli_trains_and_evaluates_mmad(tiny_root, tmp_path):
    import json
    import math

    from mambaad.checkpoint import build_model, load_checkpoint
    from mambaad.cli import main

    def cli(*args) -> int:
        return main([str(a) for a in args])

    torch.manual_seed(0)
    common = ["--root", tiny_root, "--dataset", "mvtec", "--categories", "disc", "--workers", 0,
              "--device", "cpu", "--backend", FAST_BACKEND]
    assert cli("train", *common, "--model", "mmad_test", "--image-size", 64, "--iterations", 2,
               "--batch-size", 2, "--output", tmp_path / "train") == 0
    ckpt = load_checkpoint(str(tmp_path / "train" / "last.pt"))
    assert ckpt["model_name"] == "mmad_test" and ckpt["step"] == 2
    assert (ckpt["model_config"]["block"], ckpt["model_config"]["bottleneck"]) == ("gss", "dmf")
    log = json.loads((tmp_path / "train" / "train_log.json").read_text())
    assert [s["step"] for s in log["steps"]] == [1, 2] and all(math.isfinite(s["loss"]) for s in log["steps"])
    model = build_model(ckpt, backend="reference")  # rebuilt from the checkpoint alone
    assert isinstance(model.bottleneck, DMF) and not model.training
    assert cli("eval", *common, "--checkpoint", tmp_path / "train" / "last.pt", "--batch-size", 8,
               "--output", tmp_path / "eval") == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"disc", "mean"}
    assert all(0.0 <= v <= 1.0 for v in metrics["disc"].values())


# ---------------------------------------------------------------------------------------------
# The grouped op on every backend, at MMAD shapes
# ---------------------------------------------------------------------------------------------

# (id, case): the deepest stage of `mmad` on a 256 x 256 input (d_inner 1024 at 8 x 8, R 32, N 16,
# 128 channels per group) and the last stage of `mmad_test` on 64 x 48 (d_inner 16 at 16 x 12,
# R 1, N 8, 2 channels per group); Hilbert, K = 8, as in the models.
MMAD_CASES = [
    ("mmad-stage0-d1024-8x8", dict(b=1, d=1024, h=8, w=8, n=16, r=32, k=8)),
    ("mmad_test-stage3-d16-16x12", dict(b=2, d=16, h=16, w=12, n=8, r=1, k=8)),
]
# "cuda" needs a CUDA device, and Triton runs CPU tensors only in its interpreter (10 to 25 s per case
# at these lengths on a 2-core CPU): both are marked gpu (skipped without one, as test_parity.py's GPU
# cases); the interpreter checks Triton's grouped scan on test_parity.py's small "gss" cases.
def _marks(backend: str) -> list:
    return [pytest.mark.gpu] if backend in ("cuda", "triton") else []


PARITY_PARAMS = [pytest.param(backend, case, id=f"{cid}-{backend}", marks=_marks(backend))
                 for cid, case in MMAD_CASES for backend in BACKENDS]


@pytest.mark.parametrize("backend,case", PARITY_PARAMS)
def test_grouped_scan_parity_mmad_shapes(backend, case, monkeypatch):
    """Forward and all six gradients of every backend against the float64 reference (run_case skips
    a backend that cannot run here, with the reason)."""
    monkeypatch.setenv("MAMBAAD_POISON", "1")
    run_case(backend, **case, method="hilbert", dtype=torch.float32, grouped=True, seed=11)


@pytest.mark.parametrize("method", ["hilbert", "zigzag"])
def test_grouped_scan_is_k_one_direction_scans(method):
    """GSS = group g of the channels scanned along direction g alone and put back in its own
    channels: built here from the one-direction HSS op on each group's gathered sequence."""
    b, d, h, w, n, r, k = 2, 16, 6, 5, 4, 2, 8
    dk = d // k
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(b, d, h, w, generator=gen, dtype=torch.float64)
    xpw, dtw, dtb, alog, ds = [p.double() for p in make_params(d, n, r, k, True, "cpu", generator=gen)]
    got = mk.hss_scan(x, xpw, dtw, dtb, alog, ds, method, k, backend="reference", grouped=True)
    paths = scan_paths(h, w, method, k)  # (k, l): sequence element t of direction g = cell paths[g, t]
    want = torch.empty_like(x).flatten(2)  # (b, d, l)
    for g in range(k):
        ch = slice(g * dk, (g + 1) * dk)
        seq = x.flatten(2)[:, ch][..., paths[g]].unsqueeze(2)  # (b, dk, 1, l): a 1 x L grid, swept
        y = mk.hss_scan(seq, xpw[g:g + 1], dtw[g:g + 1], dtb[g:g + 1], alog[ch], ds[ch], "sweep", 1,
                        backend="reference")  # (b, dk, 1, l)
        want[:, ch, paths[g]] = y[:, :, 0]
    torch.testing.assert_close(got, want.view(b, d, h, w), rtol=1e-12, atol=1e-12)


def test_model_benchmark_runs(tmp_path, monkeypatch):
    """benchmarks/mmad_bench.py model: one row per (model, backend), JSON with the load average."""
    import json
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import mmad_bench

    out = tmp_path / "b.json"
    rows = mmad_bench.main(["model", "--models", "mambaad_test", "mmad_test", "--backends", FAST_BACKEND,
                            "--size", "64", "--rounds", "1", "--warmup", "0", "--iters", "1",
                            "--json", str(out)])
    assert [(r["model"], r["backend"]) for r in rows] == [("mambaad_test", FAST_BACKEND),
                                                          ("mmad_test", FAST_BACKEND)]
    assert all(r["images_per_s_median"] > 0 and r["s_per_call"]["n"] == 1 for r in rows)
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == 2 and len(saved["meta"]["loadavg_start"]) == 3
