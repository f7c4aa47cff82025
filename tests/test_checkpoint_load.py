"""Loading MambaAD weights: the authors' two namings (ADer, official), ours, DDP; strictness; map scale."""

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mambaad
from mambaad import anomaly_map, create_model
from mambaad.checkpoint import load_checkpoint, save_checkpoint
from mambaad.decoder import LSSModule
from mambaad_kernels.modules import SS2D

from .model_helpers import seeded_model

NAMINGS = ("official", "ader")
_AUTHORS_BOTTLENECK = {"down1.conv": "conv1", "down1.bn": "bn1", "lat2.conv": "conv21", "lat2.bn": "bn21",
                       "down2.conv": "conv2", "down2.bn": "bn2", "lat3.conv": "conv31", "lat3.bn": "bn31",
                       "fuse.conv": "convf", "fuse.bn": "bnf"}
# the 1x1 convolutions around the 7x7 depthwise one, by naming (ADer's forward runs
# conv1a3(conv77(conv1b3(x))); the official repository calls them conv1b7 / conv1a7)
_LOCAL7_PW = {"official": ("conv1b7", "conv1a7"), "ader": ("conv1b3", "conv1a3")}


def _authors_name(key: str, naming: str) -> str:
    """Our name -> the authors' name (their model/mambaad.py), written out independently."""
    if key.startswith("encoder.body."):
        return "net_t." + key[len("encoder.body."):]
    if key.startswith("bottleneck.oce."):
        return "mff_oce.bn_layer." + key[len("bottleneck.oce."):]
    if key.startswith("bottleneck."):
        a, b, tail = key[len("bottleneck."):].split(".", 2)
        return f"mff_oce.{_AUTHORS_BOTTLENECK[a + '.' + b]}.{tail}"
    parts = key.split(".")  # decoder.stages.{i}.upsample.* | decoder.stages.{i}.lss.{j}.*
    assert parts[:2] == ["decoder", "stages"], key
    i = parts[2]
    if parts[3] == "upsample":
        return f"net_s.layers_up.{i}.upsample." + ".".join(parts[4:])
    head = f"net_s.layers_up.{i}.blocks.{parts[4]}."
    if parts[5] == "ssm":
        return head + "smm_blocks." + ".".join(parts[6:])
    if parts[5] == "fuse":
        return head + "finalconv11." + parts[6]
    k = parts[5][-1]  # local5 / local7
    before, after = _LOCAL7_PW[naming] if k == "7" else ("conv1b5", "conv1a5")
    conv = {"pw_in": before, "dw": f"conv{k}{k}", "pw_out": after}[parts[6]]
    return head + conv + ".0." + parts[7]


def _authors_state_dict(model: mambaad.MambaAD, naming: str) -> tuple[dict, list[str]]:
    """The model's weights in the authors' naming, with their stored scan indices and, for ADer, the
    unused depthwise conv33 of every LSS module. Returns (state dict, the keys that may be dropped)."""
    sd = {_authors_name(k, naming): v for k, v in model.state_dict().items()}
    dropped = []
    for name, m in model.named_modules():
        if isinstance(m, SS2D):
            prefix = _authors_name(name + ".in_proj.weight", naming).rsplit("in_proj.weight", 1)[0]
            for idx in ("index_flat", "index_flat_inv"):
                sd[prefix + "scans." + idx] = torch.arange(16).view(1, 1, 16)
                dropped.append(prefix + "scans." + idx)
        if naming == "ader" and name.endswith(".local7"):
            parts = name.split(".")  # decoder.stages.{i}.lss.{j}.local7
            key = f"net_s.layers_up.{parts[2]}.blocks.{parts[4]}.conv33.0.weight"
            sd[key] = torch.randn(m.dw.in_channels, 1, 3, 3)
            dropped.append(key)
    return sd, dropped


def _no_proj_model(seed: int) -> mambaad.MambaAD:
    # resnet18 channels (64, 128, 256) = the paper dims' outputs: no projection, like the authors'
    return seeded_model("mambaad_test", seed, dims=(512, 256, 128, 64), depths=(1, 4, 1, 1))


def _poison(model: nn.Module) -> None:
    """Every parameter and persistent buffer to NaN (integers to -12345), so unloaded ones show."""
    with torch.no_grad():
        for t in model.state_dict().values():
            t.fill_(math.nan if t.is_floating_point() else -12345)


def _unloaded(model: nn.Module) -> list[str]:
    return [k for k, t in model.state_dict().items()
            if (t.isnan().any() if t.is_floating_point() else (t == -12345).any())]


@pytest.mark.parametrize("naming", NAMINGS)
def test_authors_names_map_to_ours(naming):
    model = _no_proj_model(0)
    before, after = _LOCAL7_PW[naming]
    keys = {
        "net_t.layer3.1.bn2.running_var": "encoder.body.layer3.1.bn2.running_var",
        "mff_oce.conv21.bias": "bottleneck.lat2.conv.bias",
        "mff_oce.bn_layer.0.downsample.0.weight": "bottleneck.oce.0.downsample.0.weight",
        "net_s.layers_up.2.upsample.expand.weight": "decoder.stages.2.upsample.expand.weight",
        "net_s.layers_up.1.blocks.1.smm_blocks.1.self_attention.x_proj_weight":
            "decoder.stages.1.lss.1.ssm.1.self_attention.x_proj_weight",
        "net_s.layers_up.0.blocks.0.conv77.0.weight": "decoder.stages.0.lss.0.local7.dw.weight",
        f"net_s.layers_up.2.blocks.1.{before}.0.weight": "decoder.stages.2.lss.1.local7.pw_in.weight",
        f"net_s.layers_up.1.blocks.0.{after}.0.bias": "decoder.stages.1.lss.0.local7.pw_out.bias",
        "net_s.layers_up.3.blocks.0.conv1a5.0.bias": "decoder.stages.3.lss.0.local5.pw_out.bias",
        "net_s.layers_up.3.blocks.0.conv1b5.0.weight": "decoder.stages.3.lss.0.local5.pw_in.weight",
        "net_s.layers_up.3.blocks.0.conv55.0.weight": "decoder.stages.3.lss.0.local5.dw.weight",
        "net_s.layers_up.1.blocks.0.finalconv11.weight": "decoder.stages.1.lss.0.fuse.weight",
    }
    sd = {k: torch.zeros(1) for k in keys}
    sd["net_s.layers_up.1.blocks.0.smm_blocks.0.self_attention.scans.index_flat_inv"] = torch.zeros(1)
    assert mambaad.checkpoint_naming(sd) == naming
    assert sorted(mambaad.checkpoint_filter_fn(sd, model)) == sorted(keys.values())


@pytest.mark.parametrize("naming", NAMINGS)
def test_authors_checkpoint_loads_every_tensor(naming, tmp_path, caplog):
    src = _no_proj_model(0).eval()
    assert all(isinstance(p, nn.Identity) for p in src.proj)
    authors, dropped = _authors_state_dict(src, naming)
    dst = _no_proj_model(1).eval()
    with caplog.at_level(logging.INFO, logger="mambaad.model"):
        filtered = mambaad.checkpoint_filter_fn(authors, dst)
    ours = src.state_dict()
    assert sorted(filtered) == sorted(ours)  # only the scan indices and ADer's conv33 are dropped
    for k, v in ours.items():
        assert filtered[k].data_ptr() == v.data_ptr(), k  # every tensor lands in its own place
    conv33 = [k for k in dropped if ".conv33." in k]
    n_lss = sum(isinstance(m, LSSModule) for m in src.modules())
    assert len(conv33) == (n_lss if naming == "ader" else 0) and n_lss >= 4
    assert all(k in caplog.text for k in conv33)
    path = tmp_path / "ckpt.pth"
    torch.save({"net": authors, "epoch": 3}, path)  # the authors' trainer checkpoint layout
    _poison(dst)
    result = mambaad.load_pretrained(dst, path)  # strict by default
    assert not result.missing_keys and not result.unexpected_keys
    assert _unloaded(dst) == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x).anomaly_map, src(x).anomaly_map, rtol=0, atol=0)


@pytest.mark.parametrize("form", ["ours", "ddp", "ader-ddp"])
def test_every_tensor_loads_from_our_and_ddp_checkpoints(form):
    # the authors' naming has no projections: their decoder's channels are the encoder's
    build = _no_proj_model if form == "ader-ddp" else (lambda seed: seeded_model("mambaad_test", seed))
    src = build(0)
    sd = _authors_state_dict(src, "ader")[0] if form == "ader-ddp" else src.state_dict()
    if form != "ours":
        sd = {"module." + k: v for k, v in sd.items()}
    dst = build(1)
    _poison(dst)
    mambaad.load_pretrained(dst, {"state_dict": sd})
    assert _unloaded(dst) == []
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_mixed_or_unknown_naming_raises():
    model = _no_proj_model(0)
    sd, _ = _authors_state_dict(model, "official")
    ader_key = "net_s.layers_up.0.blocks.0.conv1b3.0.weight"
    with pytest.raises(ValueError, match="mixes ADer's naming") as err:
        mambaad.checkpoint_filter_fn({**sd, ader_key: torch.zeros(1)}, model)
    assert ader_key in str(err.value) and "conv1b7" in str(err.value)
    neither = {k: v for k, v in sd.items() if ".conv1b7." not in k and ".conv1a7." not in k}
    with pytest.raises(ValueError, match="neither ADer's conv1b3"):
        mambaad.checkpoint_filter_fn(neither, model)
    with pytest.raises(ValueError, match="mixes this package's naming"):
        mambaad.checkpoint_filter_fn({**model.state_dict(), "mff_oce.conv1.weight": torch.zeros(1)}, model)
    with pytest.raises(ValueError, match="matches no MambaAD naming"):
        mambaad.load_pretrained(model, {"layer.weight": torch.zeros(1)})


def test_truncated_checkpoint_raises_and_leaves_the_model_alone():
    src = _no_proj_model(0)
    sd, _ = _authors_state_dict(src, "ader")
    cut = "net_s.layers_up.1.blocks.1."  # one LSS module
    truncated = {k: v for k, v in sd.items() if not k.startswith(cut)}
    dst = _no_proj_model(1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match="missing keys") as err:
        mambaad.load_pretrained(dst, truncated)
    assert "decoder.stages.1.lss.1.local7.pw_in.weight" in str(err.value)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k]), k  # refused before anything was copied
    with pytest.warns(UserWarning, match="missing keys"):
        result = mambaad.load_pretrained(dst, truncated, strict=False)
    assert result.missing_keys and all(k.startswith("decoder.stages.1.lss.1.") for k in result.missing_keys)


def test_unexpected_and_misshapen_tensors_raise():
    model = seeded_model("mambaad_test", 0)
    sd = dict(model.state_dict())
    with pytest.raises(ValueError, match="unexpected keys .*decoder.extra.weight"):
        mambaad.load_pretrained(model, {**sd, "decoder.extra.weight": torch.zeros(1)})
    key = "decoder.stages.0.lss.0.fuse.weight"
    with pytest.raises(ValueError, match="differ in shape") as err:
        mambaad.load_pretrained(model, {**sd, key: torch.zeros(3)}, strict=False)
    assert key in str(err.value)
    with pytest.raises(ValueError, match="no state dict"):
        mambaad.load_pretrained(model, {"epoch": 1})


def test_our_checkpoint_round_trip(tmp_path):
    src = seeded_model("mambaad_test", 0, d_state=4, directions=4, scan_method="zigzag").eval()
    ckpt = {"model": src.model_name, "config": dataclasses.asdict(src.config), "state_dict": src.state_dict()}
    torch.save(ckpt, tmp_path / "m.pth")
    loaded = torch.load(tmp_path / "m.pth", weights_only=True)
    torch.manual_seed(1)
    dst = create_model(loaded["model"], **loaded["config"]).eval()
    assert dst.config == src.config and dst.model_name == "mambaad_test"
    result = mambaad.load_pretrained(dst, loaded)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x).anomaly_map, src(x).anomaly_map, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# The anomaly map on the authors' scale
# ---------------------------------------------------------------------------------------------


def _authors_map(enc, dec, size, sigma, weights):
    """ADer's ``cal_anomaly_map`` (mode add) as its documented steps, in float64 numpy + scipy."""
    ndimage = pytest.importorskip("scipy.ndimage")
    total = np.zeros((enc[0].shape[0], *size))
    for w, fe, fd in zip(weights, enc, dec):
        a = 1 - F.cosine_similarity(fe, fd, dim=1)[:, None]
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=True)[:, 0]
        total += a.double().numpy() * w
    total /= len(enc) * sum(weights)
    return np.stack([ndimage.gaussian_filter(m, sigma=sigma) for m in total])


@pytest.mark.parametrize("weights", [None, (1.0, 2.0, 0.5)])
def test_anomaly_map_is_on_the_authors_scale(weights):
    torch.manual_seed(0)
    enc = [torch.randn(2, c, s, s) for c, s in ((16, 16), (32, 8), (64, 4))]
    dec = [f + 0.5 * torch.randn_like(f) for f in enc]
    got = anomaly_map(enc, dec, (64, 48), 4.0, weights)
    want = _authors_map(enc, dec, (64, 48), 4.0, weights or (1, 1, 1))
    np.testing.assert_allclose(got[:, 0].double().numpy(), want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="one weight per scale"):
        anomaly_map(enc, dec, (8, 8), weights=(1.0, 1.0))


def test_version_1_checkpoint_thresholds_are_rescaled(tmp_path):
    """Version 1 stored thresholds and map ranges of the undivided map; they are read / 9."""
    model = seeded_model("mambaad_test", 0)
    payload = {"model_name": "mambaad_test", "model_config": dataclasses.asdict(model.config),
               "state_dict": model.state_dict(), "image_size": 64,
               "thresholds": {"image": {"all": 0.9, "disc": float("nan")}, "pixel": {"disc": 1.8}},
               "map_range": {"all": [0.09, 2.7]}}
    path = str(tmp_path / "v1.pt")
    torch.save({"format": "mambaad-checkpoint", "version": 1, **payload}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["version"] == 2
    assert ckpt["thresholds"]["image"]["all"] == pytest.approx(0.1)
    assert math.isnan(ckpt["thresholds"]["image"]["disc"])
    assert ckpt["thresholds"]["pixel"]["disc"] == pytest.approx(0.2)
    assert ckpt["map_range"]["all"] == pytest.approx([0.01, 0.3])
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    assert load_checkpoint(path)["thresholds"]["image"]["all"] == pytest.approx(0.1)  # not rescaled twice
