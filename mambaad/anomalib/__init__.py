"""MambaAD in anomalib (the optional extra ``mambaad[anomalib]``; importing this subpackage imports
anomalib, importing :mod:`mambaad` does not).

- :class:`MambaAD`: the anomalib model (``Engine().fit / test / predict / export``), its ``model``
  attribute this package's MambaAD;
- :class:`MultiCategory` and :func:`evaluate_per_category`: one model over several categories, tested per
  category (the paper's multi-class setting);
- :class:`ExportUnavailable`: raised by the ONNX / OpenVINO exports where they cannot be made.

See docs/anomalib.md.
"""

from .datamodule import MultiCategory, concat_datasets, evaluate_per_category
from .export import ExportUnavailable
from .lightning_model import MambaAD

__all__ = ["ExportUnavailable", "MambaAD", "MultiCategory", "concat_datasets", "evaluate_per_category"]
