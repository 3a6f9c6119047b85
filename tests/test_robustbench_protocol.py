"""RobustBench's ImageNet test set (issue 23): its published list of 5,000 validation images applied to a fake
validation folder, and its ``Res256Crop224`` preprocessing matched by the ``imagenet`` dataset's test images.

Oracles: RobustBench's own files (the list, ``imagenet_class_to_id_map.json`` for the labels) and its own
``robustbench.data.PREPROCESSINGS`` transform (torchvision's Resize(256) + CenterCrop(224) + ToTensor).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import igdm_kit
from igdm_kit.errors import DataError, IgdmKitError


def _robustbench_dir() -> Path:
    from igdm_kit_plugins.teachers.robustbench import package_zoo

    if package_zoo("imagenet", "Linf") is None:
        pytest.skip("the robustbench extra is not installed (pip install 'igdm-kit[robustbench]')")
    import robustbench

    return Path(robustbench.__file__).parent


def _jpeg(w: int, h: int, seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_robustbench_list_picks_its_5000_images_in_order(tmp_path):
    helper = _robustbench_dir() / "helper_files"
    entries = (helper / "imagenet_test_image_ids.txt").read_text().split()
    class_ids = json.loads((helper / "imagenet_class_to_id_map.json").read_text())
    assert len(entries) == 5000 and len(class_ids) == 1000
    data = _jpeg(8, 8, 0)
    for wnid in class_ids:
        (tmp_path / "train" / wnid).mkdir(parents=True)
        (tmp_path / "train" / wnid / "a.JPEG").write_bytes(data)
    for entry in entries + ["n01440764/ILSVRC2012_val_99999999.JPEG"]:  # plus one image not on the list
        (tmp_path / "val" / entry).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "val" / entry).write_bytes(data)
    ds = igdm_kit.create_dataset("imagenet", root=str(tmp_path), image_size=8, test_list="robustbench")
    paths, labels = ds.files("test")
    assert [f"{p.parent.name}/{p.name}" for p in paths] == entries
    assert labels == [class_ids[e.split("/")[0]] for e in entries]  # RobustBench's own class indices
    everything, _ = igdm_kit.create_dataset("imagenet", root=str(tmp_path), image_size=8).files("test")
    assert len(everything) == 5001

    (tmp_path / "val" / entries[17]).unlink()
    with pytest.raises(DataError) as err:
        ds.files("test")
    assert entries[17] in str(err.value) and "\n" not in str(err.value)


def test_listed_test_images_are_robustbenchs_res256crop224(tmp_path):
    from PIL import Image

    _robustbench_dir()
    from robustbench.data import PREPROCESSINGS

    sizes = [(300, 260), (260, 400), (256, 256)]  # landscape, portrait, square
    listed = []
    for i, (w, h) in enumerate(sizes):
        wnid = f"n0000000{i}"
        (tmp_path / "train" / wnid).mkdir(parents=True)
        (tmp_path / "train" / wnid / "a.JPEG").write_bytes(_jpeg(8, 8, i))
        (tmp_path / "val" / wnid).mkdir(parents=True)
        (tmp_path / "val" / wnid / f"v{i}.JPEG").write_bytes(_jpeg(w, h, 10 + i))
        listed.append(f"{wnid}/v{i}.JPEG")
    (tmp_path / "val" / "n00000000" / "extra.JPEG").write_bytes(_jpeg(300, 300, 99))
    order = [listed[2], listed[0], listed[1]]
    (tmp_path / "list.txt").write_text("\n".join(order) + "\n")
    ds = igdm_kit.create_dataset("imagenet", root=str(tmp_path), test_list=str(tmp_path / "list.txt"))
    x, y = ds.load("test")
    assert x.shape == (3, 3, 224, 224) and y.tolist() == [2, 0, 1]
    for i, entry in enumerate(order):
        with Image.open(tmp_path / "val" / entry) as img:
            expected = PREPROCESSINGS["Res256Crop224"](img.convert("RGB"))
        torch.testing.assert_close(x[i].float() / 255, expected, rtol=0, atol=0)


def test_bad_test_lists_are_one_line(tmp_path):
    (tmp_path / "train" / "n01").mkdir(parents=True)
    (tmp_path / "train" / "n01" / "a.JPEG").write_bytes(_jpeg(8, 8, 0))
    (tmp_path / "val" / "n01").mkdir(parents=True)
    (tmp_path / "val" / "n01" / "b.JPEG").write_bytes(_jpeg(8, 8, 1))
    for text, words in [(None, "does not exist"), ("n01/b.JPEG\nb.JPEG\n", "not <wnid>/<file name>"),
                        ("\n", "is empty"), ("n01/c.JPEG\n", "'n01/c.JPEG' of the test_list is not in")]:
        if text is not None:
            (tmp_path / "l.txt").write_text(text)
        with pytest.raises(DataError) as err:
            igdm_kit.create_dataset("imagenet", root=str(tmp_path), image_size=8,
                                    test_list=str(tmp_path / ("l.txt" if text is not None else "none.txt"))
                                    ).files("test")
        assert words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(IgdmKitError):
        igdm_kit.create_dataset("imagenet", root=str(tmp_path), test_list="")


def test_a_recipes_test_list_file_is_relative_to_the_recipe_and_robustbench_is_a_name(tmp_path, monkeypatch):
    """As every path a recipe writes; ``--set`` ones are the working directory's; "robustbench" is no file."""
    from igdm_kit import _recipe

    base = (Path(__file__).parent.parent / "recipes" / "imagenet" / "_imagenet.toml").resolve()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "child.toml").write_text(
        f'extends = "{base}"\n[data]\ntest_list = "lists/mine.txt"\n[student]\nmodel = "timm"\n'
        'options = { arch = "resnet18" }\n[method]\nname = "ard"\n')
    monkeypatch.chdir(tmp_path)
    assert _recipe.load_raw(tmp_path / "r" / "child.toml")["data"]["test_list"] == \
        str(tmp_path / "r" / "lists" / "mine.txt")
    (tmp_path / "r" / "child.toml").write_text(f'extends = "{base}"\n')
    assert _recipe.load_raw(tmp_path / "r" / "child.toml")["data"]["test_list"] == "robustbench"


def test_a_cached_test_split_is_the_lists_images_in_its_order_and_all_is_every_image(tmp_path):
    """The cache file of a list is its own (its order too: the files' fingerprint is sorted); "all" is val/."""
    for wnid in ("n01", "n02"):
        (tmp_path / "train" / wnid).mkdir(parents=True)
        (tmp_path / "train" / wnid / "a.JPEG").write_bytes(_jpeg(8, 8, 0))
        (tmp_path / "val" / wnid).mkdir(parents=True)
    for i, wnid in enumerate(("n01", "n02", "n02")):
        (tmp_path / "val" / wnid / f"v{i}.JPEG").write_bytes(_jpeg(8, 8, i))
    (tmp_path / "a.txt").write_text("n01/v0.JPEG\nn02/v1.JPEG\n")
    (tmp_path / "b.txt").write_text("n02/v1.JPEG\nn01/v0.JPEG\n")

    def labels(test_list):
        return igdm_kit.create_dataset("imagenet", root=str(tmp_path), image_size=8, test_list=test_list,
                                       cache_dir=str(tmp_path / "cache")).load("test")[1].tolist()
    assert labels(str(tmp_path / "a.txt")) == [0, 1]
    assert labels(str(tmp_path / "b.txt")) == [1, 0]
    assert labels("all") == [0, 1, 1] and labels(None) == [0, 1, 1]
    assert labels(str(tmp_path / "a.txt")) == [0, 1]


def test_a_flat_kaggle_val_folder_is_matched_by_name_and_wnid(tmp_path):
    for wnid in ("n01", "n02"):
        (tmp_path / "train" / wnid).mkdir(parents=True)
        (tmp_path / "train" / wnid / "a.JPEG").write_bytes(_jpeg(8, 8, 0))
    (tmp_path / "val").mkdir()
    for i in range(3):
        (tmp_path / "val" / f"v{i}.JPEG").write_bytes(_jpeg(8, 8, i))
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nv0,n02 1 2 3 4\nv1,n01 1 2 3 4\n"
                                                   "v2,n02 1 2 3 4\n")
    (tmp_path / "l.txt").write_text("n02/v2.JPEG\nn01/v1.JPEG\n")
    ds = igdm_kit.create_dataset("imagenet", root=str(tmp_path), image_size=8, test_list=str(tmp_path / "l.txt"))
    paths, labels = ds.files("test")
    assert [p.name for p in paths] == ["v2.JPEG", "v1.JPEG"] and labels == [1, 0]
    (tmp_path / "l.txt").write_text("n01/v2.JPEG\n")
    with pytest.raises(DataError, match="labelled another class") as err:
        ds.files("test")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["resnet18_ard", "resnet18_ard_igdm", "mobilenetv3_ard", "mobilenetv3_ard_igdm",
                                  "convnext_t_ard", "convnext_t_ard_igdm"])
def test_imagenet_recipes_pass_recipe_check(cli, name):
    from conftest import RECIPES

    pytest.importorskip("timm")
    res = cli("recipe", "check", str(RECIPES / "imagenet" / f"{name}.toml"))
    assert res.code == 0, res.err
    assert res.out.startswith("ok ") and f"imagenet/{name}.toml" in res.out


def test_eval_of_a_robustbench_imagenet_model_follows_its_protocol(cli, tmp_path):
    """``igdm-kit eval --loader robustbench --name Salman2020Do_R18 --dataset imagenet --data-opt test_list=...``:
    the listed images only, Res256Crop224, ε = 4/255 (the protocol's, no --eps given); the clean accuracy is the
    one RobustBench's own model gives on its own preprocessing of the same files."""
    from PIL import Image

    helper = _robustbench_dir() / "helper_files"
    from robustbench.data import PREPROCESSINGS

    from igdm_kit_plugins.teachers.robustbench import package_zoo

    class_ids = json.loads((helper / "imagenet_class_to_id_map.json").read_text())
    for wnid in class_ids:
        (tmp_path / "d" / "train" / wnid).mkdir(parents=True)
        (tmp_path / "d" / "train" / wnid / "a.JPEG").write_bytes(_jpeg(8, 8, 0))
    torch.manual_seed(0)
    source = package_zoo("imagenet", "Linf")["Salman2020Do_R18"]["model"]().eval()
    with torch.no_grad():  # logits that depend on the image (random BatchNorm statistics)
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save({"state_dict": source.model.state_dict()}, tmp_path / "Salman2020Do_R18.pt")
    # RobustBench's model on its own preprocessing picks each image's class; 4 images are filed under it,
    # 2 under another class: the protocol's clean accuracy is then 4 of 6.
    wnids = sorted(class_ids, key=class_ids.get)
    listed = []
    for i in range(6):
        data = _jpeg(260 + 7 * i, 300 - 5 * i, i)
        with torch.no_grad():
            guess = int(source(PREPROCESSINGS["Res256Crop224"](Image.open(io.BytesIO(data)).convert("RGB"))[None])
                        .argmax())
        wnid = wnids[guess if i < 4 else (guess + 1) % 1000]
        (tmp_path / "d" / "val" / wnid).mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / "val" / wnid / f"v{i}.JPEG").write_bytes(data)
        listed.append(f"{wnid}/v{i}.JPEG")
    (tmp_path / "d" / "val" / wnids[0]).mkdir(parents=True, exist_ok=True)
    (tmp_path / "d" / "val" / wnids[0] / "unlisted.JPEG").write_bytes(_jpeg(300, 300, 9))
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    res = cli("eval", "--model", str(tmp_path / "Salman2020Do_R18.pt"), "--loader", "robustbench", "--name",
              "Salman2020Do_R18", "--dataset", "imagenet", "--data-opt", f"root='{tmp_path / 'd'}'",
              "--data-opt", f"test_list='{tmp_path / 'list.txt'}'", "--attacks", "clean", "--no-progress", "--json")
    assert res.code == 0, res.err
    out = json.loads(res.out)["results"]
    assert out["eps"] == pytest.approx(4 / 255, abs=1e-12)
    clean = out["metrics"]["clean"]
    assert clean["total"] == 6 and clean["correct"] == 4
    err = " ".join(res.err.split())  # as one line, whatever the console's width
    assert "warning: not RobustBench's ImageNet L∞ protocol (Res256Crop224): --data-opt test_list=" in err
    assert "(the protocol's is 'robustbench'); the attacks leave out autoattack, the one its leaderboard " \
           "reports — the number is not comparable with its leaderboard" in err
    protocol = json.loads(res.out)["results"]["protocol"]
    assert protocol["followed"] is False and len(protocol["departures"]) == 2
    # no --eps: the protocol's 4/255 is what the evaluation ran at
    assert protocol["supplied"] == ["ε = 4/255", "image_size=224", "test_crop=0.875", "test_transform='resize-crop'"]
    assert protocol["departures"][1] == "the attacks leave out autoattack, the one its leaderboard reports"
    # --shifts follows it too: its ε (the larger L∞ shift is 1.5 × 4/255), the list, the preprocessing
    res = cli("eval", "--model", str(tmp_path / "Salman2020Do_R18.pt"), "--loader", "robustbench", "--name",
              "Salman2020Do_R18", "--dataset", "imagenet", "--data-opt", f"root='{tmp_path / 'd'}'",
              "--data-opt", f"test_list='{tmp_path / 'list.txt'}'", "--attacks", "clean",
              "--shift", 'threats:include=["linf"],attack="clean"', "--no-progress", "--json")
    assert res.code == 0, res.err
    shifted = json.loads(res.out)["results"]
    assert shifted["eps"] == pytest.approx(4 / 255, abs=1e-12) and shifted["n"] == 6
    assert list(shifted["rows"]) == ["Linf-6/255-clean"] and shifted["test"]["clean"]["correct"] == 4
    assert shifted["protocol"]["supplied"][0] == "ε = 4/255"


# -- the protocol eval follows (EvalProtocol from TeacherLoader.protocol) --------------------------------------

def _protocol(name: str, dataset: str, threat: str = "Linf"):
    from igdm_kit.factories import teacher_protocol

    return teacher_protocol("robustbench", {"name": name, "dataset": dataset, "threat_model": threat})


def test_each_leaderboards_protocol_from_the_built_in_table():
    """RobustBench's ``eval.py``: CIFAR at 8/255 (L2: 0.5) on the whole test split as it is; ImageNet at 4/255
    on its list, each model by its zoo entry's preprocessing (``Wong2020Fast``: ``Crop288``)."""
    cifar = _protocol("Chen2021LTD_WRN34_10", "cifar10")
    assert (cifar.threat, cifar.eps, cifar.eps_text, cifar.data_options, cifar.attack, cifar.caveat) == \
        ("Linf", 8 / 255, "8/255", {}, "autoattack", None)
    salman = _protocol("Salman2020Do_R50", "imagenet")
    assert salman.name == "RobustBench's ImageNet L∞ protocol (Res256Crop224)" and salman.eps == 4 / 255
    assert salman.data_options == {"test_list": "robustbench", "image_size": 224, "test_crop": 0.875,
                                   "test_transform": "resize-crop"}
    wong = _protocol("Wong2020Fast", "imagenet")
    assert wong.data_options == {"test_list": "robustbench", "image_size": 288, "test_transform": "crop"}


def test_the_packages_models_get_their_own_preprocessing():
    _robustbench_dir()
    assert _protocol("Liu2023Comprehensive_Swin-L", "imagenet").data_options["test_transform"] == \
        "bicubic-resize-crop"
    assert _protocol("Mo2022When_ViT-B", "imagenet").data_options == {"test_list": "robustbench",
                                                                      "image_size": 224, "test_transform": "resize"}
    xcit = _protocol("Debenedetti2022Light_XCiT-S12", "imagenet")  # its preprocessing is timm's configuration
    assert "timm's configuration" in xcit.caveat and xcit.data_options["test_transform"] == "resize-crop"
    assert _protocol("Standard_R50", "imagenet", "corruptions") is None  # no ε, no Lp protocol


def test_what_the_user_left_unset_is_the_protocols_and_what_they_set_wins_with_a_warning():
    from igdm_kit._evaluation.protocol import follow

    salman = _protocol("Salman2020Do_R50", "imagenet")
    kept = follow(salman, threat="Linf", radius=None, data_options={"root": "/d"}, limit=None,
                  attack_keys=["clean", "autoattack"])
    assert kept.radius == 4 / 255 and kept.departures == []
    assert kept.data_options == {"root": "/d", "test_list": "robustbench", "image_size": 224, "test_crop": 0.875,
                                 "test_transform": "resize-crop"}
    assert kept.supplied == ["ε = 4/255", "test_list='robustbench'", "image_size=224", "test_crop=0.875",
                             "test_transform='resize-crop'"]
    assert kept.to_json()["followed"] is True
    same = follow(salman, threat="Linf", radius=4 / 255, data_options={"image_size": 224}, limit=None,
                  attack_keys=["autoattack"])
    assert same.departures == [] and "ε = 4/255" not in same.supplied and "image_size=224" not in same.supplied
    other = follow(salman, threat="L2", radius=8 / 255, data_options={"test_transform": "crop"}, limit=100,
                   attack_keys=["pgd20"])
    assert other.radius == 8 / 255 and other.data_options["test_transform"] == "crop"  # the user's choice wins
    assert other.departures == [
        "--threat L2 (the protocol's is Linf)",  # its ε is then not compared: the threat says it all
        "--data-opt test_transform='crop' (the protocol's is 'resize-crop')",
        "--limit 100 (the protocol evaluates every one of its test images)",
        "the attacks leave out autoattack, the one its leaderboard reports"]
    assert other.to_json()["followed"] is False
    wider = follow(salman, threat="Linf", radius=8 / 255, data_options={}, limit=None, attack_keys=["autoattack"])
    assert wider.radius == 8 / 255 and wider.departures == ["ε = 8/255 (the protocol's is 4/255)"]
    l2 = follow(salman, threat="L2", radius=None, data_options={}, limit=None, attack_keys=None)
    assert l2.radius is None  # 4/255 is no L2 radius: the command's default for L2 applies
    assert "ε = 4/255" not in l2.supplied and "test_list='robustbench'" in l2.supplied
    assert l2.departures == ["--threat L2 (the protocol's is Linf)"]  # attacks not judged (None)


def test_eval_of_a_robustbench_imagenet_model_takes_its_protocol_unless_told_otherwise(cli, tmp_path):
    """No --eps, no test_list: ε = 4/255 and RobustBench's 5,000 listed images (said on stderr). A validation
    folder without them is then the one-line error naming the first missing image — or, without the
    robustbench extra, naming the extra that holds the list."""
    timm = pytest.importorskip("timm", reason="pip install 'igdm-kit[timm]'")
    for i in range(1000):
        (tmp_path / "d" / "train" / f"n{i:08d}").mkdir(parents=True)
    (tmp_path / "d" / "train" / "n00000000" / "a.JPEG").write_bytes(_jpeg(8, 8, 0))
    (tmp_path / "d" / "val" / "n00000000").mkdir(parents=True)
    (tmp_path / "d" / "val" / "n00000000" / "v.JPEG").write_bytes(_jpeg(300, 300, 1))
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), tmp_path / "Salman2020Do_R18.pt")
    res = cli("eval", "--model", str(tmp_path / "Salman2020Do_R18.pt"), "--loader", "robustbench", "--name",
              "Salman2020Do_R18", "--dataset", "imagenet", "--data-opt", f"root='{tmp_path / 'd'}'",
              "--attacks", "clean,autoattack", "--no-progress")
    assert res.code == 1
    assert ("RobustBench's ImageNet L∞ protocol (Res256Crop224): ε = 4/255, test_list='robustbench', "
            "image_size=224, test_crop=0.875, test_transform='resize-crop' (unset here, so the protocol's; its "
            "leaderboard reports autoattack)") in " ".join(res.err.split())
    assert "warning" not in res.err
    error = next(line for line in res.err.splitlines() if line.startswith("error:"))
    if package_installed():
        assert "of the test_list is not in" in error and "ILSVRC2012_val_" in error
    else:
        assert "needs RobustBench's list of its 5,000 ImageNet test images" in error


def package_installed() -> bool:
    from igdm_kit_plugins.teachers.robustbench import package_zoo

    return package_zoo("imagenet", "Linf") is not None
