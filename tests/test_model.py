"""The MambaAD model: parameter exactness, shapes, train / eval contract, checkpoints, config."""

import dataclasses
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn

import mambaad
import mambaad_kernels as mk
from mambaad import MambaADConfig, anomaly_map, create_model, gaussian_blur, reconstruction_loss
from mambaad.bottleneck import HFPN
from mambaad.decoder import LSSModule
from mambaad_kernels.modules import SS2D, HSSBlock

from .model_helpers import (FAST_BACKEND, check_train_step, count_params as _count,  # noqa: F401
                            one_thread, seeded_model)
from .parity import rel_err


def _test_model(seed: int = 0, **overrides) -> mambaad.MambaAD:
    return seeded_model("mambaad_test", seed, **overrides)


# ---------------------------------------------------------------------------------------------
# Parameter exactness (paper configuration, resnet34)
# ---------------------------------------------------------------------------------------------

# HSS block on C channels (d_inner E = 2C, R = ceil(C / 16), N = 16, K = 8):
#   ln_1 2C + in_proj 4C^2 + conv2d 10E + x_proj K (R + 2N) E + dt_projs K E R + K E
#   + A_logs K E N + Ds K E + out_norm 2E + out_proj 2C^2 = 6C^2 + C (826 + 32R)
#   C=512 (R=32): 2,520,064   C=256 (R=16): 735,744   C=128 (R=8): 236,800   C=64 (R=4): 85,632
# LSS extras: 4 conv1x1 (C^2 + C) + dw 5x5 25C + dw 7x7 49C + fuse (3C^2 + C) = 7C^2 + 79C
#   C=512: 1,875,456   C=256: 478,976   C=128: 124,800   C=64: 33,728
# PatchExpand into C: Linear 2C -> 4C, 8C^2, + LayerNorm 2C
#   C=256: 524,800   C=128: 131,328   C=64: 32,896
# Stage 0 (512, 1 x 3):          3 * 2,520,064 + 1,875,456                  = 9,435,648
# Stage 1 (256, 2 x 2): 524,800 + 2 * (2 * 735,744 + 478,976)              = 4,425,728
# Stage 2 (128, 2 x 3): 131,328 + 2 * (3 * 236,800 + 124,800)              = 1,801,728
# Stage 3 (64, 1 x 3):   32,896 + 3 * 85,632 + 33,728                        =   323,520
# Decoder                                                                   = 15,986,624
# HFPN (64, 128, 256 -> 512): conv3x3 64->128 73,728 + BN 256; conv1x1+b 128 16,512 + BN 256;
#   conv3x3 128->256 294,912 + BN 512; 2 x (conv1x1+b 256 65,792 + BN 512);
#   Bottleneck 0 (256 -> 128 -> 512, stride 2, shortcut 131,072 + BN 1,024): 379,392;
#   Bottlenecks 1, 2 (512 -> 128 -> 512): 2 x 280,064                       =  1,458,304
# Trainable = 15,986,624 + 1,458,304 = 17,444,928 (SPEC: 15.99 M + 1.46 M = "17.45 M")
# Frozen: resnet34 stem + layer1..3 = 8,170,304 (SPEC: 8.17 M). Total 25,615,232 (~25.6 M).
PAPER_DECODER = 15_986_624
PAPER_BOTTLENECK = 1_458_304
PAPER_TRAINABLE = 17_444_928
PAPER_FROZEN = 8_170_304


def test_paper_parameter_counts():
    model = create_model("mambaad")
    assert model.model_name == "mambaad"
    assert _count(model.decoder) == PAPER_DECODER
    assert _count(model.bottleneck) == PAPER_BOTTLENECK
    assert _count(model, trainable=True) == PAPER_TRAINABLE
    assert _count(model, trainable=False) == PAPER_FROZEN == _count(model.encoder)
    assert all(isinstance(p, nn.Identity) for p in model.proj)  # no projection for resnet34
    assert model.config.stage_layout == ((1, 3), (2, 2), (2, 3), (1, 3))
    layout = [[len(m.ssm) for m in stage.lss] for stage in model.decoder.stages]
    assert layout == [[3], [2, 2], [3, 3], [3]]
    assert not any("index" in k for k in model.state_dict())  # scan paths are not state


def test_drop_path_schedule():
    # linspace(0, 0.2, 16) reversed = 0.2 * (15 - i) / 15; module j of a stage takes entry j of
    # its stage's slice (starts 0, 3, 7, 13), for all its blocks (the authors' indexing).
    expected = [[0.2], [0.2 * 12 / 15, 0.2 * 11 / 15], [0.2 * 8 / 15, 0.2 * 7 / 15], [0.2 * 2 / 15]]
    rates = MambaADConfig().drop_path_rates
    assert [len(r) for r in rates] == [1, 2, 2, 1]
    for got, want in zip(rates, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    model = _test_model(depths=(3, 4, 6, 3))
    for stage, want in zip(model.decoder.stages, expected, strict=True):
        for module, rate in zip(stage.lss, want, strict=True):
            assert all(b.drop_path.drop_prob == pytest.approx(rate, abs=1e-6) for b in module.ssm)


# ---------------------------------------------------------------------------------------------
# Forward, backward, shapes, train / eval contract
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_mambaad_test_forward_backward_64(backend):
    reason = mk.backends.unavailable_reason(backend, "cpu")
    if reason:
        pytest.skip(f"{backend} backend unavailable: {reason}")
    model = _test_model(backend=backend)
    check_train_step(model)
    scan_grads = [m.A_logs.grad.abs().sum() for m in model.modules() if isinstance(m, SS2D)]
    assert len(scan_grads) == 4 and all(g > 0 for g in scan_grads)


@pytest.mark.parametrize("size", [(64, 96), (224, 224), (256, 320)])
def test_any_input_size(size):
    model = _test_model().eval()
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert isinstance(out, mambaad.AnomalyOutput)
    assert out.anomaly_map.shape == (1, 1, h, w) and out.pred_score.shape == (1,)
    assert torch.isfinite(out.anomaly_map).all()
    # the decoder's deepest grid is H/32 x W/32 and its outputs come back at the encoder's grids
    _, dec = model.forward_features(torch.randn(1, 3, h, w))
    assert [tuple(f.shape[-2:]) for f in dec] == [(h // s, w // s) for s in (4, 8, 16)]


def test_train_eval_contract():
    model = _test_model()
    x = torch.randn(2, 3, 64, 64)
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2 and all(len(f) == 3 for f in out)
    model.eval()
    with torch.no_grad():
        a = model(x)
        b = model(x)
        enc, dec = model.forward_features(x)
    assert a.anomaly_map.shape == (2, 1, 64, 64)
    torch.testing.assert_close(a.pred_score, a.anomaly_map.flatten(1).amax(1), rtol=0, atol=0)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=0, atol=0)  # eval is deterministic
    torch.testing.assert_close(a.anomaly_map, anomaly_map(enc, dec, (64, 64), 4.0), rtol=0, atol=0)


def test_train_after_inference_mode():
    # scan paths first built under torch.inference_mode are cached; later training must still be
    # able to save them for backward (an unusual size, so that this test builds them first)
    model = _test_model()
    x = torch.randn(1, 3, 96, 160)
    with torch.inference_mode():
        model.eval()(x)
    enc, dec = model.train()(x)
    reconstruction_loss(enc, dec).backward()
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_encoder_frozen_after_train():
    model = _test_model()
    model.train()
    assert model.training and model.decoder.training and model.bottleneck.training
    assert not any(m.training for m in model.encoder.modules())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.encoder.train(True)  # the encoder refuses train mode on its own too
    assert not any(m.training for m in model.encoder.modules())
    stats = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model(torch.randn(2, 3, 64, 64))  # a train-mode forward must not move BN running stats
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, stats[k], rtol=0, atol=0)


def test_channel_adaptation_and_other_timm_encoder():
    model = _test_model()  # decoder outputs 8 / 16 / 32 channels, resnet18 has 64 / 128 / 256
    assert [(p.in_channels, p.out_channels) for p in model.proj] == [(8, 64), (16, 128), (32, 256)]
    model = _test_model(encoder="mobilenetv2_100", dims=(512, 256, 128, 64))  # 24 / 32 / 96 channels
    assert model.encoder.channels == (24, 32, 96)
    assert model.bottleneck.down1.conv.in_channels == 24 and model.bottleneck.lat3.conv.in_channels == 96
    assert [(p.in_channels, p.out_channels) for p in model.proj] == [(64, 24), (128, 32), (256, 96)]
    enc, dec = model.train()(torch.randn(2, 3, 64, 64))
    assert [f.shape for f in enc] == [f.shape for f in dec]
    hfpn = HFPN((24, 32, 96), 128, blocks=2)
    feats = [torch.randn(1, 24, 16, 24), torch.randn(1, 32, 8, 12), torch.randn(1, 96, 4, 6)]
    assert hfpn(feats).shape == (1, 128, 2, 3)


def test_input_errors():
    model = _test_model().eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 64, 80))
    with pytest.raises(ValueError, match="at least 2 cells"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(TypeError, match="float64"):
        model(torch.randn(1, 3, 64, 64, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Anomaly map, blur, loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,sigma", [((3, 40, 56), 4.0), ((1, 10, 7), 4.0), ((2, 33, 20), 1.5)])
def test_gaussian_blur_matches_scipy(shape, sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(*shape, dtype=torch.float64)
    got = gaussian_blur(x[:, None], sigma)[:, 0]
    want = torch.stack([torch.from_numpy(ndimage.gaussian_filter(m.numpy(), sigma=sigma)) for m in x])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_anomaly_map_hand_cases():
    f = [torch.randn(2, c, s, s) for c, s in ((4, 8), (6, 4), (8, 2))]
    zero = anomaly_map(f, [t.clone() for t in f], (32, 32))
    assert zero.shape == (2, 1, 32, 32) and zero.abs().max() < 1e-6  # perfect reconstruction
    # decoder = -encoder on one scale: 1 - cos = 2 there, 0 on the others; (0 + 2 + 0) / (3 x 3) after any
    # upsampling and blur (the authors' scale)
    flipped = anomaly_map(f, [f[0], -f[1], f[2]], (32, 48))
    torch.testing.assert_close(flipped, torch.full((2, 1, 32, 48), 2.0 / 9), rtol=0, atol=1e-6)
    # a scaled reconstruction has cosine 1: no anomaly
    assert anomaly_map(f, [3 * t for t in f], (16, 16), sigma=0).abs().max() < 1e-6


def test_reconstruction_loss_hand_case():
    enc = [torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 2, 2), torch.zeros(2, 7, 1, 1)]
    dec = [torch.ones_like(enc[0]), torch.full_like(enc[1], 2.0), torch.zeros_like(enc[2])]
    # MSE per scale 1, 4, 0; times 5, summed
    assert reconstruction_loss(enc, dec).item() == pytest.approx(25.0)
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_loss(enc, dec[::-1])


# ---------------------------------------------------------------------------------------------
# Configuration, registry, backends, imports
# ---------------------------------------------------------------------------------------------


def test_unknown_config_keys_raise():
    with pytest.raises(ValueError, match="unknown MambaADConfig field"):
        create_model("mambaad_test", dimz=(8, 4, 2, 1))
    with pytest.raises(ValueError, match="unknown MambaADConfig field"):
        MambaADConfig().replace(drop_path=0.1)
    with pytest.raises(TypeError):
        MambaADConfig(typo=1)
    with pytest.raises(ValueError, match="derived"):
        MambaADConfig().replace(stage_layout=((1, 1),) * 4)
    with pytest.raises(ValueError, match="half the previous"):
        MambaADConfig(dims=(512, 256, 100, 50))
    with pytest.raises(ValueError, match="unknown model"):
        create_model("mambaad_huge")
    cfg = MambaADConfig(depths=[2, 2, 2, 2])  # lists (JSON) become tuples
    assert cfg.depths == (2, 2, 2, 2) and cfg.stage_layout == ((1, 2),) * 4
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    assert MambaADConfig().replace(**as_json) == cfg


def test_registry_and_pluggable_parts():
    assert {"mambaad", "mambaad_test"} <= set(mambaad.list_models())

    @mambaad.register_block("test_conv_block")
    def conv_block(dim, drop_path, config):
        return nn.Linear(dim, dim)

    @mambaad.register_bottleneck("test_pool_bottleneck")
    def pool_bottleneck(in_channels, out_channels, config):
        class Pool(nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = nn.Conv2d(in_channels[2], out_channels, 1)

            def forward(self, feats):
                return self.proj(nn.functional.avg_pool2d(feats[2], 2))
        return Pool()

    with pytest.raises(ValueError, match="already registered"):
        mambaad.register_block("hss")(conv_block)
    model = _test_model(block="test_conv_block", bottleneck="test_pool_bottleneck")
    assert not any(isinstance(m, (HSSBlock, HFPN)) for m in model.modules())
    assert all(isinstance(b, nn.Linear) for m in model.modules() if isinstance(m, LSSModule) for b in m.ssm)
    enc, dec = model.train()(torch.randn(1, 3, 64, 64))
    assert [f.shape for f in enc] == [f.shape for f in dec]
    with pytest.raises(ValueError, match="unknown decoder block"):
        _test_model(block="nope")


def test_set_backend():
    model = _test_model(backend=None)
    assert all(m.backend is None for m in model.modules() if isinstance(m, SS2D))
    model.set_backend("reference")
    assert model.config.backend == "reference"
    assert all(m.backend == "reference" for m in model.modules() if isinstance(m, SS2D))
    with pytest.raises(ValueError, match="unknown backend"):
        model.set_backend("tpu")


def _assert_backends_agree(backend: str, device: str, size: tuple[int, int], tol: float = 1e-4):
    """mambaad_test on ``backend`` vs the reference scan, same weights: the anomaly maps within
    ``tol`` (max |error| / max |reference|, parity.rel_err); every gradient's max |error| within
    ``10 tol`` of its own max |reference| plus ``tol`` of the largest gradient of the model (the
    conv biases before an InstanceNorm have gradients that are zero up to rounding)."""
    reason = mk.backends.unavailable_reason(backend, device)
    if reason:
        pytest.skip(f"{backend} backend unavailable on {device}: {reason}")
    ref = _test_model(0, backend="reference").to(device).eval()
    fused = _test_model(1, backend=backend).to(device).eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, *size, device=device)
    outs = []
    for model in (ref, fused):
        enc, dec = model.forward_features(x)  # eval mode: no dropout / drop-path, BN running stats
        reconstruction_loss(enc, dec).backward()
        with torch.no_grad():
            outs.append(model(x).anomaly_map)
    assert rel_err(outs[1], outs[0]) <= tol
    want = {n: p.grad.double() for n, p in ref.named_parameters() if p.requires_grad}
    largest = max(g.abs().max().item() for g in want.values())
    for name, p in fused.named_parameters():
        if p.requires_grad:
            err = (p.grad.double() - want[name]).abs().max().item()
            assert err <= 10 * tol * want[name].abs().max().item() + tol * largest, (name, err)


def test_reference_and_cpu_backends_agree():
    _assert_backends_agree("cpu", "cpu", (64, 64))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backends_agree_with_reference(backend):
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 both sides
    try:
        _assert_backends_agree(backend, "cuda", (256, 320))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def test_import_is_light():
    code = ("import sys, mambaad; bad = [m for m in sys.modules if m.startswith(('mambaad.data', "
            "'mambaad.cli', 'mambaad.train', 'mambaad.evaluate', 'mambaad.predict', "
            "'mambaad.encoders.tflite', 'tflite'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
