"""Distribution and threat shifts (Table 9): each against an independent oracle — the imagecorruptions
package (or its formula by hand) on the same image, the threat's bound, a transformation recomputed by hand
from what the attack returns, small fake files in the published layouts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from igdm_kit._evaluation.shifts import Context
from igdm_kit.errors import IgdmKitError, RecipeError
from igdm_kit.factories import create_dataset, create_eval_attack, create_model, create_shift
from igdm_kit.interfaces import Threat

ic = pytest.importorskip("imagecorruptions", reason="pip install 'igdm-kit[corruptions]'",
                         exc_type=ImportError)  # a real import: absent or broken (no pkg_resources) both skip
from igdm_kit_plugins.shifts.corruptions import COMMON, PORTED, corrupt  # noqa: E402


def rgb_images(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


def by_hand(x, name, severity, seed):
    """imagecorruptions.corrupt on each uint8 H×W×3 image, one np.random.seed for the set."""
    np.random.seed(seed)
    imgs = (x.numpy() * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    return np.stack([ic.corrupt(img, severity, name) for img in imgs]).transpose(0, 3, 1, 2) / 255


# -- corruptions --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("i,name", [(i, n) for i, n in enumerate(COMMON) if n not in PORTED])
def test_corruption_matches_imagecorruptions_applied_by_hand(i, name):
    x, severity = rgb_images(), i % 5 + 1
    ours = corrupt(x, name, severity, seed=3).numpy()
    np.testing.assert_array_equal(np.rint(ours * 255), np.rint(by_hand(x, name, severity, 3) * 255))


@pytest.mark.parametrize("name,severity", [("glass_blur", 2), ("glass_blur", 5), ("fog", 1), ("fog", 4)])
def test_ported_corruptions_match_the_package_run_with_a_shim(name, severity, monkeypatch):
    """The package's own glass_blur/fog, with the two renamed library calls shimmed back."""
    import imagecorruptions.corruptions as pkg
    from skimage.filters import gaussian

    monkeypatch.setattr(pkg, "gaussian", lambda im, sigma, multichannel=False, **kw:
                        gaussian(im, sigma=sigma, channel_axis=-1 if multichannel else None, **kw))
    monkeypatch.setattr(np, "float_", np.float64, raising=False)
    x = rgb_images()
    np.testing.assert_array_equal(np.rint(corrupt(x, name, severity, seed=5).numpy() * 255),
                                  np.rint(by_hand(x, name, severity, 5) * 255))


def test_impulse_noise_is_seeded_salt_and_pepper_as_published():
    from skimage.util import random_noise

    x = rgb_images()
    ours = np.rint(corrupt(x, "impulse_noise", 4, seed=2).numpy() * 255)
    np.random.seed(2)
    want = [np.uint8(np.clip(random_noise(im / 255., mode="s&p", amount=0.17, rng=int(np.random.randint(2 ** 31))),
                             0, 1) * 255) for im in (x.numpy() * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)]
    np.testing.assert_array_equal(ours, np.stack(want).transpose(0, 3, 1, 2))
    changed = ours != np.rint(x.numpy() * 255)
    assert set(np.unique(ours[changed])) <= {0, 255} and 0.10 < changed.mean() < 0.20  # ≈ amount 0.17


def test_contrast_and_gaussian_noise_follow_the_published_formula_on_grey_images():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    u8 = np.rint(x.numpy() * 255)
    # contrast, severity 2: (x − mean)·0.3 + mean, per image over all pixels (three equal channels)
    v = u8 / 255
    mean = v.mean(axis=(1, 2, 3), keepdims=True)
    want = np.uint8(np.clip((v - mean) * 0.3 + mean, 0, 1) * 255)
    got = np.rint(corrupt(x, "contrast", 2).numpy() * 255)
    assert np.abs(got - want).max() <= 1  # the grey level of three equal channels, rounded by np.uint8
    # gaussian noise, severity 1: x + N(0, 0.08²) drawn for H×W×3 per image, in image order
    np.random.seed(7)
    noisy = [np.uint8(np.clip(im.transpose(1, 2, 0).repeat(3, -1) / 255 + np.random.normal(size=(8, 8, 3), scale=.08),
                              0, 1) * 255) for im in u8]
    grey = np.stack([np.uint8(np.dot(n, (0.2989, 0.5870, 0.1140))) for n in noisy])
    np.testing.assert_array_equal(np.rint(corrupt(x, "gaussian_noise", 1, seed=7).numpy()[:, 0] * 255), grey)


def test_corrupted_sets_stay_in_the_unit_box_and_keep_their_labels():
    x, y = create_dataset("digits").load("test")
    x, y = x[:6], y[:6]
    ctx = Context("digits", create_dataset("digits").info(), x, y, 0, Threat(), None, [])
    sets = create_shift("corruptions", severities=[1, 5]).sets(ctx)
    assert len(sets) == 30 and {s.group for s in sets} == {"corruption"}
    for s in sets:
        xs, ys = s.load()
        assert xs.shape == x.shape and xs.min() >= 0 and xs.max() <= 1 and torch.equal(ys, y)
    xs, _ = sets[-1].load()
    again, _ = sets[-1].load()
    assert torch.equal(xs, again)  # seeded: the same set twice


# -- threat shifts --------------------------------------------------------------------------------------------
def tiny(channels=1, size=8, seed=0):
    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=10, in_channels=channels, image_size=size, width=4).eval()


class Capture:
    """An EvalContext that records what the attack hands to the model."""

    def __init__(self, threat):
        self.threat, self.batch_size, self.device, self.seed, self.state_path = threat, 64, "cpu", 0, None
        self.seen = []

    def per_batch(self, model, x, y, perturb):
        adv = perturb(x, y)
        self.seen.append(adv)
        return model(adv).argmax(1) == y

    def progress(self, *a):
        pass

    def warn(self, m):
        pass

    def report(self, d):
        pass


def test_lp_threat_shifts_stay_within_their_radius():
    x, y = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.arange(16) % 10
    ctx = Context("digits", None, x, y, 0, Threat("Linf", 0.1), None, [])
    variants = create_shift("threats", attack="pgd20", include=["linf", "l2"], l2_eps=0.8).threats(ctx)
    assert [(v.threat.norm, v.threat.eps) for v in variants] == [("Linf", pytest.approx(0.15)), ("L2", 0.8)]
    for v in variants:
        cap = Capture(v.threat)
        create_eval_attack(v.attack).robust(tiny(), x, y, cap)
        delta = (cap.seen[0] - x).flatten(1)
        norm = delta.abs().max(1).values if v.threat.norm == "Linf" else delta.norm(dim=1)
        assert norm.max() <= v.threat.eps + 1e-5 and norm.max() > 0.3 * v.threat.eps
        assert cap.seen[0].min() >= 0 and cap.seen[0].max() <= 1


def test_default_threat_shifts_are_oodrobustbench_s_and_perceptual_ones_need_weights():
    ctx = Context("cifar10", None, None, None, 0, Threat("Linf", 8 / 255), None, [])
    v = create_shift("threats").threats(ctx)
    assert [(t.threat.norm, round(t.threat.eps, 6)) for t in v] == [
        ("Linf", round(12 / 255, 6)), ("L2", 0.5), ("L1", 12.0), ("ReColor", 0.06), ("StAdv", 0.05)]
    with pytest.raises(IgdmKitError, match="lpips_weights"):
        create_shift("threats", include=["ppgd"])


def trilinear(grid, c):
    """Trilinear interpolation of a (Rx, Ry, Rz, 3) grid at colour c ∈ [0, 1]³, by hand."""
    r = np.array(grid.shape[:3]) - 1
    pos = np.clip(c, 0, 1) * r
    lo = np.minimum(np.floor(pos).astype(int), r - 1)
    f = pos - lo
    out = np.zeros(3)
    for corner in np.ndindex(2, 2, 2):
        w = np.prod([f[k] if corner[k] else 1 - f[k] for k in range(3)])
        out += w * grid[lo[0] + corner[0], lo[1] + corner[1], lo[2] + corner[2]]
    return out


def test_recolor_changes_colours_only_through_one_bounded_colour_map():
    x = rgb_images(2, 8, seed=4)
    x[:, :, :4, :4] = x[:, :, :1, :1]  # a patch of one colour
    model = tiny(3)
    y = model(x).argmax(1)  # classified correctly: the attack must move
    eps = 0.06
    attack = create_eval_attack("recolor", iterations=8, lr=0.01, space="rgb", resolution=(4, 5, 6))
    adv, grid = attack.attack(model, x, y, eps)
    ident = attack.identity(2, 3, "cpu")
    assert (grid - ident).abs().max() <= eps + 1e-6 and (adv - x).abs().max() > 1e-3
    for i in range(2):
        for h, w in [(0, 0), (5, 6), (7, 2)]:
            want = trilinear(grid[i].numpy(), x[i, :, h, w].numpy())
            np.testing.assert_allclose(adv[i, :, h, w].numpy(), np.clip(want, 0, 1), atol=1e-5)
    luv = create_eval_attack("recolor", iterations=5, lr=0.01)
    adv, _ = luv.attack(model, x, y, eps)
    patch = adv[:, :, :4, :4].flatten(2)
    assert torch.allclose(patch, patch[:, :, :1].expand_as(patch), atol=1e-6)  # same colour in, same out


def bilinear_warp(img, flow):
    """grid_sample(align_corners=False, border) by hand: pixel (h, w) reads x at its centre moved by flow."""
    c, H, W = img.shape
    out = np.zeros_like(img)
    for h in range(H):
        for w in range(W):
            gx = (2 * w + 1) / W - 1 + flow[h, w, 0]
            gy = (2 * h + 1) / H - 1 + flow[h, w, 1]
            px = np.clip(((gx + 1) * W - 1) / 2, 0, W - 1)
            py = np.clip(((gy + 1) * H - 1) / 2, 0, H - 1)
            x0, y0 = int(np.floor(px)), int(np.floor(py))
            x1, y1 = min(x0 + 1, W - 1), min(y0 + 1, H - 1)
            fx, fy = px - x0, py - y0
            out[:, h, w] = ((1 - fx) * (1 - fy) * img[:, y0, x0] + fx * (1 - fy) * img[:, y0, x1]
                            + (1 - fx) * fy * img[:, y1, x0] + fx * fy * img[:, y1, x1])
    return out


def test_stadv_only_moves_pixels_along_a_bounded_flow_field():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    model = tiny()
    y = model(x).argmax(1)
    eps = 0.2
    adv, flow = create_eval_attack("stadv", iterations=10).attack(model, x, y, eps)
    assert flow.abs().max() <= eps + 1e-6 and flow.abs().max() > 1e-3
    for i in range(3):
        np.testing.assert_allclose(adv[i].numpy(), bilinear_warp(x[i].numpy(), flow[i].numpy()), atol=1e-5)


@pytest.mark.parametrize("name", ["recolor", "stadv"])
def test_non_lp_attacks_run_only_under_their_own_threat(name):
    from igdm_kit._recipe.specs import resolve

    with pytest.raises(RecipeError, match="has no Linf version"):
        resolve([name], "Linf")
    assert resolve([name], "ReColor" if name == "recolor" else "StAdv")[0].name == name


# -- perceptual attacks ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alexnet_cifar(tmp_path_factory):
    """A CIFAR AlexNet backbone's weights (random), saved as perceptual-advex saves alexnet_cifar.pt."""
    from igdm_kit_plugins.eval_attacks.lpips import features_net

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "alexnet_cifar.pt"
    torch.save({"model": {f"model.features.{k}": v for k, v in features_net(cifar=True).state_dict().items()}}, path)
    return str(path)


def lpips_by_hand(features, a, b):
    """d(a, b) = ‖φ(a) − φ(b)‖₂: activations after each ReLU stage, unit norm over channels, ÷ √(H·W)."""
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    total = torch.zeros(a.shape[0])
    ha, hb = (a.expand(-1, 3, -1, -1) - mean) / std, (b.expand(-1, 3, -1, -1) - mean) / std
    for i, layer in enumerate(features):
        ha, hb = layer(ha), layer(hb)
        if i in (1, 4, 7, 9, 11):  # after each ReLU
            na = ha / (ha.norm(dim=1, keepdim=True) + 1e-10) / math.sqrt(ha.shape[2] * ha.shape[3])
            nb = hb / (hb.norm(dim=1, keepdim=True) + 1e-10) / math.sqrt(hb.shape[2] * hb.shape[3])
            total += (na - nb).pow(2).flatten(1).sum(1)
    return total.sqrt()


@pytest.mark.parametrize("name", ["ppgd", "lpa"])
def test_perceptual_attacks_stay_in_the_lpips_ball(name, alexnet_cifar):
    from igdm_kit_plugins.eval_attacks.lpips import load_lpips

    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    model = tiny(3, 16)
    y = model(x).argmax(1)
    attack = create_eval_attack(name, lpips_weights=alexnet_cifar, iterations=4,
                                **({"rounds": 2} if name == "lpa" else {}))
    lp = load_lpips(alexnet_cifar, "cpu")
    eps = 0.5
    adv = attack.attack(model, lp, x, y, eps)
    d = lpips_by_hand(lp.features, x, adv)
    assert d.max() <= eps + 1e-4 and d.max() > 0.05 and adv.min() >= 0 and adv.max() <= 1


def test_perceptual_attacks_need_their_weights_file(tmp_path):
    with pytest.raises(IgdmKitError, match="lpips_weights"):
        create_eval_attack("ppgd")
    attack = create_eval_attack("lpa", lpips_weights=str(tmp_path / "missing.pt"))
    with pytest.raises(IgdmKitError, match="missing.pt.*do not exist"):
        attack.robust(tiny(), torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), Capture(Threat("LPIPS", 0.5)))
