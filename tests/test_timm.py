"""timm architectures as students and teachers (#23): built for the dataset's classes and channels, trained
through ``igdm-kit run``, rebuilt by ``load_model`` from the checkpoint alone, started from local weights;
bad names and hub names are one line. Skips without the extra."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

timm = pytest.importorskip("timm", reason="pip install 'igdm-kit[timm]'")

from igdm_kit import _recipe as R  # noqa: E402
from igdm_kit.errors import CheckpointError, RecipeError  # noqa: E402
from igdm_kit.factories import create_model  # noqa: E402

TIMM_STUDENT = TINY.replace('model = "small-cnn"\nwidth = 4', 'model = "timm"\narch = "resnet10t"')


def test_a_timm_student_trains_and_load_model_rebuilds_it(tmp_path, write_recipe, cli):
    import igdm_kit

    res = cli("run", write_recipe(TIMM_STUDENT), "--output", tmp_path / "run")
    assert res.code == 0, res.err
    model = igdm_kit.load_model(tmp_path / "run" / "model.safetensors")  # from the checkpoint alone
    x = torch.rand(4, 1, 8, 8)
    # the oracle: timm's own network with the checkpoint's weights (igdm-kit's wrapper: normalize + net)
    ref = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    ref.load_state_dict({k.removeprefix("net."): v for k, v in model.state_dict().items() if k.startswith("net.")})
    model.eval(), ref.eval()
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))  # digits have no mean/std: the normalization is the identity


def test_local_weights_start_the_model_exactly(tmp_path):
    from safetensors.torch import save_file

    src = timm.create_model("resnet10t", num_classes=10, in_chans=3).eval()
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = src(x)
        for f in ("w.safetensors", "w.pth"):
            m = create_model("timm", num_classes=10, in_channels=3, image_size=32, arch="resnet10t",
                             checkpoint=str(tmp_path / f)).eval()
            assert torch.equal(m(x), want)
    with pytest.raises(CheckpointError, match="do not fit"):  # 10 classes' weights for a 5-class model
        create_model("timm", num_classes=5, in_channels=3, image_size=32, arch="resnet10t",
                     checkpoint=str(tmp_path / "w.safetensors"))


@pytest.mark.parametrize(("arch", "words"), [("resnet181", "did you mean 'resnet18'"),
                                             ("hf-hub:timm/resnet18.a1_in1k", "never downloads"),
                                             ("resnet18.a1_in1k", "never downloads")])
def test_bad_and_hub_names_are_one_line(arch, words, write_recipe):
    with pytest.raises(RecipeError, match=words) as exc:
        R.load(write_recipe(TIMM_STUDENT.replace('arch = "resnet10t"', f'arch = "{arch}"')))
    assert "student" in str(exc.value.path or exc.value.message)
