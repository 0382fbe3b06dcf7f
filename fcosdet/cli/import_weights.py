"""`fcosdet import-weights torchvision-fcos|mmdet-fcos SOURCE --out MODEL.pt`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fcosdet.cli.common import add_set_option
from fcosdet.errors import UserError
from fcosdet.io.importers.mmdet import MMDET_VARIANTS, import_mmdet_fcos
from fcosdet.io.importers.torchvision import import_torchvision_fcos

IMPORTERS = ("torchvision-fcos", "mmdet-fcos")


def add_parser(sub: Any) -> None:
    iw = sub.add_parser("import-weights", help="turn another library's trained weights into an fcosdet "
                        "checkpoint", description="Convert torchvision's fcos_resnet50_fpn weights (a "
                        "state_dict file, or COCO_V1: downloaded into torch.hub's cache when online) or an "
                        "mmdetection FCOS checkpoint into a checkpoint that eval / predict / --set "
                        "model.init_from=... read.")
    iw.add_argument("kind", choices=IMPORTERS, help="the source format")
    iw.add_argument("source", help="a state_dict file or a torchvision weights name (COCO_V1); mmdet-fcos: "
                    "an mmdetection FCOS checkpoint (.pth)")
    iw.add_argument("--out", type=Path, required=True, help="the fcosdet checkpoint to write")
    iw.add_argument("--class-names", help="comma-separated class names of a torchvision FCOS trained on "
                    "your own classes (its labels 1..K; default: COCO's 91-id list); mmdet-fcos: only for "
                    "a file without meta['CLASSES']")
    iw.add_argument("--variant", choices=list(MMDET_VARIANTS), help="mmdet-fcos, for a file "
                    "without meta['config'] only: which published config it was trained with (fcos_r50_1x: "
                    "fcos_r50_caffe_fpn_gn-head_1x_coco; fcos_r50_tricks_1x: fcos_center-normbbox-"
                    "centeronreg-giou_r50_caffe_fpn_gn-head_1x_coco)")
    add_set_option(iw, "mmdet-fcos: override a setting of the written config (applied last)")
    iw.set_defaults(func=run)


def run(args: Any) -> None:
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
