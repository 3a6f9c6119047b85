"""Project the GPU-hours of one epoch of each ImageNet recipe (``recipes/imagenet/``) from the benchmark's pass
counts (issue 23).

Per training image a step runs the student on ``S`` images forward and backward and the teacher on ``T``
images forward only (``benchmarks/step_speed.py``'s counts, ``--passes`` its JSON for ARD and ARD + IGDM at
K = 2 attack steps). A forward costs F (``torch.utils.flop_counter`` on one 224×224 image), a backward 2F,
so an image costs 3·S·F_student + T·F_teacher and an epoch (the train split less the 10,000 held out for
validation) that many times over, divided by a sustained bf16 throughput ``--tflops`` (an assumption stated in
the output, not a measurement: depthwise convolutions (MobileNetV3, ConvNeXt) run well below it, so their
rows are lower bounds).

    python benchmarks/step_speed.py --methods ard,ard+igdm --attack-steps 2 --out passes.json
    python benchmarks/imagenet_cost.py --passes passes.json --tflops 100
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

TRAIN_IMAGES = 1_281_167 - 10_000  # recipes/imagenet/_imagenet.toml: val_size = 10000
STUDENTS = {"ResNet-18": "resnet18", "MobileNetV3-L": "mobilenetv3_large_100", "ConvNeXt-T": "convnext_tiny"}
TEACHER = ("Salman2020Do_R50 (ResNet-50)", "resnet50")


def forward_flops(arch: str) -> int:
    import timm

    model = timm.create_model(arch, num_classes=1000).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passes", required=True, help="step_speed.py's JSON (methods ard and ard+igdm)")
    p.add_argument("--tflops", type=float, default=100.0, help="assumed sustained bf16 TFLOP/s of the GPU")
    args = p.parse_args()
    rows = {r["method"]: r["passes"] for r in json.load(open(args.passes))["rows"] if r["variant"] == "default"}
    batch = json.load(open(args.passes))["meta"]["args"]["batch_size"]
    f_teacher = forward_flops(TEACHER[1])
    print(f"teacher {TEACHER[0]}: {f_teacher / 1e9:.2f} GFLOP/forward; {args.tflops:g} TFLOP/s assumed; "
          f"{TRAIN_IMAGES} images/epoch")
    print("| student | GFLOP/forward | method | student images / teacher images per image | GPU-hours/epoch |")
    print("|---|---|---|---|---|")
    for name, arch in STUDENTS.items():
        f_student = forward_flops(arch)
        for method, passes in rows.items():
            s, t = passes["student"]["images"] / batch, passes["teacher"]["images"] / batch
            flops = TRAIN_IMAGES * (3 * s * f_student + t * f_teacher)
            hours = flops / (args.tflops * 1e12) / 3600
            print(f"| {name} | {f_student / 1e9:.2f} | {method} | {s:g} / {t:g} | {hours:.2f} |")


if __name__ == "__main__":
    main()
