"""fcosdet vs torchvision's FCOS on ../shared/data/bccd, side by side, from scratch (CPU or GPU).

Both: ResNet-18 FPN (`--width` channels in FPN and heads, 256 as torchvision's default; 4-conv
GN heads) with GroupNorm(32) in the backbone (from scratch: frozen BN would be an identity),
short side 320 / long side <= 448, horizontal flip, batch 4, SGD lr 0.01 momentum 0.9 wd 1e-4,
linear warmup then cosine, the same epochs, evaluated by the same CocoEvaluator on val.json.
Prints one JSON object with both APs, both wall times (training plus the final evaluation, data
set-up excluded) and their ratio.

    python benchmarks/bccd_vs_torchvision.py --epochs 24 [--preset fcos_r18_cpu|fcos_r18_tricks_cpu]
        [--width 256] [--run-dir runs/bench] [--out result.json] [--skip-torchvision] [--skip-fcosdet]
        [--parallel] [--device auto|cpu|cuda] [--workers 2] [--data DIR] [--seed 0] [--set KEY=VALUE ...]

--parallel trains the two models at the same time in two processes of one thread each: on a
2-core machine that is about 1.25x the throughput of running them in turn, and both wall times
are taken under the same load.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BCCD = ROOT.parent / "shared" / "data" / "bccd"


def run_fcosdet(args, run_dir: Path) -> dict:
    from fcosdet.cli.train import train
    from fcosdet.presets import load_config
    cfg = load_config(args.preset, args.set)
    cfg.data.dataset = str(args.data)
    cfg.train.device, cfg.train.seed = args.device, args.seed
    cfg.model.fpn_channels = cfg.model.feat_channels = args.width
    cfg.data.scale, cfg.data.multiscale_short = (448, 320), None
    cfg.data.batch_size, cfg.data.workers = 4, args.workers
    cfg.train.epochs, cfg.train.eval_interval = args.epochs, args.epochs
    cfg.train.lr, cfg.train.base_batch = 0.01, 4
    cfg.train.schedule, cfg.train.warmup, cfg.train.warmup_iters = "cosine", "linear", 100
    cfg.train.log_interval = 50
    start = time.perf_counter()
    train(cfg, run_dir=run_dir, overwrite=True)
    seconds = time.perf_counter() - start
    return {"metrics": json.loads((run_dir / "metrics.json").read_text()), "seconds": seconds}


def _torchvision_model(num_classes: int, width: int) -> nn.Module:
    from torchvision.models import resnet18
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    # what resnet_fpn_backbone builds (C3-C5, P6/P7 from P5), with the FPN width as an argument
    backbone = BackboneWithFPN(resnet18(weights=None, norm_layer=lambda c: nn.GroupNorm(32, c)),
                               return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
                               in_channels_list=[128, 256, 512], out_channels=width,
                               extra_blocks=LastLevelP6P7(width, width))
    # torchvision counts background in num_classes: labels 1..C, 0 unused
    return FCOS(backbone, num_classes=num_classes + 1, min_size=320, max_size=448)


def run_torchvision(args) -> dict:
    from fcosdet.data import DetectionDataset, build_loader, build_transforms, load_dataset_spec
    from fcosdet.data.loader import EpochSampler
    from fcosdet.distributed import init_from_env
    from fcosdet.engine.optim import WarmupSchedule, build_optimizer
    torch.manual_seed(args.seed)
    device = init_from_env(args.device)  # fcosdet's rule: auto = the GPU when there is one
    train_split, val_split = load_dataset_spec(args.data, "train"), load_dataset_spec(args.data, "val")
    # fcosdet's loader resizes (to the size torchvision's transform keeps) and flips; the
    # model's own transform normalises again from [0, 1] pixels
    tf = build_transforms(train=True, scale=(448, 320), flip_prob=0.5, normalize="pytorch")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    dataset = DetectionDataset(train_split, transforms=tf)
    sampler = EpochSampler(dataset, seed=args.seed, batch_size=4)  # fcosdet's order: from (seed, epoch)
    loader = build_loader(dataset, batch_size=4, shuffle=False, num_workers=args.workers, sampler=sampler,
                          seed=args.seed)
    model = _torchvision_model(len(train_split.class_names), args.width).to(device)
    mean, std = mean.to(device), std.to(device)
    opt = build_optimizer(model, lr=0.01, bias_lr_mult=1.0, bias_decay_mult=1.0)
    total = args.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupSchedule(
        iters_per_epoch=len(loader), total_iters=total, warmup="linear", warmup_iters=100, schedule="cosine"))
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        sampler.set_epoch(epoch)
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            images = [(im * std + mean)[:, : t["img_size"][0], : t["img_size"][1]]
                      for im, t in zip(batch.images, batch.targets)]
            targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in batch.targets]
            loss = sum(model(images, targets).values())
            if not math.isfinite(loss.item()):
                raise RuntimeError("torchvision FCOS diverged")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"torchvision epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    metrics = _evaluate_torchvision(model, val_split, mean, std, args.workers)
    return {"metrics": metrics, "seconds": time.perf_counter() - start}  # training + evaluation, as fcosdet's


@torch.no_grad()
def _evaluate_torchvision(model, split, mean, std, workers: int) -> dict:
    from fcosdet.data import DetectionDataset, build_loader, build_transforms
    from fcosdet.engine.evaluation.coco import CocoEvaluator
    model.eval()
    model.score_thresh, model.nms_thresh, model.detections_per_img = 0.05, 0.6, 100
    tf = build_transforms(train=False, scale=(448, 320), normalize="pytorch")
    loader = build_loader(DetectionDataset(split, transforms=tf), batch_size=4, shuffle=False, num_workers=workers)
    ev = CocoEvaluator(records=split.records, class_names=split.class_names)
    for batch in loader:
        batch = batch.to(mean.device)
        images = [(im * std + mean)[:, : t["img_size"][0], : t["img_size"][1]]
                  for im, t in zip(batch.images, batch.targets)]
        for t, d in zip(batch.targets, model(images)):
            (h, w), (oh, ow) = t["img_size"], t["orig_size"]
            keep = d["labels"] > 0  # label 0 is torchvision's unused background class
            boxes = d["boxes"][keep] * d["boxes"].new_tensor([ow / w, oh / h, ow / w, oh / h])  # (D, 4) original pixels
            ev.process([{"image_id": t["image_id"], "boxes": boxes.cpu(), "scores": d["scores"][keep].cpu(),
                         "labels": d["labels"][keep].cpu() - 1}])
    return ev.evaluate()


def run_parallel(args) -> dict:
    """Both models at once, each in a child process with one thread; returns the merged JSON."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    common = [sys.executable, __file__, "--epochs", str(args.epochs), "--preset", args.preset,
              "--width", str(args.width), "--data", str(args.data), "--device", args.device,
              "--workers", str(args.workers), "--seed", str(args.seed)] + [f"--set={s}" for s in args.set]
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / "fcosdet.json", Path(tmp) / "torchvision.json"]
        keep = ["--run-dir", str(args.run_dir)] if args.run_dir else []
        children = [subprocess.Popen(common + ["--skip-torchvision", "--out", str(outs[0])] + keep, env=env),
                    subprocess.Popen(common + ["--skip-fcosdet", "--out", str(outs[1])], env=env)]
        if any(child.wait() for child in children):
            raise SystemExit("a benchmark child process failed; see its output above")
        merged = {}
        for out in outs:
            merged.update(json.loads(out.read_text()))
    return merged


def _figures(name: str, run: dict) -> dict:
    """One model's JSON fields: AP, AP50, wall seconds and per-class AP, prefixed by its name."""
    m = run["metrics"]
    return {f"{name}_AP": round(m["AP"], 4), f"{name}_AP50": round(m["AP50"], 4),
            f"{name}_seconds": round(run["seconds"], 1),
            f"{name}_per_class": {k: v if v is None else round(v, 4) for k, v in m["per_class"].items()}}


def _device_name(device: str) -> str:
    from fcosdet.distributed import init_from_env
    resolved = init_from_env(device)
    return torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--preset", default="fcos_r18_cpu")
    ap.add_argument("--skip-torchvision", action="store_true")
    ap.add_argument("--skip-fcosdet", action="store_true")
    ap.add_argument("--width", type=int, default=256, help="FPN and head channels of both models")
    ap.add_argument("--run-dir", type=Path, help="keep fcosdet's run folder (log, metrics) here")
    ap.add_argument("--out", type=Path, help="also write the JSON result to this file")
    ap.add_argument("--parallel", action="store_true", help="train both models at once, one thread each")
    ap.add_argument("--data", type=Path, default=BCCD, help="the bccd folder (default ../shared/data/bccd)")
    ap.add_argument("--device", default="auto", help="auto (a GPU when there is one) | cpu | cuda | cuda:N")
    ap.add_argument("--workers", type=int, default=2, help="data loader processes per model")
    ap.add_argument("--seed", type=int, default=0, help="seed of both models' initialisation and data order")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of fcosdet's preset (repeatable), e.g. model.center_sampling=true")
    args = ap.parse_args()
    result = {"benchmark": "bccd_vs_torchvision", "epochs": args.epochs, "preset": args.preset,
              "seed": args.seed, "sets": args.set, "width": args.width, "parallel": args.parallel,
              "device": _device_name(args.device)}
    if args.parallel:
        result.update(run_parallel(args), parallel=True)
    if not args.skip_fcosdet and not args.parallel:
        with tempfile.TemporaryDirectory() as tmp:
            result.update(_figures("fcosdet", run_fcosdet(args, args.run_dir or Path(tmp) / "fcosdet")))
    if not args.skip_torchvision and not args.parallel:
        result.update(_figures("torchvision", run_torchvision(args)))
    if "fcosdet_AP" in result and "torchvision_AP" in result:
        result["AP_difference"] = round(result["fcosdet_AP"] - result["torchvision_AP"], 4)
        result["time_ratio"] = round(result["fcosdet_seconds"] / result["torchvision_seconds"], 3)
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
