"""Direct gradient matching — the baseline of Lee, Cho & Kim, "Indirect Gradient Matching for Adversarial
Robust Distillation", ICLR 2025, Appendix A.4 (Eq. 11), which IGDM improves on.

    L_Direct = D(g_S, g_T),   g = ∇_x CE(f(x), y) per sample, at the clean x

D = ``l2`` (mean squared error over all entries; the default), ``l1`` (mean absolute error) or ``cosine``
(mean over samples of 1 − cos between flattened gradients). The engine multiplies it by T(α).

g_S is computed with ``create_graph=True`` (double backprop) so that the loss trains the student; the
student runs in its current (train) mode, as for every other student pass of the step. g_T is a constant:
the teacher (eval mode, frozen) is differentiated w.r.t. its input only, never its parameters.

Passes: these two input-gradient computations are forward + backward passes of their own, outside the
step's cache (they cannot share S(x)/T(x) with the base method, which are computed without an input that
requires grad, and for the student not with a graph deep enough to differentiate twice). They therefore
cost an extra student forward (which also updates BatchNorm running statistics) and teacher forward per
step, plus the double backward. β, γ and ``clamp`` have no effect on this module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from igdm_kit.errors import IgdmKitError
from igdm_kit.interfaces import GradientModule, ModuleOptions
from igdm_kit.losses import direct_loss


class DirectGradientMatching(GradientModule):
    description = "direct input-gradient matching (Lee et al., ICLR 2025, Eq. 11): D(∇_x S, ∇_x T)"
    needs_teacher = True

    class Options(ModuleOptions):
        distance: Literal["l2", "l1", "cosine"] = Field(
            "l2", description="D: l2 = mean squared error, l1 = mean absolute error, cosine = mean 1 − cos"
        )

    # Both gradients come from passes of their own (see the module docstring), not from the step cache,
    # so it declares no teacher inputs. Its double backward rules out fp16 (the input gradient is not
    # loss-scaled) and torch.compile.
    supports_fp16 = False
    supports_compile = False

    per_sample = True

    def loss_per_sample(self, ctx):
        return self.loss(ctx, reduction="none")

    def loss(self, ctx, reduction: str = "mean"):
        if not ctx.has_teacher():
            raise IgdmKitError("gradient module 'direct' needs a teacher",
                               "add a [teacher] section to the recipe, or use a module without a teacher")
        g_s = ctx.input_gradient("student", "x", create_graph=True)
        g_t = ctx.input_gradient("teacher", "x")
        return direct_loss(g_s, g_t, distance=self.options.distance, reduction=reduction)
