"""mambaad_kernels: the fused multi-direction state-space scan of MambaAD.

Public API::

    import mambaad_kernels as mk
    mk.scan_paths(h, w, "hilbert")            # (K, L) scan paths, cached per grid
    mk.hss_scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, backend=None)
    mk.available_backends("cuda")
    from mambaad_kernels.modules import SS2D, HSSBlock
    mk.export_onnx(module, example, "model.onnx")  # the scans in standard ONNX operators, checked

Importing the package loads no kernels: backends are imported when first used. It registers the
torch op ``mambaad::hss_scan`` (:mod:`mambaad_kernels.fused`), which is all a program exported with
``torch.export`` (``mambaad export``) needs from this package to load.
"""

from . import fused  # noqa: F401  (registers the mambaad::hss_scan op)
from .backends import (BACKENDS, BackendFallbackWarning, BackendUnavailable, available_backends,
                       resolve_backend)
from .onnx_export import export_onnx
from .ops import hss_scan
from .paths import METHODS, inverse_paths, scan_path, scan_paths

__all__ = [
    "BACKENDS",
    "METHODS",
    "BackendFallbackWarning",
    "BackendUnavailable",
    "available_backends",
    "export_onnx",
    "hss_scan",
    "inverse_paths",
    "resolve_backend",
    "scan_path",
    "scan_paths",
]
__version__ = "0.1.0"
