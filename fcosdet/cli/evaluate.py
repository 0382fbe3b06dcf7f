"""`fcosdet eval MODEL_FILE --data DATASET`: COCO mAP of a model file (.pt, .safetensors, .onnx)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fcosdet import distributed as D
from fcosdet.analysis.diagnostics import write_diagnostics
from fcosdet.cli.common import add_set_option, test_overrides
from fcosdet.cli.predict import add_slice_options, slicing_from_args
from fcosdet.console import progress, say
from fcosdet.data.build import load_split, make_loader
from fcosdet.deploy.backends import ONNX_RUNTIMES, PRECISIONS
from fcosdet.deploy.predictor import Detector
from fcosdet.deploy.slicing import Slicing
from fcosdet.engine.evaluation.coco import CocoEvaluator, format_table, save_metrics
from fcosdet.engine.loop import run_evaluation
from fcosdet.errors import UserError
from fcosdet.io.model_file import GRAPH_SUFFIXES


def add_parser(sub: Any) -> None:
    e = sub.add_parser("eval", help="COCO mAP of a checkpoint on a dataset split")
    e.add_argument("checkpoint", type=Path, help="the model file: a run's best.pt / last.pt, or an exported "
                   ".safetensors / .onnx / .pt2")
    e.add_argument("--data", help="dataset YAML or folder (default: the one the model was trained on)")
    e.add_argument("--split", default="val", help="the dataset split to evaluate on")
    e.add_argument("--out", type=Path, help="write metrics.json and detections.json here")
    e.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    e.add_argument("--workers", type=int, default=2, help="data loading processes (0: in the main process)")
    add_set_option(e, "change a test setting, e.g. --set test.nms_iou=0.6 (test.* keys; repeatable)")
    e.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: bf16 autocast (opt-in)")
    e.add_argument("--onnx-runtime", choices=ONNX_RUNTIMES, default="onnxruntime",
                   help="what runs an .onnx file")
    add_slice_options(e)
    e.set_defaults(func=lambda args: evaluate_checkpoint(
        args.checkpoint, dataset=args.data, split=args.split, out_dir=args.out, batch_size=args.batch_size,
        workers=args.workers, test_sets=args.set, precision=args.precision, onnx_runtime=args.onnx_runtime,
        slicing=slicing_from_args(args)))


def evaluate_checkpoint(checkpoint: Path, *, dataset: str | None, split: str, out_dir: Path | None,
                        batch_size: int = 2, workers: int = 2, test_sets: list[str] = (),
                        precision: str = "fp32", onnx_runtime: str = "onnxruntime",
                        slicing: Slicing | None = None) -> dict[str, Any]:
    """COCO metrics of a model file; `test_sets` ("test.nms_iou=0.6") change the test settings;
    `slicing`: sliced inference (each image's tiles and full view, `batch_size` per pass)."""
    overrides = test_overrides(list(test_sets), command="eval")
    device = D.init_from_env("auto")
    # .pt / .safetensors: BatchNorm folded (equal within float rounding); .onnx: onnxruntime or OpenVINO;
    # .xml (OpenVINO IR): OpenVINO. Graph files (fp32 or int8) run on the CPU.
    det = Detector.from_file(checkpoint, device=str(device) if checkpoint.suffix not in GRAPH_SUFFIXES else "cpu",
                             test_overrides=overrides, precision=precision, onnx_runtime=onnx_runtime)
    cfg = det.config
    cfg.data.dataset = dataset or cfg.data.dataset
    cfg.data.batch_size, cfg.data.workers = batch_size, workers
    data = load_split(cfg, split)
    if data.class_names != det.class_names:
        raise UserError(f"the dataset's classes {data.class_names[:5]} differ from the checkpoint's "
                        f"{det.class_names[:5]}; evaluate on the dataset the model was trained for")
    evaluator = CocoEvaluator(records=data.records, class_names=data.class_names)
    if slicing is None:
        metrics = run_evaluation(detect=det.detect, loader=make_loader(cfg, data, train=False), evaluator=evaluator)
    else:
        metrics = evaluate_sliced(det, data.records, evaluator, slicing=slicing, batch_size=batch_size)
    say(format_table(metrics))
    if out_dir is not None and D.is_main_process():
        _write_results(evaluator, metrics, det, data, out_dir)
    return metrics


def evaluate_sliced(det: Detector, records: list[Any], evaluator: CocoEvaluator, *, slicing: Slicing,
                    batch_size: int) -> dict[str, Any]:
    """Sliced detections of this worker's share of the records (every world_size-th), `batch_size`
    images per `Detector.predict_batch` (their tiles `batch_size` per pass), boxes in the original
    frame -> the evaluator's metrics."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    mine = records[D.rank()::D.world_size()]
    chunks = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    evaluator.reset()
    for chunk in progress(chunks, total=len(chunks), desc="eval (sliced)", enabled=D.is_main_process()):
        results = det.predict_batch([r.path for r in chunk], slicing=slicing, batch_size=batch_size)
        evaluator.process([{"image_id": r.image_id, "boxes": x.boxes, "scores": x.scores, "labels": x.labels}
                           for r, x in zip(chunk, results)])
    return evaluator.evaluate()


def _write_results(evaluator: CocoEvaluator, metrics: dict[str, Any], det: Detector, data: Any,
                   out_dir: Path) -> None:
    """metrics.json, detections.json and the diagnostics (confusion, PR curves, worst images)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_metrics(metrics, out_dir / "metrics.json")
    # detections.json is read against the evaluated annotation file: its ids (COCO) where it has
    # them (the class names match the model's), else the model file's, else label + 1
    ids = data.category_ids if data.category_ids is not None else det.category_ids
    if det.category_ids is not None and ids != det.category_ids:
        say(f"detections.json uses the category ids of {data.source} ({ids[:5]}...), not the model "
            f"file's ({det.category_ids[:5]}...): same class names, numbered differently")
    evaluator.save_results(out_dir / "detections.json", category_ids=ids)
    say(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'detections.json'}")
    diag = write_diagnostics(evaluator, out_dir)["paths"]
    say(f"wrote {diag['confusion_png'].name}, {diag.get('pr_png', Path('-')).name} (+ JSON) and "
        f"{len(diag['worst'])} worst images (ground truth | detections) to {out_dir}")
