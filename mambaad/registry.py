"""Small registries: model entry points, decoder block builders and bottleneck builders.

Models (timm's pattern)::

    @register_model
    def mambaad(pretrained: bool = False, **overrides) -> nn.Module: ...

    model = create_model("mambaad", backend="cpu")   # model.model_name == "mambaad"

Decoder blocks and bottlenecks are chosen by name from the config (``MambaADConfig.block``,
``MambaADConfig.bottleneck``), so a variant (MMAD's GSS blocks, its dilated fuser) registers its
builders and names them in its config; no subclass of the model is needed:

- block builder ``(dim, drop_path, config) -> nn.Module`` mapping ``(B, H, W, dim)`` to the same
  shape (channels last, any H and W);
- bottleneck builder ``(in_channels, out_channels, config) -> nn.Module`` mapping the encoder's
  three features ``[(B, C_i, H / s_i, W / s_i)]``, s = (4, 8, 16), to ``(B, out, H / 32, W / 32)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn as nn

F = TypeVar("F", bound=Callable[..., Any])

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_BLOCKS: dict[str, Callable[..., nn.Module]] = {}
_BOTTLENECKS: dict[str, Callable[..., nn.Module]] = {}


def _register(table: dict[str, Callable[..., Any]], kind: str, fn: Callable[..., Any], name: str | None):
    key = name or fn.__name__
    if key in table and table[key] is not fn:
        raise ValueError(f"a {kind} named {key!r} is already registered")
    table[key] = fn
    return fn


def register_model(fn: F | None = None, *, name: str | None = None) -> Any:
    """Register a model entry point ``fn(pretrained=False, **overrides) -> nn.Module``.

    Used bare (``@register_model``, the name is the function's) or with ``name=``.
    """
    if fn is None:
        return lambda f: _register(_MODELS, "model", f, name)
    return _register(_MODELS, "model", fn, name)


def register_block(name: str) -> Callable[[F], F]:
    """Register a decoder block builder ``(dim, drop_path, config) -> nn.Module`` under ``name``."""
    return lambda fn: _register(_BLOCKS, "block", fn, name)


def register_bottleneck(name: str) -> Callable[[F], F]:
    """Register a bottleneck builder ``(in_channels, out_channels, config) -> nn.Module``."""
    return lambda fn: _register(_BOTTLENECKS, "bottleneck", fn, name)


def _lookup(table: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable[..., Any]:
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; registered: {sorted(table)}") from None


def get_block(name: str) -> Callable[..., nn.Module]:
    """The block builder registered as ``name``."""
    return _lookup(_BLOCKS, "decoder block", name)


def get_bottleneck(name: str) -> Callable[..., nn.Module]:
    """The bottleneck builder registered as ``name``."""
    return _lookup(_BOTTLENECKS, "bottleneck", name)


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: a name from :func:`list_models` (``"mambaad"``, ``"mambaad_test"``, ...).
        pretrained: passed to the entry point (for MambaAD: the encoder's ImageNet weights).
        **overrides: configuration fields to change (unknown keys raise ValueError). A
            checkpoint's ``dataclasses.asdict(model.config)`` may be passed back whole.

    Returns:
        The model, with ``model.model_name == name``.
    """
    model = _lookup(_MODELS, "model", name)(pretrained=pretrained, **overrides)
    model.model_name = name
    return model
