"""Small layers and the forward-type parser behind :mod:`mambaad_kernels.vmamba`.

Written from the documented behaviour of VMamba (github MzeroMiko/VMamba, MIT licence); the module
names and parameter shapes are VMamba's, so its state dicts load unchanged. Layouts: "channel last"
is ``(B, H, W, C)``, "channel first" is ``(B, C, H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# forward_type: VMamba names variants of SS2D by a base name and suffixes; parsed once, here.
# ---------------------------------------------------------------------------------------------

#: base name -> which set of sweep scans it runs (VMamba's cross2d / unidi / bidi scan modes)
V2_BASES = {"v01": "cross2d", "v02": "cross2d", "v03": "cross2d", "v04": "cross2d", "v05": "cross2d",
            "v2": "cross2d", "v3": "cross2d", "v051d": "unidi", "v052d": "bidi"}
V0_TYPES = ("v0", "v0seq")
#: suffixes VMamba strips from a v2-family name, in the order it strips them
FLAG_POSTFIXES = ("_no32", "_oact", "_noz", "_nozact")
OUT_NORM_POSTFIXES = ("_onnone", "_ondwconv3", "_oncnorm", "_onsoftmax", "_onsigmoid")


@dataclass(frozen=True)
class ForwardType:
    """What a VMamba ``forward_type`` string asks of SS2D.

    Attributes:
        name: the string as given.
        v0: the first-release SS2D (fixed SiLU, 3 x 3 conv with bias, no in/out bias, channel last).
        scan: ``"cross2d"`` (sweep K = 4), ``"unidi"`` (4 x sweep K = 1) or ``"bidi"`` (2 x sweep
            K = 2).
        no_z: no gate branch (in_proj gives d_inner channels only).
        no_z_act: the gate is used without the activation.
        out_act: GELU on the scan output before the gate.
        out_norm: ``"ln", "none", "dwconv3", "cnorm", "softmax", "sigmoid"``.
    """

    name: str
    v0: bool = False
    scan: str = "cross2d"
    no_z: bool = False
    no_z_act: bool = False
    out_act: bool = False
    out_norm: str = "ln"


def supported_forward_types() -> str:
    """A one-line description of the forward types :func:`parse_forward_type` accepts."""
    return (f"{', '.join(V0_TYPES)}, or one of {', '.join(V2_BASES)} followed by any of the suffixes "
            f"{', '.join(FLAG_POSTFIXES[::-1] + OUT_NORM_POSTFIXES[::-1])} (in VMamba's order, e.g. "
            "'v05_noz', 'v2_onnone_noz'); not supported: Mamba-2 'm0*', 'xv*', 'v052dc', 'v052d3'")


def _strip(tag: str, value: str) -> tuple[bool, str]:
    if value.endswith(tag):
        return True, value[: -len(tag)]
    return False, value


def parse_forward_type(forward_type: str) -> ForwardType:
    """Parse a VMamba ``forward_type`` as VMamba's SS2D does; unsupported ones raise ValueError.

    VMamba strips ``_no32, _oact, _noz, _nozact`` and then the out-norm suffixes, in that order, and
    looks the rest up; a string it would not run (its lookup gives nothing) raises here.
    """
    if not isinstance(forward_type, str):
        raise TypeError(f"forward_type must be a string, got {type(forward_type).__name__}")
    if forward_type in V0_TYPES:
        return ForwardType(forward_type, v0=True)
    rest = forward_type
    flags = {}
    for tag in FLAG_POSTFIXES:
        flags[tag], rest = _strip(tag, rest)
    norms = {}
    for tag in OUT_NORM_POSTFIXES:
        norms[tag], rest = _strip(tag, rest)
    if rest not in V2_BASES:
        raise ValueError(f"forward_type {forward_type!r} is not supported by mambaad_kernels.vmamba "
                         f"(only scans that are sets of sweeps run on the fused scan); supported: "
                         f"{supported_forward_types()}")
    # VMamba's order of precedence when several out-norm suffixes are given
    out_norm = "ln"
    for tag, kind in (("_onnone", "none"), ("_oncnorm", "cnorm"), ("_ondwconv3", "dwconv3"),
                      ("_onsoftmax", "softmax"), ("_onsigmoid", "sigmoid")):
        if norms[tag]:
            out_norm = kind
            break
    return ForwardType(forward_type, scan=V2_BASES[rest], no_z=flags["_noz"],
                       no_z_act=flags["_nozact"], out_act=flags["_oact"], out_norm=out_norm)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


class Linear2d(nn.Linear):
    """A Linear on channel-first maps: ``(B, C_in, H, W) -> (B, C_out, H, W)``.

    Its weight is ``(C_out, C_in)`` like nn.Linear's; a ``(C_out, C_in, 1, 1)`` conv weight in a
    state dict loads too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        if key in state_dict and state_dict[key].numel() == self.weight.numel():
            state_dict[key] = state_dict[key].reshape(self.weight.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channel-first map ``(B, C, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class Permute(nn.Module):
    """``x.permute(*dims)`` as a module (holds no parameters)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class SoftmaxSpatial(nn.Module):
    """Softmax over the H * W positions of each channel; ``(B, C, H, W)`` or ``(B, H, W, C)``."""

    def __init__(self, channel_first: bool):
        super().__init__()
        self.channel_first = channel_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_first:
            return x.flatten(2).softmax(-1).view_as(x)
        return x.flatten(1, 2).softmax(1).view_as(x)


class Mlp(nn.Module):
    """fc1 -> act -> dropout -> fc2 -> dropout, on the channels (first or last)."""

    def __init__(self, in_features: int, hidden_features: int | None = None,
                 out_features: int | None = None, act_layer: type[nn.Module] = nn.GELU,
                 drop: float = 0.0, channels_first: bool = False):
        super().__init__()
        linear = Linear2d if channels_first else nn.Linear
        hidden_features = hidden_features or in_features
        self.fc1 = linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class gMlp(nn.Module):  # noqa: N801 - VMamba's name
    """Gated MLP: fc1 to 2 x hidden, split into x and z, ``fc2(x * act(z))``, dropout."""

    def __init__(self, in_features: int, hidden_features: int | None = None,
                 out_features: int | None = None, act_layer: type[nn.Module] = nn.GELU,
                 drop: float = 0.0, channels_first: bool = False):
        super().__init__()
        linear = Linear2d if channels_first else nn.Linear
        hidden_features = hidden_features or in_features
        self.channel_dim = 1 if channels_first else -1
        self.fc1 = linear(in_features, 2 * hidden_features)
        self.act = act_layer()
        self.fc2 = linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.fc1(x).chunk(2, dim=self.channel_dim)
        return self.drop(self.fc2(x * self.act(z)))


class PatchMerging2D(nn.Module):
    """2 x 2 patch merging (VMamba's downsample "v1"): concatenate the four cells of each 2 x 2
    patch (zero-padding odd sides), norm over 4C, Linear to ``out_dim`` (2C when negative).

    Shapes: ``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out)``, or channel first.
    """

    def __init__(self, dim: int, out_dim: int = -1, norm_layer: type[nn.Module] = nn.LayerNorm,
                 channel_first: bool = False):
        super().__init__()
        self.channel_first = channel_first
        linear = Linear2d if channel_first else nn.Linear
        self.reduction = linear(4 * dim, 2 * dim if out_dim < 0 else out_dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_first:
            h, w = x.shape[-2:]
            x = F.pad(x, (0, w % 2, 0, h % 2))
            parts = [x[..., i::2, j::2] for j, i in ((0, 0), (0, 1), (1, 0), (1, 1))]
            x = torch.cat(parts, 1)  # (b, 4c, h/2, w/2)
        else:
            h, w = x.shape[-3:-1]
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            parts = [x[..., i::2, j::2, :] for j, i in ((0, 0), (0, 1), (1, 0), (1, 1))]
            x = torch.cat(parts, -1)  # (b, h/2, w/2, 4c)
        return self.reduction(self.norm(x))


def out_norm_layer(kind: str, d_inner: int, channel_first: bool) -> nn.Module:
    """The module SS2D applies to the merged scan output (``ForwardType.out_norm``)."""
    layer_norm = LayerNorm2d if channel_first else nn.LayerNorm

    def dwconv() -> nn.Conv2d:
        return nn.Conv2d(d_inner, d_inner, kernel_size=3, padding=1, groups=d_inner, bias=False)

    to_first = nn.Identity() if channel_first else Permute(0, 3, 1, 2)
    to_last = nn.Identity() if channel_first else Permute(0, 2, 3, 1)
    if kind == "ln":
        return layer_norm(d_inner)
    if kind == "none":
        return nn.Identity()
    if kind == "cnorm":
        return nn.Sequential(layer_norm(d_inner), to_first, dwconv(), to_last)
    if kind == "dwconv3":
        return nn.Sequential(to_first, dwconv(), to_last)
    if kind == "softmax":
        return SoftmaxSpatial(channel_first)
    if kind == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown out norm {kind!r}")


ACT_LAYERS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
NORM_LAYERS = {"ln": nn.LayerNorm, "ln2d": LayerNorm2d, "bn": nn.BatchNorm2d}


def lookup(table: dict, name: str, what: str):
    """``table[name.lower()]``, or a ValueError naming the choices."""
    if not isinstance(name, str) or name.lower() not in table:
        raise ValueError(f"unknown {what} {name!r}; expected one of {tuple(table)}")
    return table[name.lower()]
