"""Image files of every kind the decode rules cover, written for tests: odd but valid ones (grey,
RGBA, 16-bit grey and colour PNG, EXIF-rotated JPEG) and unreadable ones (truncated, not an image,
zero bytes, no read permission).

Every writer returns the path written; the odd ones also return the RGB pixels (uint8) the decode
rules must give.
"""

from __future__ import annotations

import builtins
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

EXIF_ORIENTATION = 0x0112


def _folder(path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path


def write_png16(path: str, pixels: np.ndarray) -> str:
    """A 16-bit PNG written by hand (Pillow writes 16-bit grey only): ``(h, w)`` grey, ``(h, w, 3)``
    RGB or ``(h, w, 4)`` RGBA uint16."""
    h, w = pixels.shape[:2]
    colour_type = 0 if pixels.ndim == 2 else {3: 2, 4: 6}[pixels.shape[2]]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    with open(_folder(path), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                + chunk(b"IEND", b""))
    return path


def grey_png(path: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    grey = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    Image.fromarray(grey).save(_folder(path))
    return path, np.repeat(grey[..., None], 3, axis=2)


def rgba_png(path: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    rgba = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(_folder(path))
    return path, rgba[..., :3]  # the alpha channel is dropped, the colours kept as stored


def grey16_png(path: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    grey = rng.integers(0, 65536, (40, 48), dtype=np.uint16)
    write_png16(path, grey)
    return path, np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=2)


def rgb16_png(path: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    rgb = rng.integers(0, 65536, (40, 48, 3), dtype=np.uint16)
    write_png16(path, rgb)
    return path, (rgb >> 8).astype(np.uint8)


def upright_quadrants(h: int = 48, w: int = 80) -> np.ndarray:
    """``(h, w, 3)`` uint8: four flat quadrants of distinct colours (survives JPEG)."""
    out = np.zeros((h, w, 3), dtype=np.uint8)
    out[: h // 2, : w // 2] = (230, 30, 30)
    out[: h // 2, w // 2:] = (30, 230, 30)
    out[h // 2:, : w // 2] = (30, 30, 230)
    out[h // 2:, w // 2:] = (230, 230, 30)
    return out


def exif_rotated_jpeg(path: str, upright: np.ndarray | None = None) -> tuple[str, np.ndarray]:
    """A JPEG whose pixels are stored turned 90 degrees, with EXIF orientation 6 (rotate 90 degrees
    clockwise to display): read correctly, it is ``upright``."""
    upright = upright_quadrants() if upright is None else upright
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    stored.save(_folder(path), quality=95, exif=exif)
    return path, upright


def truncated_png(path: str, rng: np.random.Generator) -> str:
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(_folder(path))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def truncated_jpeg(path: str, rng: np.random.Generator) -> str:
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(_folder(path), quality=90)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def not_an_image(path: str) -> str:
    with open(_folder(path), "w") as f:
        f.write("this is a text file with an image extension\n")
    return path


def zero_bytes(path: str) -> str:
    open(_folder(path), "wb").close()
    return path


def unreadable(path: str, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A valid PNG without read permission. As root (where permissions do not stop reads) opening it
    is made to fail as the kernel would, with EACCES, by patching ``builtins.open`` for that path."""
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(_folder(path))
    os.chmod(path, 0)
    try:
        open(path, "rb").close()
    except PermissionError:
        return path  # not root: the permission bits are enough
    real_open = builtins.open
    target = os.path.abspath(path)

    def guarded_open(file, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) == target:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    return path


def write_bad_files(folder: str, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """One file of each unreadable kind in ``folder``: ``{kind: path}``."""
    j = os.path.join
    return {"truncated_png": truncated_png(j(folder, "bad_truncated.png"), rng),
            "truncated_jpeg": truncated_jpeg(j(folder, "bad_truncated.jpg"), rng),
            "not_an_image": not_an_image(j(folder, "bad_text.png")),
            "zero_bytes": zero_bytes(j(folder, "bad_empty.png")),
            "no_permission": unreadable(j(folder, "bad_denied.png"), rng, monkeypatch)}
