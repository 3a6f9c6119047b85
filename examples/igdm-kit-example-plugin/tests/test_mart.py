"""The example plugin is discovered through its entry point and computes MART's loss."""

import math

import torch

from igdm_kit.plugins import registry
from igdm_kit.step import Step


def test_mart_is_registered_by_the_example_plugin():
    entry = registry("method").entry("mart")
    assert entry.plugin == "mart"  # the entry-point name, not a built-in


def test_mart_loss_matches_a_hand_computation():
    from igdm_kit_example.mart import MART

    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3, bias=False).double()
    x = torch.rand(2, 3, dtype=torch.float64)
    x_adv = (x + 0.1).clamp(0, 1)
    y = torch.tensor([0, 2])
    step = Step(lin, None, x, y, epoch=1, epochs=1)
    step.set_input("x_adv", x_adv)
    terms = MART(MART.Options(beta=6.0)).loss(step)

    expected = 0.0
    for i in range(2):
        za, zn = (lin(x_adv[i]).tolist(), lin(x[i]).tolist())
        pa = [math.exp(v) / sum(math.exp(u) for u in za) for v in za]
        pn = [math.exp(v) / sum(math.exp(u) for u in zn) for v in zn]
        wrong = max((k for k in range(3) if k != y[i]), key=lambda k: pa[k])
        bce = -math.log(pa[y[i]]) - math.log(1.0001 - pa[wrong] + 1e-12)
        kl = sum(pn[k] * (math.log(pn[k] + 1e-12) - math.log(pa[k] + 1e-12)) for k in range(3))
        expected += (bce + 6.0 * kl * (1.0000001 - pn[y[i]])) / 2
    assert math.isclose(float(sum(terms.values()).detach()), expected, rel_tol=1e-9)
