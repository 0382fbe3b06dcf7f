"""Where the time goes: fcosdet vs torchvision's FCOS, stage by stage, one JSON object (issue 10).

The profile the speed benchmark (benchmarks/speed_vs_torchvision.py) points to when a target is
missed. Both models at ResNet-50, random weights, on the same inputs, the two sides alternating
run by run; each figure is the median over --repeats runs after one warm-up, in seconds.

predict (batch 1, an 800 x 1216 photo, fcosdet's default fast fp32 Detector vs torchvision
fcos_resnet50_fpn in eval mode):
    prepare    decoded RGB photo -> resized, normalised, padded batch (fcosdet: the Detector's
               transform + pad_images; torchvision: its GeneralizedRCNNTransform)
    backbone   ResNet-50 C3..C5
    fpn        P3..P7
    head       the two towers and the prediction convs on every level
    decode_nms decoding, thresholds, top-k and class-aware NMS (fcosdet: FCOSPostProcessor.detect;
               torchvision: anchors + postprocess_detections)
    rescale    boxes back to the photo's frame, one dict per image

train (batch 2, 800 x 1216, fcos_r50_1x as `fcosdet train` runs it -- build.training_model, fused SGD,
channels_last images -- vs torchvision fcos_resnet50_fpn as built with random weights, the
speed benchmark's step):
    forward    the network (torchvision: + its transform)
    loss       target assignment + the three losses
    backward
    optimizer  the SGD step (zero_grad + step)

    python benchmarks/profile_speed.py [--repeats 5] [--sections predict train] [--quick] [--out FILE]

--quick: 128 x 192 inputs, 1 repeat (to check that the script runs). Within a run the stages of one
side add up to about its total (`sum`); compare the two sides' stages, not absolute times.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

Stages = dict[str, float]


def timed_stages(stages: list[tuple[str, Callable[[Any], Any]]]) -> Callable[[], Stages]:
    """A run of a chain of stages (each takes the previous one's result) -> seconds per stage."""
    def run() -> Stages:
        seconds, value = {}, None
        for name, fn in stages:
            start = time.perf_counter()
            value = fn(value)
            seconds[name] = time.perf_counter() - start
        return seconds
    return run


def race(sides: dict[str, Callable[[], Stages]], repeats: int) -> dict[str, Stages]:
    """One warm-up per side, then `repeats` alternating rounds -> the median of each stage and of the sum."""
    runs: dict[str, list[Stages]] = {name: [] for name in sides}
    for fn in sides.values():
        fn()
    for _ in range(repeats):
        for name, fn in sides.items():
            runs[name].append(fn())
    result = {}
    for name, stage_runs in runs.items():
        medians = {k: statistics.median(r[k] for r in stage_runs) for k in stage_runs[0]}
        medians["sum"] = statistics.median(sum(r.values()) for r in stage_runs)
        result[name] = medians
    return result


def fcosdet_predict_stages(weights: Path, image) -> Callable[[], Stages]:
    from fcosdet.data.loader import pad_images
    from fcosdet.deploy.predictor import Detector
    from fcosdet.model.postprocess import Detections, split_per_image
    det = Detector.from_file(weights)  # the default: fast fp32 (BatchNorm folded, channels_last)
    backend = det.backend
    model, post = backend.graph.model, backend.graph.postprocessor

    def prepare(_):
        x, target = det._prepare(image)  # (3, h, w) normalised
        batch = pad_images([x]).contiguous(memory_format=torch.channels_last)  # (1, 3, Hp, Wp)
        return batch, [target["img_size"]], [target["orig_size"]]

    def backbone(v):
        batch, sizes, orig = v
        return model.backbone(batch), sizes, orig

    def fpn(v):
        return (model.fpn(v[0]),) + v[1:]

    def head(v):
        return (model.head(v[0]),) + v[1:]

    def decode_nms(v):
        outputs, sizes, orig = v
        dets = post.detect(outputs, torch.tensor([list(s) for s in sizes], dtype=torch.int64))
        return Detections(*(t.cpu() for t in dets)), sizes, orig

    def rescale(v):
        return split_per_image(*v)
    stages = [("prepare", prepare), ("backbone", backbone), ("fpn", fpn), ("head", head),
              ("decode_nms", decode_nms), ("rescale", rescale)]
    return lambda: torch.inference_mode()(timed_stages(stages))()


def torchvision_predict_stages(model, image) -> Callable[[], Stages]:
    from torchvision.transforms.functional import to_tensor

    def prepare(_):
        x = to_tensor(image)  # (3, H, W) 0..1
        images, _ = model.transform([x])
        return images, [x.shape[-2:]]

    def backbone(v):
        images, orig = v
        return model.backbone.body(images.tensors), images, orig

    def fpn(v):
        return list(model.backbone.fpn(v[0]).values()), v[1], v[2]

    def head(v):
        feats, images, orig = v
        return model.head(feats), feats, images, orig

    def decode_nms(v):
        # torchvision FCOS.forward's inference half: anchors, split per level, postprocess_detections
        head_out, feats, images, orig = v
        anchors = model.anchor_generator(images, feats)
        per_level = [f.size(2) * f.size(3) for f in feats]
        split_out = {k: list(t.split(per_level, dim=1)) for k, t in head_out.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        return model.postprocess_detections(split_out, split_anchors, images.image_sizes), images, orig

    def rescale(v):
        dets, images, orig = v
        return model.transform.postprocess(dets, images.image_sizes, orig)
    stages = [("prepare", prepare), ("backbone", backbone), ("fpn", fpn), ("head", head),
              ("decode_nms", decode_nms), ("rescale", rescale)]
    return lambda: torch.inference_mode()(timed_stages(stages))()


def predict_section(args, folder: Path) -> dict[str, Any]:
    from speed_vs_torchvision import QUICK_HW, fcosdet_weights, photo
    from torchvision.models.detection import fcos_resnet50_fpn
    size = QUICK_HW if args.quick else (800, 1216)
    weights = fcosdet_weights("fcos_r50_1x", folder, scale=(max(size), min(size)) if args.quick else None)
    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).eval()
    if args.quick:
        tv.transform.min_size, tv.transform.max_size = (min(size),), max(size)
    image = photo(*size)
    seconds = race({"torchvision": torchvision_predict_stages(tv, image),
                    "fcosdet": fcosdet_predict_stages(weights, image)}, args.repeats)
    return {"image_hw": list(size), "batch": 1, "seconds": seconds}


def train_inputs(height: int, width: int):
    torch.manual_seed(0)
    boxes = [torch.tensor([[40.0, 60, 300, 400], [500, 100, 700, 380], [20, 20, 90, 70]]) * (height / 800)
             for _ in range(2)]
    labels = [torch.tensor([1, 5, 17]) for _ in range(2)]
    images = torch.rand(2, 3, height, width)  # (B, 3, H, W)
    return images, boxes, labels


def fcosdet_train_stages(images, boxes, labels) -> Callable[[], Stages]:
    from fcosdet.engine.optim import build_optimizer
    from fcosdet.model.build import build_criterion, build_model, training_model, uses_channels_last
    from fcosdet.presets import preset
    cfg = preset("fcos_r50_1x")
    cpu = torch.device("cpu")
    model = training_model(build_model(cfg.model).train(), cfg.train, cpu)
    criterion = build_criterion(cfg.model)
    optimizer = build_optimizer(model, lr=1e-4, momentum=0.9, fused=True)
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]
    x = images.contiguous(memory_format=torch.channels_last) if uses_channels_last(cfg.train, cpu) else images
    stages = [("forward", lambda _: model(x)),
              ("loss", lambda out: sum(criterion(out, targets).values())),
              ("backward", lambda loss: loss.backward()),
              ("optimizer", lambda _: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))]
    return timed_stages(stages)


def torchvision_train_stages(images, boxes, labels) -> Callable[[], Stages]:
    from torchvision.models.detection import fcos_resnet50_fpn
    height, width = images.shape[-2:]
    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).train()
    tv.transform.min_size, tv.transform.max_size = (height,), max(width, 1333)
    optimizer = torch.optim.SGD([p for p in tv.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    targets = [{"boxes": b, "labels": lab + 1} for b, lab in zip(boxes, labels)]

    def forward(_):
        # torchvision FCOS.forward's training half, split at the loss
        batch, tgts = tv.transform(list(images), [dict(t) for t in targets])
        feats = list(tv.backbone(batch.tensors).values())
        return tv.head(feats), feats, batch, tgts

    def loss(v):
        head_out, feats, batch, tgts = v
        anchors = tv.anchor_generator(batch, feats)
        per_level = [f.size(2) * f.size(3) for f in feats]
        return sum(tv.compute_loss(tgts, head_out, anchors, per_level).values())
    stages = [("forward", forward), ("loss", loss), ("backward", lambda loss: loss.backward()),
              ("optimizer", lambda _: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))]
    return timed_stages(stages)


def train_section(args) -> dict[str, Any]:
    from speed_vs_torchvision import QUICK_HW
    height, width = QUICK_HW if args.quick else (800, 1216)
    inputs = train_inputs(height, width)
    seconds = race({"torchvision": torchvision_train_stages(*inputs),
                    "fcosdet": fcosdet_train_stages(*inputs)}, args.repeats)
    return {"image_hw": [height, width], "batch": 2, "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sections", nargs="+", default=["predict", "train"], choices=["predict", "train"])
    p.add_argument("--quick", action="store_true", help="smoke test: 128 x 192 inputs, 1 repeat")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
    start = time.perf_counter()
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "repeats": args.repeats, "quick": args.quick,
                              "torch": torch.__version__}
    from speed_vs_torchvision import run_sections
    with tempfile.TemporaryDirectory() as tmp:
        sections = {"predict": lambda: predict_section(args, Path(tmp)), "train": lambda: train_section(args)}
        run_sections(sections, args.sections, result, start=start, out=args.out)


if __name__ == "__main__":
    main()
