"""The dispatcher: backend choice, unavailable backends, and input checks with clear errors."""

import pytest
import torch

import mambaad_kernels as mk
from mambaad_kernels.backends import BackendUnavailable

from .parity import make_params


def _args(d=4, k=8, n=4, r=2, grouped=False, h=3, w=5, dtype=torch.float32):
    x = torch.randn(1, d, h, w, dtype=dtype)
    return [x, *make_params(d, n, r, k, grouped, "cpu")]


def test_reference_always_available():
    assert "reference" in mk.available_backends("cpu")
    assert mk.resolve_backend("reference", "cpu") == "reference"


def test_auto_choice_on_cpu(monkeypatch):
    monkeypatch.delenv("MAMBAAD_BACKEND", raising=False)
    want = "cpu" if "cpu" in mk.available_backends("cpu") else "reference"
    assert mk.resolve_backend(None, "cpu") == want


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("MAMBAAD_BACKEND", "reference")
    assert mk.resolve_backend(None, "cpu") == "reference"
    monkeypatch.setenv("MAMBAAD_BACKEND", "fastest")
    with pytest.raises(ValueError, match="MAMBAAD_BACKEND"):
        mk.resolve_backend(None, "cpu")


def test_requested_backend_that_cannot_run_raises_with_reason():
    with pytest.raises(BackendUnavailable, match="cuda"):
        mk.hss_scan(*_args(), backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        mk.hss_scan(*_args(), backend="magic")


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = mk.backends.unavailable_reason("triton", "cpu")
    assert reason and ("TRITON_INTERPRET" in reason or "triton" in reason)


@pytest.mark.parametrize("mutate,err,match", [
    (lambda a: a.__setitem__(0, a[0][0]), ValueError, "4-D"),
    (lambda a: a.__setitem__(0, a[0].int()), TypeError, "float32"),
    (lambda a: a.__setitem__(0, a[0][:, :, :0]), ValueError, "empty"),
    (lambda a: a.__setitem__(1, a[1][:, :-1]), ValueError, "x_proj_weight"),
    (lambda a: a.__setitem__(2, a[2][:4]), ValueError, "dt_projs_weight"),
    (lambda a: a.__setitem__(3, a[3].t()), ValueError, "dt_projs_bias"),
    (lambda a: a.__setitem__(4, a[4][:-1]), ValueError, "A_logs"),
    (lambda a: a.__setitem__(5, a[5][:-1]), ValueError, "Ds"),
    (lambda a: a.__setitem__(5, a[5].half()), TypeError, "Ds"),
    (lambda a: a.__setitem__(5, a[5].to("meta")), ValueError, "meta"),
])
def test_input_checks(mutate, err, match):
    args = _args()
    mutate(args)
    with pytest.raises(err, match=match):
        mk.hss_scan(*args, backend="reference")


def test_method_and_direction_checks():
    with pytest.raises(ValueError, match="scan method"):
        mk.hss_scan(*_args(), method="spiral")
    with pytest.raises(ValueError, match="directions"):
        mk.hss_scan(*_args(k=8), directions=3)
    with pytest.raises(ValueError, match="x_proj_weight"):
        mk.hss_scan(*_args(k=8), directions=4)  # parameters made for 8 directions


def test_grouped_checks():
    with pytest.raises(ValueError, match="divisible"):
        mk.hss_scan(*_args(d=6, k=4), directions=4, grouped=True)
    args = _args(d=8, k=4, grouped=True)
    assert mk.hss_scan(*args, directions=4, grouped=True, backend="reference").shape == (1, 8, 3, 5)
    with pytest.raises(ValueError, match="HSS: Dk = D"):
        mk.hss_scan(*args, directions=4, grouped=False)


def test_params_in_x_dtype_accepted():
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    params = make_params(4, 4, 2, 8, False, "cpu", torch.float64)
    assert mk.hss_scan(x, *params, backend="reference").dtype == torch.float64
