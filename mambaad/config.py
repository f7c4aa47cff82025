"""The MambaAD configuration: one dataclass, derived fields computed in ``__post_init__``.

``dataclasses.asdict(config)`` round-trips: ``create_model(name, **asdict(config))`` rebuilds the
same model (derived fields are accepted back when they equal what the other fields derive).
Unknown keys raise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from mambaad_kernels.backends import BACKENDS
from mambaad_kernels.paths import check_directions, check_method

NUM_STAGES = 4  # the decoder's stages; stages 1..3 give the three reconstructed scales


def split_depth(depth: int) -> tuple[int, int]:
    """The authors' module split rule: ``(modules, blocks per module)`` for a stage of ``depth``.

    A depth divisible by 3 becomes depth / 3 LSS modules of 3 HSS blocks, else one divisible by 2
    becomes depth / 2 modules of 2 (the authors' rule). Any other depth (1, 5, 7 ...) becomes one
    module of ``depth`` blocks: our extension, so that tiny variants (depth 1) exist.
    """
    if depth % 3 == 0:
        return depth // 3, 3
    if depth % 2 == 0:
        return depth // 2, 2
    return 1, depth


def drop_path_schedule(depths: tuple[int, ...], rate: float) -> tuple[tuple[float, ...], ...]:
    """Per stage, the drop-path rate of each LSS module (shared by the module's blocks).

    The authors' schedule: ``linspace(0, rate, sum(depths))`` reversed (the deepest stage, stage 0
    at H/32, gets the largest rates), sliced per stage by depth; module j of a stage takes the
    j-th rate of its stage's slice, for all of its blocks (their ``drop_path[i]`` indexing).
    """
    total = sum(depths)
    rates = [x.item() for x in torch.linspace(0, rate, total)][::-1]
    out = []
    start = 0
    for depth in depths:
        modules, _ = split_depth(depth)
        out.append(tuple(rates[start:start + modules]))
        start += depth
    return tuple(out)


def _freeze(value: Any) -> Any:
    """Lists (from JSON) to tuples, recursively, so that configs compare and hash alike."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass
class MambaADConfig:
    """Everything that defines a MambaAD model.

    Attributes:
        encoder: name for :func:`mambaad.encoders.build_encoder` (a timm CNN such as
            ``"resnet34"``, or ``"mobilenetv2_tflite"``).
        encoder_weights: weights file for encoders that take one (the TFLite MobileNetV2), else None.
        pretrained: load the encoder's ImageNet weights through timm (needs network or cache).
        bottleneck: registered bottleneck name (``"hfpn"``: the authors' MFF_OCE; ``"dmf"``:
            MMAD's Dilated Mamba Fuser, :class:`mambaad.mmad.DMF`).
        oce_blocks: ResNet Bottleneck blocks in the HFPN's one-class embedding (``"hfpn"`` only).
        fuser_dilations: dilation rates of the DMF's parallel 3x3 convolutions (``"dmf"`` only).
        block: registered decoder block name (``"hss"``: :class:`mambaad_kernels.modules.HSSBlock`;
            ``"gss"``: MMAD's :class:`mambaad_kernels.modules.GSSBlock`).
        dims: decoder channels per stage, each half the previous (patch-expand halves them).
        depths: state-space blocks per stage.
        d_state: SSM state size N.
        scan_method: scan path (``"hilbert"``, ``"sweep"``, ``"scan"``, ``"zorder"``, ``"zigzag"``).
        directions: scan directions K (1, 2, 4, 8); for GSS blocks also the channel groups.
        drop_path_rate: largest stochastic-depth rate (see :func:`drop_path_schedule`).
        backend: scan backend for every block (None: the dispatcher's choice per call).
        blur_sigma: sigma of the Gaussian blur of the anomaly map (0: no blur).

    Derived (not arguments): ``stage_layout`` ``((modules, blocks per module), ...)`` per stage,
    from :func:`split_depth`; ``drop_path_rates`` per stage per module.
    """

    encoder: str = "resnet34"
    encoder_weights: str | None = None
    pretrained: bool = False
    bottleneck: str = "hfpn"
    oce_blocks: int = 3
    fuser_dilations: tuple[int, ...] = (1, 2, 4)
    block: str = "hss"
    dims: tuple[int, ...] = (512, 256, 128, 64)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    d_state: int = 16
    scan_method: str = "hilbert"
    directions: int = 8
    drop_path_rate: float = 0.2
    backend: str | None = None
    blur_sigma: float = 4.0
    stage_layout: tuple[tuple[int, int], ...] = field(init=False)
    drop_path_rates: tuple[tuple[float, ...], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.dims = tuple(int(d) for d in self.dims)
        self.depths = tuple(int(d) for d in self.depths)
        if len(self.dims) != NUM_STAGES or len(self.depths) != NUM_STAGES:
            raise ValueError(f"dims and depths need {NUM_STAGES} entries (one per decoder stage), got "
                             f"dims={self.dims}, depths={self.depths}")
        if any(d <= 0 for d in self.dims) or any(d <= 0 for d in self.depths):
            raise ValueError(f"dims and depths must be positive, got dims={self.dims}, depths={self.depths}")
        for prev, cur in zip(self.dims, self.dims[1:]):
            if prev != 2 * cur:
                raise ValueError(f"each decoder dim must be half the previous one (patch-expand halves "
                                 f"the channels), got dims={self.dims}")
        if self.d_state <= 0 or self.oce_blocks <= 0:
            raise ValueError(f"d_state and oce_blocks must be positive, got {self.d_state}, "
                             f"{self.oce_blocks}")
        self.fuser_dilations = tuple(int(d) for d in self.fuser_dilations)
        if not self.fuser_dilations or any(d <= 0 for d in self.fuser_dilations):
            raise ValueError(f"fuser_dilations must be one or more positive rates, got "
                             f"{self.fuser_dilations}")
        check_method(self.scan_method)
        check_directions(self.directions)
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected None or one of {BACKENDS}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")
        self.stage_layout = tuple(split_depth(d) for d in self.depths)
        self.drop_path_rates = drop_path_schedule(self.depths, self.drop_path_rate)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The fields a caller sets (the derived ones excluded)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)

    def replace(self, **overrides: Any) -> MambaADConfig:
        """A copy with ``overrides`` applied.

        Derived fields may be passed back (as ``asdict`` gives them) only with the values the
        other fields derive; anything else, and any unknown key, raises ValueError.
        """
        init_names = self.field_names()
        derived_names = tuple(f.name for f in dataclasses.fields(self) if not f.init)
        unknown = sorted(k for k in overrides if k not in init_names and k not in derived_names)
        if unknown:
            raise ValueError(f"unknown MambaADConfig field(s) {unknown}; valid fields: {list(init_names)}")
        derived = {k: overrides.pop(k) for k in derived_names if k in overrides}
        new = dataclasses.replace(self, **{k: _freeze(v) for k, v in overrides.items()})
        for name, value in derived.items():
            if _freeze(value) != getattr(new, name):
                raise ValueError(f"{name} is derived from the other fields ({getattr(new, name)}); "
                                 f"got {value!r}, which does not match")
        return new
