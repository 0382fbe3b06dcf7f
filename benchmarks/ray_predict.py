"""The Ray Data recipe at a few hundred images: `read_images` + `map_batches(RayDetector, ...)` on a
local Ray instance (ray.init(num_cpus=2)) over mixed-size shared-data images, checked against
`fcosdet predict --batch-size 1` on the same files. Prints one JSON object.

    .venv/bin/python benchmarks/ray_predict.py [--model FILE] [--coco128 256] [--aquarium 64] [--out FILE]

Without --model: a tiny random-weights model (data.scale 224x160; the figures are about the recipe,
not the detector). Equality: per image the same number of detections, the same category ids,
scores within 2e-5 and COCO boxes within 0.02 px of predictions.json (batched convolutions round
differently from one image at a time, ~1e-4 px).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report_json import emit  # noqa: E402

from fcosdet.cli.predict import predict_files  # noqa: E402
from fcosdet.deploy.ray_data import RayDetector, read_images, require_ray  # noqa: E402
from fcosdet.engine.evaluation.coco import coco_boxes  # noqa: E402
from fcosdet.io.model_file import ModelFile  # noqa: E402
from fcosdet.model.build import build_model  # noqa: E402
from fcosdet.presets import load_config  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TINY = ["model.depth=18", "model.fpn_channels=32", "model.feat_channels=32", "model.stacked_convs=1",
        "data.scale=[224,160]", "data.multiscale_short=null", "test.max_per_img=12"]


def tiny_model(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = load_config("fcos_r18_cpu", TINY)
    cfg.model.num_classes = 3
    model = build_model(cfg.model)
    with torch.no_grad():  # scores spread over (0, 1), boxes of a few strides
        model.head.conv_cls.bias.fill_(-1.0)
        model.head.conv_cls.weight.mul_(10.0)
        model.head.conv_reg.weight.mul_(3.0)
        model.head.conv_reg.bias.uniform_(1.0, 3.0)
    ModelFile(model=model.state_dict(), config=cfg.to_dict(), class_names=["a", "b", "c"]).save(path)
    return path


def compare(results: dict, expected: list[dict]) -> tuple[bool, float, float]:
    """(same count and categories, max score difference, max box difference in px)."""
    dets = results["detections"]
    if len(dets) != len(expected) or [d["category_id"] for d in dets] != [e["category_id"] for e in expected]:
        return False, float("inf"), float("inf")
    if not dets:
        return True, 0.0, 0.0
    boxes = coco_boxes(torch.tensor([d["box"] for d in dets], dtype=torch.float32))  # (D, 4) xywh
    score = max(abs(d["score"] - e["score"]) for d, e in zip(dets, expected))
    box = max(abs(a - b) for got, e in zip(boxes, expected) for a, b in zip(got, e["bbox"]))
    return True, score, box


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--coco128", type=int, default=256)
    ap.add_argument("--aquarium", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the fcosdet predict side (the Ray "
                    "actor gets OMP_NUM_THREADS=num_cpus=1 from Ray)")
    ap.add_argument("--note", default="", help="what else ran on the machine (saved as 'conditions')")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    model = args.model or tiny_model(work / "tiny.pt")
    images = sorted((DATA / "coco128" / "images").glob("*.jpg"))[:args.coco128] + \
        sorted((DATA / "aquarium" / "images").glob("*.jpg"))[:args.aquarium]
    ray = require_ray()
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    init_s = time.perf_counter() - start
    ray.data.DataContext.get_current().enable_progress_bars = False
    start = time.perf_counter()
    out = read_images(images).map_batches(RayDetector, fn_constructor_kwargs={"model": model},
                                          batch_size=args.batch_size, concurrency=1, num_cpus=1,
                                          batch_format="numpy")
    rows = {row["path"]: row for row in out.iter_rows()}
    ray_s = time.perf_counter() - start
    ray.shutdown()
    start = time.perf_counter()
    coco = predict_files(model, [str(p) for p in images], out_dir=work / "predict", batch_size=1, device="cpu")
    predict_s = time.perf_counter() - start
    checks = [compare(json.loads(rows[str(p)]["results"]), [d for d in coco if d["file_name"] == str(p)])
              for p in images]
    sizes = {(json.loads(r["results"])["width"], json.loads(r["results"])["height"]) for r in rows.values()}
    report = {"benchmark": "ray_predict", "model": str(args.model or "tiny random weights, data.scale 224x160"),
              "images": len(images), "distinct_sizes": len(sizes),
              "errors": sum(bool(r["error"]) for r in rows.values()),
              "recipe": f"read_images + map_batches(RayDetector, batch_size={args.batch_size}, concurrency=1, "
                        f"num_cpus=1) on ray.init(num_cpus=2)",
              "ray_init_s": round(init_s, 1), "ray_s": round(ray_s, 1),
              "ray_images_per_s": round(len(images) / ray_s, 2),
              "fcosdet_predict_s": round(predict_s, 1), "fcosdet_predict_note": "batch size 1, drawing images too",
              "equal_images": sum(ok for ok, _, _ in checks),
              "max_score_diff": max(s for _, s, _ in checks), "max_box_diff_px": max(b for _, _, b in checks),
              "torch_threads_driver": torch.get_num_threads(), "conditions": args.note}
    emit(report, args.out)


if __name__ == "__main__":
    main()
