"""VMamba's SS2D, VSSBlock and VSSM on the fused scan, loading VMamba's checkpoints unchanged.

VMamba (Liu et al., github MzeroMiko/VMamba, MIT licence) scans a feature map along four paths,
row-major, column-major and both reversed, which is :func:`mambaad_kernels.ops.hss_scan` with
``method="sweep", directions=4``. This module is our own implementation from VMamba's documented
behaviour: the constructor arguments, module names, parameter shapes and forward semantics are
VMamba's, so ``model.load_state_dict(vmamba_checkpoint["model"], strict=True)`` works, and the scan
runs on any of our backends (``backend=``, as :class:`mambaad_kernels.modules.SS2D`).

Forward types (VMamba's ``forward_type``): every one whose scan is a set of sweeps: ``v0``,
``v0seq``, ``v01``-``v05``, ``v2``, ``v3`` (sweep K = 4), ``v051d`` (4 x sweep K = 1, one per
parameter set, summed), ``v052d`` (2 x sweep K = 2: parameter sets 0, 2 and 1, 3), with the
suffixes ``_noz``, ``_nozact``, ``_oact``, ``_no32`` and the out-norm suffixes ``_onnone``,
``_ondwconv3``, ``_oncnorm``, ``_onsoftmax``, ``_onsigmoid``. Others (Mamba-2 ``m0``, ``xv*``,
``v052dc``) raise ValueError. The variants that differ only in which CUDA kernel VMamba calls or
whether it casts to fp32 first compute the same function here: the scan state is always fp32.

Layouts: channel last ``(B, H, W, C)`` unless ``channel_first`` (``(B, C, H, W)``); VSSM takes
images ``(B, 3, H, W)``.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, trunc_normal_

from .ops import hss_scan
from .vmamba_layers import (ACT_LAYERS, NORM_LAYERS, LayerNorm2d, Linear2d, Mlp, PatchMerging2D,
                            Permute, gMlp, lookup, out_norm_layer, parse_forward_type)

K_GROUP = 4  # VMamba's four parameter sets per SS2D


def _dt_init(k: int, d_inner: int, dt_rank: int, dt_scale: float, dt_init: str, dt_min: float,
             dt_max: float, dt_init_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's dt projection init: weight ``(k, d_inner, R)``, bias ``(k, d_inner)`` with
    softplus(bias) log-uniform in [dt_min, dt_max] (floored at dt_init_floor)."""
    std = dt_rank ** -0.5 * dt_scale
    if dt_init == "constant":
        weight = torch.full((k, d_inner, dt_rank), std)
    elif dt_init == "random":
        weight = torch.empty(k, d_inner, dt_rank).uniform_(-std, std)
    else:
        raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
    lo, hi = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand(k, d_inner) * (hi - lo) + lo).clamp(min=dt_init_floor)
    return weight, dt + torch.log(-torch.expm1(-dt))  # inverse softplus


def _act(layer: type[nn.Module] | str) -> nn.Module:
    return lookup(ACT_LAYERS, layer, "activation")() if isinstance(layer, str) else layer()


class SS2D(nn.Module):
    """VMamba's 2-D selective scan block on the fused scan.

    in_proj (to x and, unless ``_noz``, the gate z) -> depthwise conv (if ``d_conv > 1``) -> act ->
    the sweep scans -> out norm -> (GELU if ``_oact``) -> times act(z) -> out_proj -> dropout.

    Args: VMamba's (``d_model`` ... ``channel_first``); ``initialize`` in "v0" (Mamba's), "v1",
    "v2" (VMamba's simple inits); ``forward_type`` as the module docstring. ``v0`` / ``v0seq`` use
    VMamba's first-release layer, which fixes SiLU, a 3 x 3 conv with bias, no projection bias
    and the "v0" init whatever those arguments say, and is channel last only.
    backend: scan backend for :func:`hss_scan` (None: the best available).

    Parameters (VMamba's names): x_proj_weight ``(4, R + 2N, D)``, dt_projs_weight ``(4, D, R)``,
    dt_projs_bias ``(4, D)``, A_logs ``(4 D, N)``, Ds ``(4 D,)``; D = ``int(ssm_ratio * d_model)``.

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``, or ``(B, C, H, W)`` when ``channel_first``.
    """

    def __init__(self, d_model: int = 96, d_state: int = 16, ssm_ratio: float = 2.0,
                 dt_rank: int | str = "auto", act_layer: type[nn.Module] | str = nn.SiLU,
                 d_conv: int = 3, conv_bias: bool = True, dropout: float = 0.0, bias: bool = False,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random",
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, initialize: str = "v0",
                 forward_type: str = "v2", channel_first: bool = False, backend: str | None = None):
        super().__init__()
        ft = parse_forward_type(forward_type)
        if ft.v0:  # the first release ignored these arguments
            if channel_first:
                raise ValueError(f"forward_type {forward_type!r} is channel last only")
            act_layer, d_conv, conv_bias, bias, initialize = nn.SiLU, 3, True, False, "v0"
            dt_min, dt_max, dt_init, dt_scale, dt_init_floor = 0.001, 0.1, "random", 1.0, 1e-4
        if initialize not in ("v0", "v1", "v2"):
            raise ValueError(f"initialize must be 'v0', 'v1' or 'v2', got {initialize!r}")
        self.forward_type, self.backend, self.channel_first = ft, backend, channel_first
        self.d_model, self.d_state = int(d_model), int(d_state)
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = int(math.ceil(self.d_model / 16) if dt_rank == "auto" else dt_rank)
        if min(self.d_inner, self.d_state, self.dt_rank) < 1:
            raise ValueError(f"d_inner = {self.d_inner}, d_state = {self.d_state} and dt_rank = "
                             f"{self.dt_rank} must be positive")
        d, n, r, k = self.d_inner, self.d_state, self.dt_rank, K_GROUP
        linear = Linear2d if channel_first else nn.Linear

        # registration order = VMamba's, so state_dict() lists the keys in VMamba's order
        bound = d ** -0.5  # nn.Linear's default init of VMamba's stacked x_proj weights
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d).uniform_(-bound, bound))
        if initialize == "v0":
            dt_w, dt_b = _dt_init(k, d, r, dt_scale, dt_init, dt_min, dt_max, dt_init_floor)
            a = torch.arange(1, n + 1, dtype=torch.float32).repeat(k * d, 1)  # (k d, n): S4D real
            self.A_logs = nn.Parameter(torch.log(a))
            self.Ds = nn.Parameter(torch.ones(k * d))
        else:
            self.Ds = nn.Parameter(torch.ones(k * d))
            if initialize == "v1":
                self.A_logs = nn.Parameter(torch.randn(k * d, n))
                dt_w, dt_b = 0.1 * torch.randn(k, d, r), 0.1 * torch.randn(k, d)
            else:
                self.A_logs = nn.Parameter(torch.zeros(k * d, n))
                dt_w, dt_b = 0.1 * torch.rand(k, d, r), 0.1 * torch.rand(k, d)
        self.dt_projs_weight = nn.Parameter(dt_w)  # (k, d, r)
        self.dt_projs_bias = nn.Parameter(dt_b)  # (k, d)
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True

        if not ft.v0:
            self.out_norm = out_norm_layer(ft.out_norm, d, channel_first)
        self.in_proj = linear(self.d_model, d if ft.no_z else 2 * d, bias=bias)
        self.act = _act(act_layer)
        self.conv2d = (nn.Conv2d(d, d, d_conv, padding=(d_conv - 1) // 2, groups=d, bias=conv_bias)
                       if d_conv > 1 else None)
        if ft.v0:
            self.out_norm = out_norm_layer("ln", d, False)
        self.out_act = nn.GELU() if ft.out_act else nn.Identity()
        self.out_proj = linear(d, self.d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """The sweep scans of the forward type, summed: ``(B, D, H, W) -> (B, D, H, W)``."""
        d, n = self.d_inner, self.d_state
        params = (self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias,
                  self.A_logs.view(K_GROUP, d, n), self.Ds.view(K_GROUP, d))
        mode = self.forward_type.scan
        if mode == "cross2d":  # VMamba's CrossScan order is our sweep K = 4
            groups, k = [slice(None)], 4
        elif mode == "unidi":  # four row-major scans, one per parameter set
            groups, k = [slice(i, i + 1) for i in range(4)], 1
        else:  # "bidi": row-major forward and reversed, parameter sets (0, 2) then (1, 3)
            groups, k = [slice(0, 4, 2), slice(1, 4, 2)], 2
        y = None
        for g in groups:
            xw, dtw, dtb, a, ds = (p[g] for p in params)
            out = hss_scan(x, xw, dtw, dtb, a.reshape(-1, n), ds.reshape(-1), "sweep", k,
                           backend=self.backend)
            y = out if y is None else y + out
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` (or ``(B, C, H, W)`` when channel first) to the same shape."""
        cf, ft = self.channel_first, self.forward_type
        x = self.in_proj(x)
        z = None
        if not ft.no_z:
            x, z = x.chunk(2, dim=1 if cf else -1)  # (b, h, w, d) x2 or (b, d, h, w) x2
            if not ft.no_z_act:
                z = self.act(z)
        if not cf:
            x = x.permute(0, 3, 1, 2).contiguous()  # (b, d, h, w)
        if self.conv2d is not None:
            x = self.conv2d(x)
        y = self.scan(self.act(x))  # (b, d, h, w)
        if not cf:
            y = y.permute(0, 2, 3, 1)  # (b, h, w, d)
        y = self.out_act(self.out_norm(y))
        if z is not None:
            y = y * z
        return self.dropout(self.out_proj(y))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # VMamba's one-file vmamba.py stores the stacked projections as grouped Linear weights
        for ours, theirs in (("x_proj_weight", "x_proj.weight"), ("dt_projs_weight", "dt_projs.weight")):
            if prefix + theirs in state_dict and prefix + ours not in state_dict:
                param = getattr(self, ours)
                state_dict[prefix + ours] = state_dict.pop(prefix + theirs).reshape(param.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"dt_rank={self.dt_rank}, forward_type={self.forward_type.name!r}, "
                f"channel_first={self.channel_first}")


class VSSBlock(nn.Module):
    """VMamba's block: ``x + DropPath(SS2D(norm(x)))`` then ``x + DropPath(MLP(norm2(x)))``.

    ``post_norm`` moves each norm after its branch; ``ssm_ratio <= 0`` drops the SS2D branch and
    ``mlp_ratio <= 0`` the MLP branch. Args are VMamba's; ``backend`` goes to :class:`SS2D`.

    Shapes: ``(B, H, W, C)``, or ``(B, C, H, W)`` when ``channel_first``.
    """

    def __init__(self, hidden_dim: int = 0, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, channel_first: bool = False,
                 ssm_d_state: int = 16, ssm_ratio: float = 2.0, ssm_dt_rank: int | str = "auto",
                 ssm_act_layer: type[nn.Module] | str = nn.SiLU, ssm_conv: int = 3,
                 ssm_conv_bias: bool = True, ssm_drop_rate: float = 0.0, ssm_init: str = "v0",
                 forward_type: str = "v2", mlp_ratio: float = 4.0,
                 mlp_act_layer: type[nn.Module] | str = nn.GELU, mlp_drop_rate: float = 0.0,
                 gmlp: bool = False, use_checkpoint: bool = False, post_norm: bool = False,
                 backend: str | None = None):
        super().__init__()
        self.ssm_branch, self.mlp_branch = ssm_ratio > 0, mlp_ratio > 0
        self.use_checkpoint, self.post_norm = use_checkpoint, post_norm
        if self.ssm_branch:
            self.norm = norm_layer(hidden_dim)
            self.op = SS2D(d_model=hidden_dim, d_state=ssm_d_state, ssm_ratio=ssm_ratio,
                           dt_rank=ssm_dt_rank, act_layer=ssm_act_layer, d_conv=ssm_conv,
                           conv_bias=ssm_conv_bias, dropout=ssm_drop_rate, initialize=ssm_init,
                           forward_type=forward_type, channel_first=channel_first, backend=backend)
        self.drop_path = DropPath(drop_path)
        if self.mlp_branch:
            mlp = gMlp if gmlp else Mlp
            act = lookup(ACT_LAYERS, mlp_act_layer, "activation") if isinstance(mlp_act_layer, str) \
                else mlp_act_layer
            self.norm2 = norm_layer(hidden_dim)
            self.mlp = mlp(hidden_dim, int(hidden_dim * mlp_ratio), act_layer=act, drop=mlp_drop_rate,
                           channels_first=channel_first)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ssm_branch:
            if self.post_norm:
                x = x + self.drop_path(self.norm(self.op(x)))
            else:
                x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp_branch:
            if self.post_norm:
                x = x + self.drop_path(self.norm2(self.mlp(x)))
            else:
                x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


def _patch_embed(in_chans: int, dim: int, patch_size: int, patch_norm: bool, norm_layer,
                 channel_first: bool, version: str) -> nn.Sequential:
    """VMamba's stem: "v1" one patch_size-strided conv; "v2" two stride patch_size/2 3 x 3 convs."""
    to_last = nn.Identity() if channel_first else Permute(0, 2, 3, 1)
    norm = norm_layer(dim) if patch_norm else nn.Identity()
    if version == "v1":
        return nn.Sequential(nn.Conv2d(in_chans, dim, patch_size, stride=patch_size), to_last, norm)
    if version == "v2":
        stride = patch_size // 2
        half = dim // 2
        keep = channel_first or not patch_norm
        return nn.Sequential(
            nn.Conv2d(in_chans, half, stride + 1, stride=stride, padding=1),
            nn.Identity() if keep else Permute(0, 2, 3, 1),
            norm_layer(half) if patch_norm else nn.Identity(),
            nn.Identity() if keep else Permute(0, 3, 1, 2),
            nn.GELU(),
            nn.Conv2d(half, dim, stride + 1, stride=stride, padding=1),
            to_last, norm)
    raise ValueError(f"patchembed_version must be 'v1' or 'v2', got {version!r}")


def _downsample(dim: int, out_dim: int, norm_layer, channel_first: bool, version: str) -> nn.Module | None:
    """VMamba's downsample between stages: "v1" patch merging, "v2" 2 x 2 / 2 conv,
    "v3" 3 x 3 / 2 conv, "none"."""
    if version == "v1":
        return PatchMerging2D(dim, out_dim, norm_layer=norm_layer, channel_first=channel_first)
    if version in ("v2", "v3"):
        kernel, pad = (2, 0) if version == "v2" else (3, 1)
        return nn.Sequential(
            nn.Identity() if channel_first else Permute(0, 3, 1, 2),
            nn.Conv2d(dim, out_dim, kernel, stride=2, padding=pad),
            nn.Identity() if channel_first else Permute(0, 2, 3, 1),
            norm_layer(out_dim))
    if version == "none":
        return None
    raise ValueError(f"downsample_version must be 'v1', 'v2', 'v3' or 'none', got {version!r}")


class VSSM(nn.Module):
    """VMamba's classification backbone: stem, stages of VSSBlocks with downsamples, classifier.

    Args are VMamba's: ``depths`` per stage, ``dims`` per stage (an int d means d * 2^i),
    ``norm_layer`` in "ln" (channel last), "ln2d", "bn" (channel first), ``ssm_*`` / ``mlp_*`` /
    ``forward_type`` as :class:`VSSBlock`, ``drop_path_rate`` spread linearly over the blocks,
    ``posembed`` a learned position embedding for ``imgsize`` inputs. ``backend`` goes to every
    :class:`SS2D`.

    Shapes: images ``(B, in_chans, H, W)`` -> logits ``(B, num_classes)``.
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, num_classes: int = 1000,
                 depths: Sequence[int] = (2, 2, 9, 2), dims: int | Sequence[int] = (96, 192, 384, 768),
                 ssm_d_state: int = 16, ssm_ratio: float = 2.0, ssm_dt_rank: int | str = "auto",
                 ssm_act_layer: str = "silu", ssm_conv: int = 3, ssm_conv_bias: bool = True,
                 ssm_drop_rate: float = 0.0, ssm_init: str = "v0", forward_type: str = "v2",
                 mlp_ratio: float = 4.0, mlp_act_layer: str = "gelu", mlp_drop_rate: float = 0.0,
                 gmlp: bool = False, drop_path_rate: float = 0.1, patch_norm: bool = True,
                 norm_layer: str = "LN", downsample_version: str = "v2", patchembed_version: str = "v1",
                 use_checkpoint: bool = False, posembed: bool = False, imgsize: int = 224,
                 backend: str | None = None):
        super().__init__()
        norm = lookup(NORM_LAYERS, norm_layer, "norm_layer")
        self.channel_first = norm_layer.lower() in ("bn", "ln2d")
        self.num_classes, self.num_layers = num_classes, len(depths)
        if isinstance(dims, int):
            dims = [dims * 2 ** i for i in range(self.num_layers)]
        if len(dims) != len(depths):
            raise ValueError(f"dims {list(dims)} and depths {list(depths)} differ in length")
        self.dims, self.num_features = list(dims), dims[-1]
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        ssm_act = lookup(ACT_LAYERS, ssm_act_layer, "ssm_act_layer")
        mlp_act = lookup(ACT_LAYERS, mlp_act_layer, "mlp_act_layer")
        parse_forward_type(forward_type)  # fail before building anything

        if posembed:
            grid = imgsize // patch_size
            self.pos_embed = nn.Parameter(trunc_normal_(torch.zeros(1, dims[0], grid, grid), std=0.02))
        else:
            self.pos_embed = None
        self.patch_embed = _patch_embed(in_chans, dims[0], patch_size, patch_norm, norm,
                                        self.channel_first, patchembed_version)
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            down = (_downsample(dims[i], dims[i + 1], norm, self.channel_first, downsample_version)
                    if i < self.num_layers - 1 else nn.Identity())
            start = sum(depths[:i])
            blocks = [VSSBlock(hidden_dim=dims[i], drop_path=dpr[start + j], norm_layer=norm,
                               channel_first=self.channel_first, ssm_d_state=ssm_d_state,
                               ssm_ratio=ssm_ratio, ssm_dt_rank=ssm_dt_rank, ssm_act_layer=ssm_act,
                               ssm_conv=ssm_conv, ssm_conv_bias=ssm_conv_bias, ssm_drop_rate=ssm_drop_rate,
                               ssm_init=ssm_init, forward_type=forward_type, mlp_ratio=mlp_ratio,
                               mlp_act_layer=mlp_act, mlp_drop_rate=mlp_drop_rate, gmlp=gmlp,
                               use_checkpoint=use_checkpoint, backend=backend)
                      for j in range(depth)]
            self.layers.append(nn.Sequential(OrderedDict(blocks=nn.Sequential(*blocks), downsample=down)))
        self.classifier = nn.Sequential(OrderedDict(
            norm=norm(self.num_features),
            permute=nn.Identity() if self.channel_first else Permute(0, 3, 1, 2),
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            head=nn.Linear(self.num_features, num_classes)))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, in_chans, H, W)`` -> last stage ``(B, H', W', C)`` or ``(B, C, H', W')``."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + (self.pos_embed if self.channel_first else self.pos_embed.permute(0, 2, 3, 1))
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, in_chans, H, W)`` -> logits ``(B, num_classes)``."""
        return self.classifier(self.forward_features(x))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the names of VMamba's older checkpoints, renamed as VMamba does on load
        renames = [(r"patch_embed\.proj", "patch_embed.0"), (r"patch_embed\.norm", "patch_embed.2"),
                   (r"(layers\.\d+\.blocks\.\d+)\.ln_1", r"\1.norm"),
                   (r"(layers\.\d+\.blocks\.\d+)\.self_attention", r"\1.op"),
                   (r"norm", "classifier.norm"), (r"head", "classifier.head")]
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            for pattern, repl in renames:
                new = re.sub("^" + pattern + r"(?=\.|$)", repl, rest)
                if new != rest:
                    state_dict[prefix + new] = state_dict.pop(key)
                    break
        key = prefix + "pos_embed"
        if key in state_dict and self.pos_embed is not None:
            src = state_dict[key]
            state_dict[key] = F.interpolate(src.float(), size=self.pos_embed.shape[2:4], mode="bicubic",
                                            align_corners=False).to(src.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# VMamba's released models, under VMamba's names (random weights; load a checkpoint's "model").
# ``pretrained=False`` is accepted as in VMamba's one-file vmamba.py; other keywords go to VSSM.
# ---------------------------------------------------------------------------------------------

_VANILLA = dict(patch_size=4, in_chans=3, num_classes=1000, ssm_d_state=16, ssm_ratio=2.0,
                ssm_dt_rank="auto", ssm_act_layer="silu", ssm_conv=3, ssm_conv_bias=True,
                ssm_drop_rate=0.0, ssm_init="v0", forward_type="v0", mlp_ratio=0.0,
                mlp_act_layer="gelu", mlp_drop_rate=0.0, gmlp=False, patch_norm=True, norm_layer="ln",
                downsample_version="v1", patchembed_version="v1", use_checkpoint=False, posembed=False,
                imgsize=224)
_V2 = dict(_VANILLA, ssm_d_state=1, ssm_conv_bias=False, forward_type="v05_noz", mlp_ratio=4.0,
           downsample_version="v3", patchembed_version="v2")


def _build(base: dict, overrides: dict, **shape) -> VSSM:
    if overrides.pop("pretrained", False):
        raise ValueError("pretrained=True: no weights are downloaded here; build the model and load "
                         "VMamba's checkpoint with model.load_state_dict(torch.load(path)['model'])")
    return VSSM(**{**base, **shape, **overrides})


def vanilla_vmamba_tiny(**overrides) -> VSSM:
    """VMamba v0 tiny (forward_type "v0", d_state 16, no MLP); ``overrides`` go to :class:`VSSM`."""
    return _build(_VANILLA, overrides, depths=[2, 2, 9, 2], dims=96, drop_path_rate=0.2)


def vanilla_vmamba_small(**overrides) -> VSSM:
    """VMamba v0 small."""
    return _build(_VANILLA, overrides, depths=[2, 2, 27, 2], dims=96, drop_path_rate=0.3)


def vanilla_vmamba_base(**overrides) -> VSSM:
    """VMamba v0 base."""
    return _build(_VANILLA, overrides, depths=[2, 2, 27, 2], dims=128, drop_path_rate=0.6)


def _v2_model(channel_first: bool, overrides: dict, **shape) -> VSSM:
    return _build(_V2, overrides, norm_layer="ln2d" if channel_first else "ln", **shape)


def vmamba_tiny_s2l5(channel_first: bool = True, **overrides) -> VSSM:
    """VMamba v2 tiny, ssm_ratio 2 ("v05_noz", d_state 1, LayerNorm2d when channel first)."""
    return _v2_model(channel_first, overrides, depths=[2, 2, 5, 2], dims=96, drop_path_rate=0.2)


def vmamba_small_s2l15(channel_first: bool = True, **overrides) -> VSSM:
    """VMamba v2 small, ssm_ratio 2."""
    return _v2_model(channel_first, overrides, depths=[2, 2, 15, 2], dims=96, drop_path_rate=0.3)


def vmamba_base_s2l15(channel_first: bool = True, **overrides) -> VSSM:
    """VMamba v2 base, ssm_ratio 2."""
    return _v2_model(channel_first, overrides, depths=[2, 2, 15, 2], dims=128, drop_path_rate=0.6)


def vmamba_tiny_s1l8(channel_first: bool = True, **overrides) -> VSSM:
    """VMamba v2 tiny, ssm_ratio 1."""
    return _v2_model(channel_first, dict(dict(ssm_ratio=1.0), **overrides), depths=[2, 2, 8, 2], dims=96,
                     drop_path_rate=0.2)


def vmamba_small_s1l20(channel_first: bool = True, **overrides) -> VSSM:
    """VMamba v2 small, ssm_ratio 1."""
    return _v2_model(channel_first, dict(dict(ssm_ratio=1.0), **overrides), depths=[2, 2, 20, 2],
                     dims=96, drop_path_rate=0.3)


def vmamba_base_s1l20(channel_first: bool = True, **overrides) -> VSSM:
    """VMamba v2 base, ssm_ratio 1."""
    return _v2_model(channel_first, dict(dict(ssm_ratio=1.0), **overrides), depths=[2, 2, 20, 2],
                     dims=128, drop_path_rate=0.5)


MODELS = {f.__name__: f for f in (vanilla_vmamba_tiny, vanilla_vmamba_small, vanilla_vmamba_base,
                                  vmamba_tiny_s2l5, vmamba_small_s2l15, vmamba_base_s2l15,
                                  vmamba_tiny_s1l8, vmamba_small_s1l20, vmamba_base_s1l20)}

__all__ = ["SS2D", "VSSBlock", "VSSM", "LayerNorm2d", "MODELS", *MODELS]
