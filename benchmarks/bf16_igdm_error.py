"""How far bf16 moves the IGDM term from its exact value, on trained models (issue 28).

IGDM's differences Δ = f(x + δ) − f(x − δ) subtract nearly equal logits, which is where low precision hurts.
For a student and its teacher (igdm-kit checkpoints) on a dataset's test images, with δ the fp32 PGD
perturbation of the student (ε, steps as given), this computes, batch by batch:

* Δ_S and the IGDM term KL(Δ_T ‖ Δ_S) and its gradient w.r.t. the student's parameters three ways — the
  models in float64 (the reference), in float32, and in float32 under ``torch.autocast(bfloat16)`` as
  ``train.amp = "bf16"`` runs them (logits cast back to float32, the loss computed from them);
* the relative error of each against float64: ‖Δ − Δ₆₄‖ / ‖Δ₆₄‖, |L − L₆₄| / |L₆₄| and ‖g − g₆₄‖ / ‖g₆₄‖,
  with the cosine between g and g₆₄.

    python benchmarks/bf16_igdm_error.py --student runs/quickstart/alpha=6/model.safetensors \\
        --teacher runs/quickstart/teacher/model.safetensors --dataset digits --out bf16_error.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from igdm_kit import load_model
from igdm_kit.errors import IgdmKitError
from igdm_kit.factories import create_attack, create_dataset
from igdm_kit.losses import igdm_loss


def _diffs(model, x_plus, x_minus, precision: str) -> torch.Tensor:
    if precision == "fp64":
        return model(x_plus.double()) - model(x_minus.double())
    if precision == "bf16":
        with torch.autocast("cpu" if x_plus.device.type == "cpu" else x_plus.device.type, dtype=torch.bfloat16):
            plus, minus = model(x_plus), model(x_minus)
        return plus.float() - minus.float()  # as the accelerator's hook: logits back to fp32, loss from them
    return model(x_plus) - model(x_minus)


def term_and_grad(student, teacher, x, delta, precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Δ_S, the IGDM term, its gradient w.r.t. the student's parameters, flattened), both models at
    ``precision`` (fp64: models and inputs converted; fp32; bf16: fp32 models under autocast)."""
    dtype = torch.float64 if precision == "fp64" else torch.float32
    s, t = student.to(dtype), teacher.to(dtype)
    x_plus, x_minus = (x + delta).to(dtype), (x - delta).to(dtype)
    with torch.no_grad():
        d_t = _diffs(t, x_plus, x_minus, precision)
    d_s = _diffs(s, x_plus, x_minus, precision)
    loss = igdm_loss(d_s, torch.zeros_like(d_s), d_t, torch.zeros_like(d_t))
    grads = torch.autograd.grad(loss, [p for p in s.parameters() if p.requires_grad])
    return d_s.detach().double(), loss.detach().double(), torch.cat([g.reshape(-1) for g in grads]).double()


def measure(student, teacher, x, y, *, eps: float, steps: int, batch_size: int) -> dict:
    """Relative errors of fp32 and bf16 against fp64, per batch, and their medians and maxima."""
    student.eval(), teacher.eval()
    attack = create_attack("pgd", student, eps=eps, step_size=eps / 4, steps=steps)
    rows: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        student.float()
        delta = (attack(xb, yb) - xb).detach()
        ref = term_and_grad(student, teacher, xb, delta, "fp64")
        for precision in rows:
            d, loss, g = term_and_grad(student, teacher, xb, delta, precision)
            rows[precision].append({
                "delta_rel": float((d - ref[0]).norm() / ref[0].norm()),
                "term_rel": float((loss - ref[1]).abs() / ref[1].abs()),
                "grad_rel": float((g - ref[2]).norm() / ref[2].norm()),
                "grad_cos": float(torch.nn.functional.cosine_similarity(g, ref[2], dim=0)),
                "term_fp64": float(ref[1])})
    student.float(), teacher.float()
    summary = {p: {k: {"median": statistics.median(r[k] for r in rs), "max": max(r[k] for r in rs),
                       "min": min(r[k] for r in rs)} for k in ("delta_rel", "term_rel", "grad_rel", "grad_cos")}
               for p, rs in rows.items()}
    return {"batches": rows, "summary": summary, "n": int(x.shape[0])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--n", type=int, default=360, help="test images (the first n)")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    x, y = create_dataset(a.dataset).load("test")
    x, y = x[:a.n], y[:a.n]
    try:
        student, teacher = load_model(a.student), load_model(a.teacher)
    except IgdmKitError as exc:
        print(f"error: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        return 1
    result = measure(student, teacher, x, y, eps=a.eps, steps=a.steps, batch_size=a.batch_size)
    result.update(student=a.student, teacher=a.teacher, dataset=a.dataset, eps=a.eps, steps=a.steps,
                  torch=torch.__version__)
    print(f"IGDM term against float64 on {result['n']} {a.dataset} test images (ε = {a.eps}, PGD-{a.steps} δ), "
          f"per batch of {a.batch_size}: median [max]")
    print(f"{'':6} {'‖ΔS−ΔS64‖/‖ΔS64‖':>20} {'|L−L64|/|L64|':>20} {'‖g−g64‖/‖g64‖':>20} {'cos(g, g64)':>20}")
    for prec, s in result["summary"].items():
        cells = [f"{s[k]['median']:.2e} [{s[k]['max']:.2e}]" for k in ("delta_rel", "term_rel", "grad_rel")]
        print(f"{prec:6} " + " ".join(f"{c:>20}" for c in cells) + f" {s['grad_cos']['median']:>11.6f} "
              f"[{s['grad_cos']['min']:.6f}]")
    if a.out:
        from igdm_kit.files import atomic_write_json

        atomic_write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
