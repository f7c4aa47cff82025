"""mambaad: the MambaAD anomaly detector built on the fused scans of :mod:`mambaad_kernels`.

Public API::

    import mambaad
    model = mambaad.create_model("mambaad", pretrained=False, backend=None)    # or "mmad" (MMAD)
    model.train(); enc, dec = model(images)                 # images (B, 3, H, W)
    loss = mambaad.reconstruction_loss(enc, dec)
    model.eval(); out = model(images)      # out.anomaly_map (B, 1, H, W), out.pred_score (B,)
    mambaad.load_pretrained(model, "net.pth")               # the authors' checkpoints or ours

Importing this package loads no TFLite code, data pipeline or CLI.
"""

from .anomaly import AnomalyOutput, anomaly_map, gaussian_blur, reconstruction_loss
from .bottleneck import HFPN, ScaleFusion
from .config import MambaADConfig
from .decoder import LSSModule, MambaDecoder, PatchExpand
from .mmad import DMF
from .model import MambaAD, checkpoint_filter_fn, checkpoint_naming, load_pretrained
from .registry import create_model, list_models, register_block, register_bottleneck, register_model

__all__ = [
    "DMF",
    "HFPN",
    "AnomalyOutput",
    "LSSModule",
    "MambaAD",
    "MambaADConfig",
    "MambaDecoder",
    "PatchExpand",
    "ScaleFusion",
    "anomaly_map",
    "checkpoint_filter_fn",
    "checkpoint_naming",
    "create_model",
    "gaussian_blur",
    "list_models",
    "load_pretrained",
    "reconstruction_loss",
    "register_block",
    "register_bottleneck",
    "register_model",
]
