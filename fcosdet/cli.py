"""fcosdet command line: train | eval | predict | export | demo | check-data | show-targets.

User errors (bad paths, corrupt data, wrong flags) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fcosdet", description="FCOS object detection: train, evaluate, predict.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"fcosdet {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_eval, _add_predict, _add_export, _add_demo, _add_show_targets,
                _add_import_weights, _add_check_data):
        add(sub)
    return p


def _add_train(sub: Any) -> None:
    t = sub.add_parser("train", help="train a detector", description="Train FCOS on a dataset. "
                       "Launch with torchrun for several GPUs or nodes.")
    t.add_argument("config", help="a preset (fcos_r50_1x, fcos_r50_tricks_1x, fcos_r18_cpu, "
                   "fcos_r18_tricks_cpu, fcos_r50_finetune, torchvision_fcos_r50, demo) or a YAML config file")
    t.add_argument("--data", help="dataset YAML or folder (COCO / VOC / YOLO layout); sets data.dataset")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.epochs=24 (repeatable)")
    t.add_argument("--run-dir", type=Path, default=Path("runs/train"), help="output folder (default runs/train)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from last.pt")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --run-dir")
    t.add_argument("--skip-invalid", action="store_true",
                   help="drop invalid annotations/images (counted and reported) instead of stopping")


def _add_eval(sub: Any) -> None:
    e = sub.add_parser("eval", help="COCO mAP of a checkpoint on a dataset split")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--data", help="dataset YAML or folder (default: the one the model was trained on)")
    e.add_argument("--split", default="val")
    e.add_argument("--out", type=Path, help="write metrics.json and detections.json here")
    e.add_argument("--batch-size", type=int, default=2)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a test setting, e.g. --set test.nms_iou=0.6 (test.* keys; repeatable)")
    e.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: bf16 autocast (opt-in)")
    e.add_argument("--onnx-runtime", choices=["onnxruntime", "openvino"], default="onnxruntime",
                   help="what runs an .onnx file (default onnxruntime)")


def _add_predict(sub: Any) -> None:
    pr = sub.add_parser("predict", help="detect objects in images or folders")
    pr.add_argument("checkpoint", type=Path)
    pr.add_argument("sources", nargs="+", help="image files or folders")
    pr.add_argument("--out", type=Path, default=Path("runs/predict"))
    pr.add_argument("--score-thr", type=float, default=0.05, help="keep detections above this score")
    pr.add_argument("--draw-thr", type=float, default=0.3, help="draw detections above this score")
    pr.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available; "
                    ".onnx files run on the cpu)")
    pr.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    pr.add_argument("--onnx-runtime", choices=["onnxruntime", "openvino"], default="onnxruntime",
                    help="what runs an .onnx file (default onnxruntime; openvino was faster on our CPU)")
    pr.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: bf16 autocast (opt-in: detections move slightly; fast only with native bf16)")


def _add_export(sub: Any) -> None:
    ex = sub.add_parser("export", help="export a trained model: ONNX, torch.export program or safetensors weights",
                        description="Export a checkpoint (or a .safetensors weights file). onnx: the whole "
                        "detector (network, decoding, NMS) in one graph for onnxruntime, metadata included; "
                        "torchscript: the same as a torch.export program (.pt2) for PyTorch without fcosdet; "
                        "weights: safetensors weights with the config and class names (small, safe to load).")
    ex.add_argument("checkpoint", type=Path)
    ex.add_argument("--format", required=True, choices=["onnx", "torchscript", "weights"])
    ex.add_argument("--out", type=Path, required=True, help="the file to write (.onnx, .pt2 or .safetensors)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ex.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a test setting baked into the export, e.g. --set test.score_thr=0.3")


def _add_demo(sub: Any) -> None:
    d = sub.add_parser("demo", help="train and evaluate on the built-in shapes dataset (2 CPU cores, under 10 min); "
                       "replaces its --run-dir")
    d.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    d.add_argument("--data-dir", type=Path, default=Path("runs/shapes-data"))
    d.add_argument("--epochs", type=int, help="override the demo's number of epochs")


def _add_show_targets(sub: Any) -> None:
    st = sub.add_parser("show-targets", help="draw the points each box gets on each FPN level",
                        description="Per image, a figure with a panel per FPN level (image at the training "
                        "resize, anchor points, positive points coloured by box, centerness target) and a "
                        "summary of positives per box and level, from the assignment training uses.")
    st.add_argument("dataset", help="dataset YAML or folder")
    st.add_argument("image_names", nargs="*", metavar="IMAGE", help="image file names of the split (default: "
                    "the first --images)")
    st.add_argument("--images", type=int, default=4, help="how many images when none is named (default 4)")
    st.add_argument("--config", default="fcos_r50_1x", help="preset or YAML config (default fcos_r50_1x)")
    st.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    st.add_argument("--split", default="train")
    st.add_argument("--out", type=Path, default=Path("runs/targets"), help="output folder (default runs/targets)")


def _add_import_weights(sub: Any) -> None:
    iw = sub.add_parser("import-weights", help="turn another library's trained weights into an fcosdet "
                        "checkpoint", description="Convert torchvision's fcos_resnet50_fpn weights (a "
                        "state_dict file, or COCO_V1: downloaded into torch.hub's cache when online) or an "
                        "mmdetection FCOS checkpoint into a checkpoint that eval / predict / --set "
                        "model.init_from=... read.")
    iw.add_argument("kind", choices=["torchvision-fcos", "mmdet-fcos"], help="the source format")
    iw.add_argument("source", help="a state_dict file or a torchvision weights name (COCO_V1); mmdet-fcos: "
                    "an mmdetection FCOS checkpoint (.pth)")
    iw.add_argument("--out", type=Path, required=True, help="the fcosdet checkpoint to write")
    iw.add_argument("--class-names", help="comma-separated class names of a torchvision FCOS trained on "
                    "your own classes (its labels 1..K; default: COCO's 91-id list); mmdet-fcos: only for "
                    "a file without meta['CLASSES']")
    iw.add_argument("--variant", choices=["fcos_r50_1x", "fcos_r50_tricks_1x"], help="mmdet-fcos, for a file "
                    "without meta['config'] only: which published config it was trained with (fcos_r50_1x: "
                    "fcos_r50_caffe_fpn_gn-head_1x_coco; fcos_r50_tricks_1x: fcos_center-normbbox-"
                    "centeronreg-giou_r50_caffe_fpn_gn-head_1x_coco)")
    iw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="mmdet-fcos: override a "
                    "setting of the written config (applied last)")


def _add_check_data(sub: Any) -> None:
    c = sub.add_parser("check-data", help="decode every image and validate every annotation")
    c.add_argument("dataset", help="dataset YAML or folder")
    c.add_argument("--splits", nargs="+", default=["train", "val"])
    c.add_argument("--skip-invalid", action="store_true", help="count problems instead of stopping at the first")
    c.add_argument("--config", default="fcos_r50_1x", help="preset or YAML config whose scale and assignment "
                   "settings the report uses (default fcos_r50_1x)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    c.add_argument("--draw", type=int, default=0, metavar="N", help="draw N images per split with their labels "
                   "(needs --out)")
    c.add_argument("--out", type=Path, help="write report.json, PNG plots and drawn images here")


def _import_weights(args: Any) -> None:
    from .importers import import_mmdet_fcos, import_torchvision_fcos
    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    if args.kind == "mmdet-fcos":
        info = import_mmdet_fcos(args.source, args.out, variant=args.variant, class_names=names, sets=args.set)
        print(f"wrote {info['out']}: {info['tensors']} tensors, {info['classes']} classes, settings from "
              f"{info['settings_from']}: {info['summary']} (evaluate with: fcosdet eval {info['out']} --data DATASET)")
        return
    if args.variant or args.set:
        raise UserError("--variant and --set are for mmdet-fcos; torchvision-fcos writes torchvision's settings")
    info = import_torchvision_fcos(args.source, args.out, class_names=names)
    print(f"wrote {info['out']}: {info['tensors']} tensors, {info['classes']} classes, preset "
          f"{info['preset']} (evaluate with: fcosdet eval {info['out']} --data DATASET)")


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from . import commands
    if args.command == "train":
        from .config import load_config
        cfg = load_config(args.config, args.set)
        if args.data:
            cfg.data.dataset = args.data
        cfg.data.skip_invalid = cfg.data.skip_invalid or args.skip_invalid
        commands.train(cfg, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite)
    elif args.command == "eval":
        commands.evaluate_checkpoint(args.checkpoint, dataset=args.data, split=args.split,
                                     out_dir=args.out, batch_size=args.batch_size, workers=args.workers,
                                     test_sets=args.set, precision=args.precision,
                                     onnx_runtime=args.onnx_runtime)
    elif args.command == "predict":
        commands.predict(args.checkpoint, args.sources, out_dir=args.out, score_thr=args.score_thr,
                         draw_thr=args.draw_thr, device=args.device, batch_size=args.batch_size,
                         precision=args.precision, onnx_runtime=args.onnx_runtime)
    elif args.command == "export":
        commands.export(args.checkpoint, fmt=args.format, out=args.out, overwrite=args.overwrite,
                        test_sets=args.set)
    elif args.command == "demo":
        commands.demo(run_dir=args.run_dir, data_dir=args.data_dir, epochs=args.epochs, overwrite=True)
    elif args.command == "show-targets":
        commands.show_targets(args.dataset, args.image_names, count=args.images, config=args.config,
                              sets=args.set, split=args.split, out_dir=args.out)
    elif args.command == "import-weights":
        _import_weights(args)
    elif args.command == "check-data":
        commands.check_data(args.dataset, args.splits, skip_invalid=args.skip_invalid, config=args.config,
                            sets=args.set, draw=args.draw, out_dir=args.out)
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except UserError as exc:
        print(f"fcosdet: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("fcosdet: interrupted; checkpoints written so far are intact", file=sys.stderr)
        code = 130
    finally:
        from . import distributed
        distributed.cleanup()
    sys.exit(code)


if __name__ == "__main__":
    main()
