"""mambaad_kernels.vmamba: VMamba's SS2D / VSSBlock / VSSM on the fused scan.

Each forward type is checked in float64 against tests/vmamba_ref.py (a transcription of VMamba's
documented algorithm that shares no code with our scan paths), on the reference and cpu backends;
state dicts with VMamba's key set and shapes load strictly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mambaad_kernels import vmamba as vm
from mambaad_kernels.backends import unavailable_reason
from tests.vmamba_ref import vmamba_ss2d

BACKENDS = ["reference", "cpu"]
FORWARD_TYPES = ["v0", "v0seq", "v01", "v02", "v03", "v04", "v05", "v2", "v3", "v051d", "v052d",
                 "v05_noz", "v05_nozact", "v3_oact", "v04_onnone", "v05_onnone_noz", "v052d_noz",
                 "v051d_nozact", "v03_noz_oact", "v05_ondwconv3", "v05_oncnorm", "v05_onsoftmax",
                 "v05_onsigmoid"]


def need(backend: str) -> None:
    reason = unavailable_reason(backend, "cpu")
    if reason:
        pytest.skip(f"backend {backend!r} unavailable: {reason}")


def perturb(module: nn.Module, scale: float = 0.05) -> None:
    """Move every parameter off its init (a trained model's parameters are not at their init)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i,forward_type", list(enumerate(FORWARD_TYPES)))
def test_ss2d_forward_types_match_vmamba_algorithm(backend, i, forward_type):
    need(backend)
    channel_first = not forward_type.startswith("v0") or forward_type[2:3] not in ("", "s")
    channel_first = channel_first and i % 2 == 1
    n = (1, 2, 16)[i % 3]
    m = vm.SS2D(d_model=8, d_state=n, ssm_ratio=1.5 if i % 4 == 0 else 2.0, forward_type=forward_type,
                channel_first=channel_first, conv_bias=i % 2 == 0, backend=backend).double()
    perturb(m)
    h, w = (5, 7) if i % 2 else (6, 3)
    x = torch.randn((2, 8, h, w) if channel_first else (2, h, w, 8), dtype=torch.float64)
    want = vmamba_ss2d(m, x)
    got = m(x)
    assert got.shape == x.shape and got.dtype == torch.float64
    assert rel(got, want) <= 1e-10
    # fp32 against the float64 result: the per-block bound
    m32 = m.float()
    assert rel(m32(x.float()), want) <= 1e-5


@pytest.mark.parametrize("forward_type,backend",
                         [("v05_noz", "cpu"), ("v052d", "cpu"), ("v051d", "reference")])
def test_ss2d_gradients_match_vmamba_algorithm(forward_type, backend):
    need(backend)
    m = vm.SS2D(d_model=8, d_state=1, forward_type=forward_type, channel_first=True, backend=backend).double()
    perturb(m)
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    gout = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    (m(x) * gout).sum().backward()
    got = {"x": x.grad.clone(), **{k: p.grad.clone() for k, p in m.named_parameters()}}
    x.grad = None
    m.zero_grad()
    (vmamba_ss2d(m, x) * gout).sum().backward()
    for k, p in m.named_parameters():
        assert rel(got[k], p.grad) <= 1e-9, k
    assert rel(got["x"], x.grad) <= 1e-9


def vmamba_ss2d_keys(c: int, d: int, n: int, r: int, forward_type: str, conv_bias: bool) -> dict:
    """The state-dict keys (in order) and shapes of VMamba's SS2D, as VMamba documents them."""
    v0 = forward_type in ("v0", "v0seq")
    noz = forward_type.endswith("_noz")
    scan = {"x_proj_weight": (4, r + 2 * n, d), "A_logs": (4 * d, n), "Ds": (4 * d,),
            "dt_projs_weight": (4, d, r), "dt_projs_bias": (4, d)}
    norm = {"out_norm.weight": (d,), "out_norm.bias": (d,)}
    conv = {"conv2d.weight": (d, 1, 3, 3), **({"conv2d.bias": (d,)} if conv_bias or v0 else {})}
    proj = {"in_proj.weight": (d if noz else 2 * d, c)}
    if v0:
        return {**scan, **proj, **conv, **norm, "out_proj.weight": (c, d)}
    return {**scan, **norm, **proj, **conv, "out_proj.weight": (c, d)}


@pytest.mark.parametrize("forward_type,channel_first,conv_bias", [
    ("v0", False, True), ("v05_noz", True, False), ("v3", False, True), ("v052d_noz", True, True)])
def test_ss2d_loads_a_vmamba_state_dict_strictly(forward_type, channel_first, conv_bias):
    c, n = 12, 1
    m = vm.SS2D(d_model=c, d_state=n, forward_type=forward_type, channel_first=channel_first,
                conv_bias=conv_bias, backend="reference")
    want = vmamba_ss2d_keys(c, 24, n, 1, forward_type, conv_bias)
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == list(want.items())
    sd = {k: torch.randn(s) for k, s in want.items()}
    m.load_state_dict(sd, strict=True)
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k])


def vmamba_vssm_keys(depths, dims, n, mlp_ratio, d_ratio=1.0) -> dict:
    """Keys and shapes of VMamba's VSSM with patchembed v2, downsample v3, ln2d norms, "_noz"."""
    keys = {"patch_embed.0.weight": (dims[0] // 2, 3, 3, 3), "patch_embed.0.bias": (dims[0] // 2,),
            "patch_embed.2.weight": (dims[0] // 2,), "patch_embed.2.bias": (dims[0] // 2,),
            "patch_embed.5.weight": (dims[0], dims[0] // 2, 3, 3), "patch_embed.5.bias": (dims[0],),
            "patch_embed.7.weight": (dims[0],), "patch_embed.7.bias": (dims[0],)}
    for i, (depth, c) in enumerate(zip(depths, dims)):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            keys.update({p + "norm.weight": (c,), p + "norm.bias": (c,)})
            d = int(d_ratio * c)
            ss2d = vmamba_ss2d_keys(c, d, n, -(-c // 16), "v05_noz", conv_bias=False)
            keys.update({p + "op." + k: s for k, s in ss2d.items()})
            hid = int(c * mlp_ratio)
            keys.update({p + "norm2.weight": (c,), p + "norm2.bias": (c,), p + "mlp.fc1.weight": (hid, c),
                         p + "mlp.fc1.bias": (hid,), p + "mlp.fc2.weight": (c, hid),
                         p + "mlp.fc2.bias": (c,)})
        if i < len(depths) - 1:
            p = f"layers.{i}.downsample."
            keys.update({p + "1.weight": (dims[i + 1], c, 3, 3), p + "1.bias": (dims[i + 1],),
                         p + "3.weight": (dims[i + 1],), p + "3.bias": (dims[i + 1],)})
    keys.update({"classifier.norm.weight": (dims[-1],), "classifier.norm.bias": (dims[-1],),
                 "classifier.head.weight": (10, dims[-1]), "classifier.head.bias": (10,)})
    return keys


def small_v2_vssm(**kw) -> vm.VSSM:
    args = dict(depths=[1, 2], dims=16, ssm_d_state=1, ssm_ratio=1.0, ssm_conv_bias=False,
                forward_type="v05_noz", mlp_ratio=2.0, norm_layer="ln2d", downsample_version="v3",
                patchembed_version="v2", num_classes=10)
    return vm.VSSM(**{**args, **kw})


def test_vssm_loads_a_vmamba_state_dict_strictly():
    m = small_v2_vssm(backend="reference")
    want = vmamba_vssm_keys([1, 2], [16, 32], 1, 2.0)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == want
    m.load_state_dict({k: torch.randn(s) for k, s in want.items()}, strict=True)


def test_vssm_old_checkpoint_names_and_conv_shaped_linears_load():
    m = small_v2_vssm(backend="reference")
    sd = m.state_dict()
    old = {}
    for k, v in sd.items():
        k2 = k.replace(".norm.", ".ln_1.") if ".blocks." in k else k
        k2 = k2.replace(".op.", ".self_attention.")
        k2 = k2.replace("classifier.head", "head").replace("classifier.norm", "norm")
        if k.endswith("mlp.fc1.weight"):
            v = v[:, :, None, None]  # saved from a 1 x 1 conv
        old[k2] = v.clone()
    assert "head.weight" in old and "layers.1.blocks.1.self_attention.Ds" in old
    fresh = small_v2_vssm(backend="reference")
    fresh.load_state_dict(old, strict=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]), k


@pytest.mark.parametrize("kw", [
    dict(),
    dict(depths=[2, 1], ssm_d_state=16, ssm_ratio=2.0, forward_type="v0", mlp_ratio=0.0, norm_layer="ln",
         downsample_version="v1", patchembed_version="v1", ssm_conv_bias=True),
    dict(depths=[1, 1], ssm_d_state=4, forward_type="v3", norm_layer="bn", gmlp=True, posembed=True,
         imgsize=24, downsample_version="v2")])
def test_vssm_cpu_backend_matches_reference(kw):
    need("cpu")
    ref = small_v2_vssm(backend="reference", **kw).eval()
    perturb(ref, 0.02)
    ours = small_v2_vssm(backend="cpu", **kw).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 24, 24)
    want = ref.double()(x.double())
    out = ours(x)
    assert out.shape == (2, 10)
    assert rel(out, want) <= 1e-4


def test_vssm_training_step_and_checkpointing():
    torch.manual_seed(0)
    m = small_v2_vssm(backend="reference", drop_path_rate=0.0)
    mc = small_v2_vssm(backend="reference", drop_path_rate=0.0, use_checkpoint=True)
    mc.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 16, 16)
    m(x).square().sum().backward()
    mc(x).square().sum().backward()
    for (k, p), q in zip(m.named_parameters(), mc.parameters()):
        assert p.grad is not None and torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), k


@pytest.mark.parametrize("bad", ["m0", "m0_noz", "xv1a", "v052dc", "v052d3", "v2_oact_noz", "v0_noz", "v06"])
def test_unsupported_forward_types_raise(bad):
    with pytest.raises(ValueError, match="supported: v0, v0seq"):
        vm.SS2D(8, forward_type=bad)


def test_argument_errors():
    with pytest.raises(ValueError, match="channel last only"):
        vm.SS2D(8, forward_type="v0", channel_first=True)
    with pytest.raises(ValueError, match="initialize"):
        vm.SS2D(8, initialize="v9")
    with pytest.raises(ValueError, match="norm_layer"):
        vm.VSSM(depths=[1], dims=8, norm_layer="gn")
    with pytest.raises(ValueError, match="downsample_version"):
        vm.VSSM(depths=[1, 1], dims=8, downsample_version="v4")
    with pytest.raises(ValueError, match="not supported"):
        vm.VSSM(depths=[1], dims=8, forward_type="m0")


def test_v0_ignores_the_arguments_vmamba_v0_ignores():
    m = vm.SS2D(8, forward_type="v0", d_conv=5, conv_bias=False, bias=True, act_layer=nn.GELU)
    assert m.conv2d.kernel_size == (3, 3) and m.conv2d.bias is not None
    assert m.in_proj.bias is None and isinstance(m.act, nn.SiLU)


def test_released_builders_have_vmamba_parameter_counts():
    # counted from VMamba's own vmamba_tiny_s1l8() (its code run once on the CPU, not a dependency)
    m = vm.vmamba_tiny_s1l8(backend="reference")
    assert sum(p.numel() for p in m.parameters()) == 30_249_064
    assert m.channel_first and isinstance(m.classifier.norm, vm.LayerNorm2d)
    blk = m.layers[2].blocks[0].op
    assert blk.d_state == 1 and blk.forward_type.no_z and blk.conv2d.bias is None
    with pytest.raises(ValueError, match="no weights are downloaded"):
        vm.vmamba_tiny_s2l5(pretrained=True)
    assert set(vm.MODELS) >= {"vmamba_tiny_s2l5", "vmamba_small_s2l15", "vmamba_base_s2l15",
                              "vmamba_tiny_s1l8", "vanilla_vmamba_tiny"}


@pytest.mark.parametrize("backend,n", [("cpu", 1), ("cpu", 2), ("cpu", 3), ("triton", 1), ("triton", 3)])
def test_fused_scan_small_state_sizes(backend, n):
    """VMamba's released models use N = 1: the fused kernels' forward and gradients at small N,
    fp32 against the float64 reference (the CPU kernel specialises N = 16 only; Triton runs under
    its interpreter on a machine without a GPU, so its shape is tiny)."""
    from tests.parity import run_case

    small = backend == "triton" and not torch.cuda.is_available()
    run_case(backend, b=1 if small else 2, d=8 if small else 12, h=3 if small else 5, w=4 if small else 6,
             n=n, r=1 if small else 2, k=4, method="sweep", dtype=torch.float32)


def test_benchmark_torch_path_baseline_matches_our_scan():
    """benchmarks/vmamba_bench.py's plain-torch baseline computes the same scan as ours."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from vmamba_bench import torch_path_scan

    m = vm.SS2D(d_model=8, d_state=2, forward_type="v05", channel_first=True, backend="reference")
    perturb(m)
    x = torch.randn(2, 16, 4, 5)  # (b, d_inner, h, w)
    assert rel(torch_path_scan(m, x), m.scan(x)) <= 1e-5
