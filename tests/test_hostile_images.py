"""Hostile image files (#27's red team): every decoder failure is the one-line ``DataError`` naming the file,
and an image's size is judged from its header before anything is decoded or resized — a 1 KB PNG of
1×1,000,000 pixels took 5.7 GB (it was upscaled to the crop size first)."""

from __future__ import annotations

import io
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igdm_kit.errors import DataError
from igdm_kit_plugins.datasets.common import read_images


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, rows: bytes | None = None, extra: bytes = b"") -> bytes:
    """A PNG written by hand (8-bit greyscale): its header says width × height whatever the data holds."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = rows if rows is not None else b"".join(b"\0" + bytes(width) for _ in range(min(height, 4)))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", zlib.compress(rows, 9))
            + _chunk(b"IEND", b""))


def _peak_mb_reading(path: Path) -> tuple[str, int]:
    """(what ``read_images`` said, the peak memory in MB) of a fresh process reading ``path`` resized to 32."""
    code = f"""
import resource
from pathlib import Path
from igdm_kit.errors import DataError
from igdm_kit_plugins.datasets.common import read_images
try:
    read_images([Path({str(path)!r})], size=32, resize=True)
    print('decoded')
except DataError as e:
    print('DataError', e.message, '|', e.hint)
print('peak_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    said, peak = out.split("peak_mb")
    return said.strip(), int(peak)


def test_a_thin_png_is_refused_from_its_header_not_decoded_and_upscaled(tmp_path):
    """The reproduction, each read in a process of its own so that its peak memory can be read: 1×1,000,000
    pixels (a 1 KB file) resized to 32 on the shorter side would be 32×32,000,000 (5.5 GB measured), against
    an ordinary 40×40 image read the same way (the interpreter, torch and PIL: the same baseline)."""
    f = tmp_path / "thin.png"
    f.write_bytes(_png(1_000_000, 1, rows=b"\0" + bytes(1_000_000)))
    assert f.stat().st_size < 5_000
    ordinary = tmp_path / "ordinary.png"
    ordinary.write_bytes(_png(40, 40, rows=b"".join(b"\0" + bytes(40) for _ in range(40))))
    said, peak = _peak_mb_reading(f)
    base_said, base_peak = _peak_mb_reading(ordinary)
    assert said.startswith("DataError") and "thin.png" in said and "1000000×1" in said, said
    assert base_said == "decoded"
    assert peak - base_peak < 100, (peak, base_peak)  # no multi-GB upscale


def test_a_decompression_bomb_is_one_line(tmp_path):
    f = tmp_path / "bomb.png"
    f.write_bytes(_png(30_000, 30_000))  # 900 megapixels claimed in a few hundred bytes
    with pytest.raises(DataError, match="bomb.png") as exc:
        read_images([f], size=8, resize=True)
    assert "pixels" in exc.value.message


def test_a_text_chunk_that_inflates_past_pils_limit_is_one_line(tmp_path):
    f = tmp_path / "ztxt.png"
    big = b"Comment\0\0" + zlib.compress(b"a" * 3_000_000, 9)  # zTXt: keyword, NUL, method 0, data
    f.write_bytes(_png(8, 8, extra=_chunk(b"zTXt", big)))
    with pytest.raises(DataError, match="ztxt.png"):
        read_images([f], size=8)


@pytest.mark.parametrize("header", [b"P6\n99999999999999999999 1\n255\n", b"P6\n8 8\n0\n", b"P6\n8\n",
                                    b"P5\n-3 8\n255\n"])
def test_a_bad_ppm_header_is_one_line(tmp_path, header):
    f = tmp_path / "bad.ppm"
    f.write_bytes(header + bytes(200))
    with pytest.raises(DataError, match="bad.ppm"):
        read_images([f], size=8)


def _valid_files() -> dict[str, bytes]:
    """Valid files of seven formats, 8×8 (read as they are) and 12×9 (resized and cropped)."""
    rng = np.random.default_rng(0)
    out = {}
    for shape in ((8, 8, 3), (9, 12, 3)):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("PPM", "ppm"), ("BMP", "bmp"), ("GIF", "gif"),
                         ("TIFF", "tif"), ("WEBP", "webp")):
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format=fmt)
            out[f"{shape[1]}x{shape[0]}.{ext}"] = buf.getvalue()
    return out


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    how = rng.randrange(4)
    if how == 0:  # flip bytes, the header's more often
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(min(len(b), 64)) if rng.random() < 0.7 else rng.randrange(len(b))
            b[i] = rng.randrange(256)
    elif how == 1:  # truncate
        b = b[: rng.randrange(1, len(b))]
    elif how == 2:  # a huge number over four header bytes (sizes, lengths, offsets)
        i = rng.randrange(min(len(b) - 4, 40))
        b[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00", b"\x00\x00\x00\x00"])
    else:  # a block of the file repeated or dropped
        i, j = sorted(rng.sample(range(len(b)), 2))
        b = b[:i] + (b[i:j] * rng.randint(0, 3)) + b[j:]
    return bytes(b)


def test_fuzzed_image_files_decode_or_give_the_one_line_error(tmp_path):
    """600 mutations of valid PNG, JPEG, PPM, BMP, GIF, TIFF and WebP files (seeded): each either decodes to
    the asked shape or raises ``DataError`` naming its file — never another exception (a fuzz run on the old
    code found 70 distinct ones escaping ``except (UnidentifiedImageError, OSError)``)."""
    rng = random.Random(27)
    files = _valid_files()
    outcomes = {"decoded": 0, "refused": 0}
    for n in range(600):
        name = rng.choice(sorted(files))
        f = tmp_path / f"case{n:03d}-{name}"
        f.write_bytes(_mutate(files[name], rng))
        try:
            x = read_images([Path(f)], size=8, resize=rng.random() < 0.5)
        except DataError as exc:
            assert f.name in exc.message and exc.hint, exc.message
            outcomes["refused"] += 1
        else:
            assert x.shape == (1, 3, 8, 8) and x.dtype == np.uint8
            outcomes["decoded"] += 1
    assert outcomes["refused"] > 100 and outcomes["decoded"] > 50, outcomes  # the corpus exercises both
