"""Contract tests over every registered model, and architecture facts checked against independent oracles.

Oracles: published parameter counts of the CIFAR architectures; the public state-dict layouts of the
TRADES/RobustBench and DeepMind WideResNets, written out here from their naming scheme; and a numpy
re-implementation (explicit loops) of one DeepMind and one TRADES WRN block, including TensorFlow "SAME"
padding for strided convolutions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import model_params

import igdm_kit
from igdm_kit.factories import list_models

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
#: Small options for the contract tests (the generic WRN's defaults are the WRN-28-10 tested anyway).
TINY = {"wideresnet": {"depth": 10, "widen_factor": 1}, "small-cnn": {"width": 8}, "timm": {"arch": "resnet10t"}}
BIG = {"wrn-34-10", "wrn-28-10"}


def build(name: str, *, num_classes=5, in_channels=3, image_size=16, mean=None, std=None, **options):
    opts = {**TINY.get(name, {}), **options}
    return igdm_kit.create_model(name, num_classes=num_classes, in_channels=in_channels,
                                 image_size=image_size, mean=mean, std=std, **opts)


def test_registry_lists_the_paper_models():
    names = set(list_models())
    assert {"small-cnn", "resnet18", "preactresnet18", "mobilenetv2", "wrn-34-10", "wrn-28-10",
            "wideresnet"} <= names


@pytest.mark.parametrize("name", model_params())
def test_forward_backward_all_parameters_get_gradients(name):
    torch.manual_seed(0)
    model = build(name, mean=MEAN, std=STD).train()
    batch = 1 if name in BIG else 2
    x = torch.rand(batch, 3, 16, 16, requires_grad=True)
    y = torch.randint(0, 5, (batch,))
    out = model(x)
    assert out.shape == (batch, 5) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, y).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    # Attacks need the input gradient, and it must not vanish.
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", model_params())
def test_normalization_is_inside_the_model(name):
    """A model built with mean/std equals the same network without normalization fed (x − mean)/std."""
    torch.manual_seed(1)
    with_norm = build(name, mean=MEAN, std=STD)
    calibrate_bn(with_norm, torch.rand(4, 3, 16, 16))  # fresh running stats would wash the input out
    plain = build(name).eval()
    # Same weights: copy every network tensor (the normalization buffers are the only difference).
    net_state = {k: v for k, v in with_norm.state_dict().items() if not k.startswith("normalize.")}
    plain.load_state_dict(net_state, strict=True)
    x = torch.rand(2, 3, 16, 16)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        a = with_norm(x)
        b = plain((x - mean) / std)
        c = plain(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-4)  # the normalization really changes something


@pytest.mark.parametrize("name", ["small-cnn", "resnet18", "preactresnet18", "mobilenetv2"])
def test_one_channel_inputs_and_other_sizes(name):
    model = build(name, num_classes=3, in_channels=1, image_size=8).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)


def test_tiny_imagenet_resolution_keeps_the_fixed_pooling_window():
    """64×64 inputs (Tiny-ImageNet): the AT codebases keep the 4×4 pooling window, leaving a 2×2 grid whose
    2048 features (channel-major, as ``view(N, -1)`` flattens them) feed the head."""
    torch.manual_seed(0)
    model = build("preactresnet18", num_classes=200, image_size=64).eval()
    calibrate_bn(model, torch.rand(2, 3, 64, 64))
    assert model.net.linear.in_features == 2048
    net, x = model.net, torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        h = net.layer4(net.layer3(net.layer2(net.layer1(net.conv1(x)))))
        h = torch.relu(net.bn(h))
        assert h.shape[-2:] == (8, 8)
        feats = torch.nn.functional.avg_pool2d(h, 4).reshape(1, -1)  # the reference's fixed window
        torch.testing.assert_close(model(x), net.linear(feats))


def test_head_sizes_at_64_pixels_follow_the_fixed_window_convention():
    expected = {"resnet18": 512 * 4, "mobilenetv2": 1280 * 4}
    for name, features in expected.items():
        assert build(name, image_size=64).net.linear.in_features == features
    # RiFT's Tiny-ImageNet WRN-34-10 (the paper's teacher) state dict: sub_block1 and a 2560-feature head.
    rift = igdm_kit.create_model("wrn-34-10", num_classes=200, image_size=64, sub_block1=True)
    layout = trades_keys(34, 10, 200, sub_block1=True)
    layout["fc.weight"] = (200, 640 * 4)
    assert net_layout(rift) == layout


# -- published parameter counts (CIFAR-10 heads) ------------------------------------------------------------
RESNET18_CIFAR10 = 11_173_962  # pytorch-cifar ResNet18
PARAMS = {
    "resnet18": RESNET18_CIFAR10,
    # ResNet-18 minus the BatchNorms it has and PreActResNet-18 lacks (stem 64, three shortcut BNs
    # 128+256+512, block BNs over out-channels) plus those it adds (block BNs over in-channels, final 512):
    # 2·(64 + 896 + 3840) − 2·(3392 + 512) = 1,792 fewer parameters.
    "preactresnet18": RESNET18_CIFAR10 - 1_792,
    "mobilenetv2": 2_296_922,   # pytorch-cifar MobileNetV2
    "wrn-34-10": 46_160_474,    # TRADES WRN-34-10
    "wrn-28-10": 36_479_194,    # WRN-28-10
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_match_published_architectures(name):
    model = igdm_kit.create_model(name, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


# -- WideResNet layouts ---------------------------------------------------------------------------------
def trades_keys(depth: int, k: int, classes: int, sub_block1: bool = False) -> dict[str, tuple]:
    """Parameter/buffer names and shapes of the TRADES/RobustBench WideResNet, written from its scheme."""
    n, ch = (depth - 4) // 6, (16, 16 * k, 32 * k, 64 * k)
    keys: dict[str, tuple] = {"conv1.weight": (16, 3, 3, 3)}

    def bn(prefix, c):
        keys.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                     f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    groups = [("block1", ch[0], ch[1])] + ([("sub_block1", ch[0], ch[1])] if sub_block1 else []) + \
        [("block2", ch[1], ch[2]), ("block3", ch[2], ch[3])]
    for g, cin, cout in groups:
        for i in range(n):
            p, c0 = f"{g}.layer.{i}", cin if i == 0 else cout
            bn(f"{p}.bn1", c0)
            keys[f"{p}.conv1.weight"] = (cout, c0, 3, 3)
            bn(f"{p}.bn2", cout)
            keys[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            if c0 != cout:
                keys[f"{p}.convShortcut.weight"] = (cout, c0, 1, 1)
    bn("bn1", ch[3])
    keys.update({"fc.weight": (classes, ch[3]), "fc.bias": (classes,)})
    return keys


def deepmind_keys(depth: int, k: int, classes: int) -> dict[str, tuple]:
    """Names and shapes of DeepMind's WideResNet (RobustBench DMWideResNet), without its mean/std."""
    n, ch = (depth - 4) // 6, (16, 16 * k, 32 * k, 64 * k)
    keys: dict[str, tuple] = {"init_conv.weight": (16, 3, 3, 3)}

    def bn(prefix, c):
        keys.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                     f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    for g, (cin, cout) in enumerate(((ch[0], ch[1]), (ch[1], ch[2]), (ch[2], ch[3]))):
        for i in range(n):
            p, c0 = f"layer.{g}.block.{i}", cin if i == 0 else cout
            bn(f"{p}.batchnorm_0", c0)
            keys[f"{p}.conv_0.weight"] = (cout, c0, 3, 3)
            bn(f"{p}.batchnorm_1", cout)
            keys[f"{p}.conv_1.weight"] = (cout, cout, 3, 3)
            if c0 != cout:
                keys[f"{p}.shortcut.weight"] = (cout, c0, 1, 1)
    bn("batchnorm", ch[3])
    keys.update({"logits.weight": (classes, ch[3]), "logits.bias": (classes,)})
    return keys


def net_layout(model) -> dict[str, tuple]:
    return {k[len("net."):]: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("net.")}


def test_wrn_34_10_has_the_trades_layout_with_and_without_sub_block1():
    assert net_layout(igdm_kit.create_model("wrn-34-10", num_classes=10)) == trades_keys(34, 10, 10)
    with_sub = igdm_kit.create_model("wrn-34-10", num_classes=100, sub_block1=True)
    assert net_layout(with_sub) == trades_keys(34, 10, 100, sub_block1=True)


def test_silu_wrn_28_10_has_the_deepmind_layout():
    model = igdm_kit.create_model("wrn-28-10", num_classes=100, activation="silu")
    assert net_layout(model) == deepmind_keys(28, 10, 100)
    assert isinstance(model.net.act, torch.nn.SiLU)
    relu = igdm_kit.create_model("wrn-28-10", num_classes=10)
    assert net_layout(relu) == trades_keys(28, 10, 10)


def test_generic_wideresnet_options_are_validated():
    from igdm_kit.errors import IgdmKitError

    with pytest.raises(IgdmKitError, match="6n"):
        igdm_kit.create_model("wideresnet", depth=30)
    with pytest.raises(IgdmKitError, match="sub_block1"):
        igdm_kit.create_model("wrn-28-10", activation="silu", sub_block1=True)
    small = igdm_kit.create_model("wideresnet", depth=16, widen_factor=2, layout="deepmind")
    assert net_layout(small) == deepmind_keys(16, 2, 10)


# -- numpy oracle of one block ------------------------------------------------------------------------------
def np_conv(x, w, stride, pad):
    """Cross-correlation with explicit loops; ``pad`` = (top, bottom, left, right) zero padding."""
    c, h, wd = x.shape
    xp = np.zeros((c, h + pad[0] + pad[1], wd + pad[2] + pad[3]))
    xp[:, pad[0]:pad[0] + h, pad[2]:pad[2] + wd] = x
    o, _, kh, kw = w.shape
    oh, ow = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    out = np.zeros((o, oh, ow))
    for oc in range(o):
        for i in range(oh):
            for j in range(ow):
                out[oc, i, j] = np.sum(w[oc] * xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw])
    return out


def np_bn(x, bn):
    g = bn.weight.detach().double().numpy()[:, None, None]
    b = bn.bias.detach().double().numpy()[:, None, None]
    m = bn.running_mean.double().numpy()[:, None, None]
    v = bn.running_var.double().numpy()[:, None, None]
    return (x - m) / np.sqrt(v + bn.eps) * g + b


def silu(x):
    return x / (1 + np.exp(-x))


def relu(x):
    return np.maximum(x, 0)


def tf_same(size, k, s):
    """TensorFlow 'SAME' padding (before, after) for one axis."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def calibrate_bn(model, x):
    """Running statistics = the statistics of one batch (so eval-mode outputs depend on the input)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    for m in bns:
        m.momentum = 0.1
    model.eval()


def randomize_bn(module):
    g = torch.Generator().manual_seed(3)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("stride", [1, 2])
def test_deepmind_block_matches_a_loop_oracle_with_tf_same_padding(stride):
    from igdm_kit_plugins.models.wide_resnet import DeepMindBlock

    torch.manual_seed(0)
    block = DeepMindBlock(2, 3, stride, "silu").double().eval()
    randomize_bn(block)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        got = block(x)[0].numpy()
    xn = x[0].numpy()
    pre = silu(np_bn(xn, block.batchnorm_0))
    ph, pw = tf_same(6, 3, stride), tf_same(6, 3, stride)
    h = np_conv(pre, block.conv_0.weight.detach().double().numpy(), stride, ph + pw)
    h = np_conv(silu(np_bn(h, block.batchnorm_1)), block.conv_1.weight.detach().double().numpy(), 1,
                (1, 1, 1, 1))
    short = np_conv(pre, block.shortcut.weight.detach().double().numpy(), stride, (0, 0, 0, 0))
    np.testing.assert_allclose(got, h + short, rtol=1e-10, atol=1e-10)


def test_trades_block_matches_a_loop_oracle():
    from igdm_kit_plugins.models.wide_resnet import TradesBlock

    torch.manual_seed(0)
    block = TradesBlock(2, 3, 2, "relu").double().eval()
    randomize_bn(block)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        got = block(x)[0].numpy()
    pre = relu(np_bn(x[0].numpy(), block.bn1))
    h = np_conv(pre, block.conv1.weight.detach().double().numpy(), 2, (1, 1, 1, 1))
    h = np_conv(relu(np_bn(h, block.bn2)), block.conv2.weight.detach().double().numpy(), 1, (1, 1, 1, 1))
    short = np_conv(pre, block.convShortcut.weight.detach().double().numpy(), 2, (0, 0, 0, 0))
    np.testing.assert_allclose(got, h + short, rtol=1e-10, atol=1e-10)


def test_wide_resnets_use_the_reference_initialization():
    """Zagoruyko's init, kept by TRADES and DeepMind: conv weights N(0, 2/(k²·out)), BN γ=1 β=0."""
    torch.manual_seed(0)
    model = igdm_kit.create_model("wideresnet", depth=16, widen_factor=4, num_classes=10)
    conv = model.net.block3.layer[1].conv2  # 256→256 3×3: 589,824 weights, a tight estimate of the std
    expected = (2.0 / (3 * 3 * 256)) ** 0.5
    assert abs(conv.weight.std().item() - expected) < 0.01 * expected
    assert abs(conv.weight.mean().item()) < 0.01 * expected
    bn = model.net.bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0) and torch.all(model.net.fc.bias == 0)
