"""The case and result files of the harness (format: tests/aarch64/harness.cpp's header comment)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

MAGIC = b"MAMBAAD1"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32]
# numpy types of the same width for the buffers (bfloat16 travels as its 16 bits)
_NP = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
       torch.bfloat16: np.int16, torch.int32: np.int32}
RESULTS = ["out", "states", "dx", "dx_dbl", "d_dt_w", "d_dt_b", "d_A_logs", "d_Ds"]


def _dense_base(t: torch.Tensor) -> torch.Tensor:
    """The contiguous tensor whose buffer ``t`` views: ``t`` must be a permutation of one (for
    example channels-last), so that sizes, strides and that buffer describe it exactly."""
    order = sorted(range(t.dim()), key=lambda i: -t.stride(i))
    base = t.permute(order).contiguous()
    assert torch.equal(torch.as_strided(base, t.shape, t.stride()), t), "not a permuted dense tensor"
    return base


def _write_tensor(out, t: torch.Tensor) -> None:
    t = t.detach().cpu()
    base = _dense_base(t)
    out.write(struct.pack("<qq", DTYPES.index(t.dtype), t.dim()))
    out.write(struct.pack(f"<{2 * t.dim()}q", *t.shape, *t.stride()))
    raw = base.view(torch.int16) if t.dtype == torch.bfloat16 else base
    out.write(struct.pack("<q", base.numel()))
    out.write(raw.numpy().astype(_NP[t.dtype], copy=False).tobytes())


def write_cases(path: Path, cases: list[tuple[bool, list[torch.Tensor]]]) -> None:
    """cases: (grouped, [x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, dout]) each."""
    with open(path, "wb") as out:
        out.write(MAGIC + struct.pack("<q", len(cases)))
        for grouped, tensors in cases:
            assert len(tensors) == 8
            out.write(struct.pack("<q", int(grouped)))
            for t in tensors:
                _write_tensor(out, t)


def _read(buf: memoryview, pos: int, fmt: str) -> tuple[tuple, int]:
    size = struct.calcsize(fmt)
    return struct.unpack_from(fmt, buf, pos), pos + size


def _read_tensor(buf: memoryview, pos: int) -> tuple[torch.Tensor, int]:
    (code, ndim), pos = _read(buf, pos, "<qq")
    dims, pos = _read(buf, pos, f"<{2 * ndim}q")
    (numel,), pos = _read(buf, pos, "<q")
    dtype = DTYPES[code]
    arr = np.frombuffer(buf, dtype=_NP[dtype], count=numel, offset=pos).copy()
    base = torch.from_numpy(arr)
    if dtype == torch.bfloat16:
        base = base.view(torch.int16).view(torch.bfloat16)
    t = torch.as_strided(base, dims[:ndim], dims[ndim:])
    return t, pos + arr.nbytes


def read_results(path: Path) -> list[dict[str, torch.Tensor] | str]:
    """Per case: a dict of RESULTS' tensors, or the error message the op raised."""
    buf = memoryview(Path(path).read_bytes())
    assert bytes(buf[:8]) == MAGIC, "not a results file"
    (count,), pos = _read(buf, 8, "<q")
    results = []
    for _ in range(count):
        (status,), pos = _read(buf, pos, "<q")
        if status:
            (n,), pos = _read(buf, pos, "<q")
            results.append(bytes(buf[pos:pos + n]).decode())
            pos += n
            continue
        res = {}
        for name in RESULTS:
            res[name], pos = _read_tensor(buf, pos)
        results.append(res)
    assert pos == len(buf), "trailing bytes in the results file"
    return results
