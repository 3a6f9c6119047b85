"""Hostile ``.npy`` shift files (#27's red team): object arrays, text, 0-d arrays, a header claiming 745 GiB,
wrong dtypes and shapes — each is the one-line ``DataError`` naming the file, read without pickle and without
allocating what the header claims."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from test_shift_files import ctx

from igdm_kit.errors import DataError
from igdm_kit.factories import create_shift

GOOD_X = np.zeros((5, 32, 32, 3), np.uint8)
GOOD_Y = np.array([0, 1, 2, 3, 9])


def _header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """A version-1.0 .npy header, written from the format's description (not by numpy)."""
    d = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    pad = 64 - (10 + len(d) + 1) % 64
    d = d + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode("latin1")


def _write(path, what):
    if isinstance(what, bytes):
        path.write_bytes(what)
    else:
        np.save(path, what, allow_pickle=True)


HOSTILE = {
    "object array": np.array([{"a": 1}, None], dtype=object),  # would need pickle to load
    "text": b"airplane,automobile\n1,2\n",
    "0-d": np.array(7, np.uint8),
    "745 GiB header": _header((800_000_000, 32, 32, 3)) + bytes(1000),
    "float images": np.zeros((5, 32, 32, 3), np.float64),
    "wrong shape": np.zeros((5, 3, 32, 32), np.uint8),
    "truncated": _header((5, 32, 32, 3)) + bytes(100),
    "fortran order": np.asfortranarray(GOOD_X),
    "big-endian labels": GOOD_Y.astype(">i8"),
}


@pytest.mark.parametrize("which", ["data", "labels"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_cifar10_1_file_is_one_line(tmp_path, case, which):
    base = tmp_path / "cifar-10.1"
    base.mkdir()
    data, labels = base / "cifar10.1_v6_data.npy", base / "cifar10.1_v6_labels.npy"
    np.save(data, GOOD_X)
    np.save(labels, GOOD_Y)
    target = data if which == "data" else labels
    _write(target, HOSTILE[case])
    (s,) = create_shift("cifar10.1", root=str(tmp_path)).sets(ctx())
    if case == "big-endian labels" and which == "labels" or case == "fortran order" and which == "data":
        x, y = s.load()  # valid .npy files of a layout numpy reads as it is: no error to give
        assert x.shape == (5, 3, 32, 32) and y.tolist() == GOOD_Y.tolist()
        return
    with pytest.raises(DataError) as exc:
        s.load()
    assert target.name in exc.value.message and exc.value.hint, exc.value.message


@pytest.mark.parametrize("case", ["object array", "text", "0-d", "745 GiB header", "float images", "truncated"])
def test_a_hostile_corruption_file_is_one_line(tmp_path, case):
    base = tmp_path / "CIFAR-10-C"
    base.mkdir()
    _write(base / "fog.npy", HOSTILE[case])
    np.save(base / "labels.npy", np.tile(GOOD_Y, 5))
    sets = create_shift("corruption-files", root=str(tmp_path), corruptions=["fog"], severities=[1]).sets(ctx())
    with pytest.raises(DataError, match="fog.npy"):
        sets[0].load()
