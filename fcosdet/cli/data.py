"""`fcosdet check-data DATASET` (decode, validate, report) and `fcosdet show-targets DATASET`
(the points each box gets), both through the objects training builds from a config. Both also
count the boxes without a positive point with and without the P2 level (`--p2` or the config's
model.p2) and at the scale of training tiles (`--tile SIZE` or data.tile)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from fcosdet import distributed as D
from fcosdet.analysis.data_report import draw_labels, format_report, split_report, write_report
from fcosdet.analysis.targets_view import show_targets as draw_targets
from fcosdet.cli.common import CONFIG_SOURCES, add_set_option, config_from_source
from fcosdet.config import Config
from fcosdet.console import say
from fcosdet.data.build import build_tile_sampler, build_transform, require_images
from fcosdet.data.images import verify_images
from fcosdet.data.layout import detect_layout, load_dataset_spec
from fcosdet.data.records import DatasetSplit
from fcosdet.data.validate import summarize_problems
from fcosdet.errors import UserError
from fcosdet.model.build import build_criterion
from fcosdet.model.points import REGRESS_RANGES, STRIDES


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("check-data", help="decode every image and validate every annotation")
    c.add_argument("dataset", help="dataset YAML or folder")
    c.add_argument("--splits", nargs="+", default=["train", "val"], help="the dataset splits to check")
    c.add_argument("--skip-invalid", action="store_true", help="count problems instead of stopping at the first")
    c.add_argument("--config", default="fcos_r50_1x", help=f"whose scale and assignment settings the report "
                   f"uses: {CONFIG_SOURCES}")
    add_set_option(c, "override a config field")
    _add_level_options(c)
    c.add_argument("--draw", type=int, default=0, metavar="N", help="draw N images per split with their labels "
                   "(needs --out)")
    c.add_argument("--out", type=Path, help="write report.json, PNG plots and drawn images here")
    c.set_defaults(func=lambda args: check_data(args.dataset, args.splits, skip_invalid=args.skip_invalid,
                                                config=args.config, sets=_level_sets(args), draw=args.draw,
                                                out_dir=args.out))
    st = sub.add_parser("show-targets", help="draw the points each box gets on each FPN level",
                        description="Per image, a figure with a panel per FPN level (image at the training "
                        "resize, anchor points, positive points coloured by box, centerness target) and a "
                        "summary of positives per box and level, from the assignment training uses.")
    st.add_argument("dataset", help="dataset YAML or folder")
    st.add_argument("image_names", nargs="*", metavar="IMAGE", help="image file names of the split (default: "
                    "the first --images)")
    st.add_argument("--images", type=int, default=4, help="how many images when none is named")
    st.add_argument("--config", default="fcos_r50_1x", help=f"whose assignment is drawn: {CONFIG_SOURCES}")
    add_set_option(st, "override a config field")
    _add_level_options(st)
    st.add_argument("--split", default="train", help="the dataset split the images come from")
    st.add_argument("--out", type=Path, default=Path("runs/targets"), help="output folder")
    st.set_defaults(func=lambda args: show_targets(args.dataset, args.image_names, count=args.images,
                                                   config=args.config, sets=_level_sets(args), split=args.split,
                                                   out_dir=args.out))


def _add_level_options(parser: Any) -> None:
    parser.add_argument("--p2", action="store_true", help="assign with the P2 level (--set model.p2=true)")
    parser.add_argument("--tile", type=int, metavar="SIZE", help="boxes at the scale of training tiles of this "
                        "side (--set data.tile=SIZE)")


def _level_sets(args: Any) -> list[str]:
    """--set values with --p2 / --tile turned into the config keys they stand for."""
    return list(args.set) + (["model.p2=true"] if args.p2 else []) + (
        [f"data.tile={args.tile}"] if args.tile is not None else [])


def _with_p2(cfg: Config, p2: bool) -> Config:
    """The config with model.p2 = `p2`; switched, the levels go back to that level set's defaults."""
    if cfg.model.p2 == p2:
        return cfg
    out = copy.deepcopy(cfg)
    out.model.p2, out.model.strides, out.model.regress_ranges = p2, STRIDES, REGRESS_RANGES
    return out


def assignment_objects(cfg: Config) -> dict[str, Any]:
    """What the analysis assigns with: the criterion and evaluation transform training builds, the
    training tile side (data.tile), and the settings compared: model.p2 false / true (criteria of
    `build_criterion`), on whole images and, with data.tile, at the tile's scale."""
    sampler = build_tile_sampler(cfg)  # a UserError for a tile training could not use
    tile = None if sampler is None else sampler.size
    tiles = [None] + ([tile] if tile is not None else [])
    compare = [(f"model.p2={str(p2).lower()}", build_criterion(_with_p2(cfg, p2).model), tile)
               for tile in tiles for p2 in (False, True)]
    return {"criterion": build_criterion(cfg.model), "transform": build_transform(cfg, train=False),
            "tile": tile, "compare": compare}


def _pick_records(data: DatasetSplit, images: list[str], count: int, where: str) -> list[Any]:
    """The records named by `images` (file names or paths), else the first `count`."""
    if not images:
        return data.records[:count]
    by_name = {Path(r.path).name: r for r in data.records}
    by_path = {str(Path(r.path).resolve()): r for r in data.records}
    picked = []
    for name in images:
        rec = by_path.get(str(Path(name).resolve())) or by_name.get(Path(name).name)
        if rec is None:
            raise UserError(f"image {name} is not in {where}; give a file name of that split "
                            f"(e.g. {Path(data.records[0].path).name}) or choose another --split")
        picked.append(rec)
    return picked


def show_targets(dataset: str, images: list[str], *, count: int, config: str, sets: list[str],
                 split: str, out_dir: Path) -> list[dict[str, Any]]:
    """Per image, the points each box gets on each level (figure + summary), as training assigns them."""
    cfg = config_from_source(config, sets)
    data = load_dataset_spec(dataset, split)
    if not data.records:
        raise UserError(f"split '{split}' of {dataset} has no images; choose another --split")
    where = f"the scale of {cfg.data.tile}-px training tiles" if cfg.data.tile else "the evaluation scale"
    if cfg.data.multiscale_short:
        say(f"shown at {where} {tuple(cfg.data.scale)}; training also draws the short side "
            f"from {tuple(cfg.data.multiscale_short)}, which moves boxes between levels")
    results = draw_targets(_pick_records(data, images, count, f"split '{split}' of {dataset}"),
                           data.class_names, out_dir=out_dir, **assignment_objects(cfg))
    for r in results:
        say(r["summary"])
    say(f"wrote {len(results)} figures and summaries to {out_dir}")
    return results


def _dataset_format(dataset: str) -> str:
    path = Path(dataset)
    if path.is_dir():
        return detect_layout(path) or "unknown"
    spec = yaml.safe_load(path.read_text()) or {}
    return f"{spec.get('format', 'yolo')} (dataset YAML {path.name})"


def _report_split(split: str, data: DatasetSplit, records: list[Any], dataset: str, cfg: Config,
                  config: str, *, draw: int, out_dir: Path | None) -> dict[str, Any]:
    """The dataset report of one split (printed), with --draw images written under out_dir."""
    report = split_report(records, data.class_names, **assignment_objects(cfg))
    report["format"], report["source"] = _dataset_format(dataset), data.source
    say(format_report(report, fmt=report["format"], config=config))
    if draw and out_dir is not None:
        n = draw_labels(records, data.class_names, draw, out_dir / f"{split}_labels")
        say(f"  drew {n} images with their labels to {out_dir / f'{split}_labels'}")
    return report


def check_data(dataset: str, splits: list[str], *, skip_invalid: bool, config: str = "fcos_r50_1x",
               sets: list[str] = (), draw: int = 0, out_dir: Path | None = None) -> dict[str, Any]:
    """Decode and validate every split, then report its counts, box sizes and level assignment
    under `config`; `out_dir` gets report.json and PNG plots (and `draw` images with labels)."""
    if draw and out_dir is None:
        raise UserError("check-data --draw needs --out DIR for the drawn images")
    cfg = config_from_source(config, list(sets))
    reports = {}
    for split in splits:
        data = load_dataset_spec(dataset, split, skip_invalid=skip_invalid,
                                 allow_outside_root=cfg.data.allow_outside_root)
        records, problems = verify_images(data.records, skip_invalid=skip_invalid, show_progress=True)
        problems = list(data.problems) + list(problems)
        require_images(split, DatasetSplit(records=records, class_names=data.class_names, problems=problems,
                                           source=data.source), dataset)  # the rule train and eval apply
        boxes = sum(len(r.boxes) for r in records)
        clipped = f"; clipped {data.clipped} boxes to their image" if data.clipped else ""
        say(f"{split}: {len(records)} images, {boxes} boxes from {data.source}, {len(data.class_names)} "
            f"classes ({', '.join(data.class_names[:10])}){clipped}; {summarize_problems(problems)}")
        reports[split] = _report_split(split, data, records, dataset, cfg, config, draw=draw, out_dir=out_dir)
    if out_dir is not None and D.is_main_process():
        written = write_report(reports, out_dir)
        say(f"wrote {', '.join(str(p) for p in written)}")
    return reports
