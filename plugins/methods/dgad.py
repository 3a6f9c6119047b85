"""DGAD — Park, Kim, Cha & Lee (Dynamic Guidance Adversarial Distillation with Enhanced Teacher Knowledge),
ECCV 2024 (arXiv 2409.01627); written from the official code, kunsaram01/DGAD @ a0329c8 (``main.py``
L390-447), as ``shared/spec/recent-methods/dgad.md``.

With t^o = T(x), t^a = T(x_adv) (constants) and KL_i summed over classes:

    MAP:  Λ_i = 1[argmax t^o_i ≠ y_i]   (the teacher is wrong on the clean sample: distil it at x)
    ELS:  t̃ = t with t_{y_i} and max_{j≠y_i} t_j swapped where t_{y_i} < max_{j≠y_i} t_j (on copies)
    PCR:  (1/(B·C)) Σ_i Σ_c (p(S(x_adv))_ic − p(S(x))_ic)²       (gradient through both)
    L = (1/B) Σ_i [Λ_i KL_i(t̃^o_i ‖ S(x_i)) + (1 − Λ_i) KL_i(t̃^a_i ‖ S(x_adv,i))] + γ·PCR

i.e. the official (M/b)·L_clean + ((b − M)/b)·L_adv with b = B (M = Σ Λ_i). ``nominal_batch = 128`` divides
by the official ``args.bs`` instead (its last, partial batch); ``mobilenet_parenthesization`` reproduces
its MobileNetV2 script's 0.5·((M/b)·L_clean + (b − M)/b)·L_adv. Where every clean sample is misclassified
(M = B) the empty adversarial part is 0 (the official code divides by zero). Inner attack: ``adaad``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from igdm_kit.interfaces import Method, Options, SampleTerm
from igdm_kit.losses import kl_per_sample, reduce_term, swap_classes


def correct_label(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ELS on a copy: where the true class's logit is below the best other one, swap the two."""
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    best_other = others.argmax(dim=1)
    wrong = logits.gather(1, y[:, None])[:, 0] < others.gather(1, best_other[:, None])[:, 0]
    return swap_classes(logits, y, best_other, where=wrong)


class DGAD(Method):
    description = "DGAD (Park et al., ECCV 2024): per-sample MAP choice of x or x_adv, label-swapped teacher, PCR"
    default_attack = "adaad"
    needs_teacher = True

    class Options(Options):
        gamma: float = Field(1.0, ge=0, description="weight γ of the prediction-consistency term (PCR, "
                                                    "--ALP_beta)")
        nominal_batch: int | None = Field(
            None, gt=0, description="normalize by this fixed batch size as the official code (args.bs = 128; "
                                    "differs on a last, partial batch); default: the batch's own size")
        mobilenet_parenthesization: bool = Field(
            False, description="the official MobileNetV2 script's misplaced parenthesis: "
                               "0.5·((M/b)·L_clean + (b − M)/b)·L_adv (quirk; off)")

    def teacher_inputs(self, epoch, epochs):
        return {"x", "x_adv"}

    def loss(self, ctx):
        o, y = self.options, ctx.y
        t_clean = ctx.teacher("x")
        clean = (t_clean.argmax(dim=1) != y).to(t_clean.dtype)  # Λ_i: the teacher errs on x_i
        s_x = ctx.student("x") if o.gamma > 0 or bool(clean.any()) or ctx.reference else None
        s_adv = ctx.student("x_adv")
        terms = {}
        if s_x is not None and bool(clean.any()):
            kl = kl_per_sample(ctx.teacher_transformed("x", correct_label), s_x)
            terms["clean_kl"] = self._term(kl, clean, clean, part="clean")
        adv = 1 - clean
        if bool(adv.any()):
            kl = kl_per_sample(ctx.teacher_transformed("x_adv", correct_label), s_adv)
            terms["adv_kl"] = self._term(kl, adv, clean, part="adv")
        if o.mobilenet_parenthesization:
            terms = self._mobilenet(terms, clean)
        if o.gamma > 0:
            diff = F.softmax(s_adv, dim=1) - F.softmax(s_x, dim=1)
            terms["pcr"] = o.gamma * (diff * diff).mean()
        return terms

    def _term(self, kl: torch.Tensor, mask: torch.Tensor, clean: torch.Tensor, *, part: str) -> SampleTerm:
        """Σ over one partition, (1/B) per sample; or the official (M/b)/(M + 1e-10), ((b − M)/b)/(B − M)."""
        b = self.options.nominal_batch
        if b is None and not self.options.mobilenet_parenthesization:
            return SampleTerm(kl, mask)
        b = b or kl.shape[0]
        m = clean.sum()
        scale = (m / b) / (m + 1e-10) if part == "clean" else ((b - m) / b) / (kl.shape[0] - m)
        return SampleTerm(kl, mask * scale, reduction="sum")

    def _mobilenet(self, terms: dict, clean: torch.Tensor) -> dict:
        """0.5·((M/b)·L_clean + (b − M)/b)·L_adv, L_clean and L_adv the partition means."""
        b = self.options.nominal_batch or clean.shape[0]
        m = clean.sum()
        zero = clean.new_zeros(())
        l_clean = reduce_term(terms["clean_kl"]) / (m / b) if "clean_kl" in terms else zero
        l_adv = reduce_term(terms["adv_kl"]) / ((b - m) / b) if "adv_kl" in terms else zero
        return {"kd": 0.5 * ((m / b) * l_clean + (b - m) / b) * l_adv}
