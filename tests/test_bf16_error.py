"""``benchmarks/bf16_igdm_error.py``: its relative errors against float64 are what they claim to be."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bf16_igdm_error as bench  # noqa: E402

from igdm_kit.factories import create_dataset, create_model  # noqa: E402


def _model(seed: int, width: int):
    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=width)


def test_float64_against_itself_is_exact_and_fp32_is_close_bf16_farther():
    x, y = create_dataset("digits").load("test")
    student, teacher = _model(0, 4), _model(1, 8)
    out = bench.measure(student, teacher, x[:48], y[:48], eps=0.1, steps=2, batch_size=24)
    assert next(student.parameters()).dtype == torch.float32  # the models are handed back as they came
    d, loss, g = bench.term_and_grad(student, teacher, x[:24], torch.full_like(x[:24], 0.05), "fp64")
    d2, loss2, g2 = bench.term_and_grad(student, teacher, x[:24], torch.full_like(x[:24], 0.05), "fp64")
    assert torch.equal(d, d2) and torch.equal(loss, loss2) and torch.equal(g, g2)  # the reference is repeatable
    fp32, bf16 = out["summary"]["fp32"], out["summary"]["bf16"]
    # float32 rounds at 2⁻²⁴, bfloat16 at 2⁻⁸; the difference of nearly equal logits magnifies both alike
    assert fp32["delta_rel"]["max"] < 1e-3 and fp32["grad_cos"]["min"] > 0.9999
    assert bf16["delta_rel"]["median"] > 30 * fp32["delta_rel"]["median"]  # (untrained: Δ ≈ 0)
    assert len(out["batches"]["bf16"]) == 2
