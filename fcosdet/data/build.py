"""DataConfig -> the splits and loaders training and evaluation use (the data side of `build`).

A split that is missing or empty is one UserError naming the file; each split read prints one
line saying which file, how many images and boxes.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from fcosdet import distributed as D
from fcosdet.config import Config
from fcosdet.console import say, warn
from fcosdet.data.images import verify_images
from fcosdet.data.layout import load_dataset_spec
from fcosdet.data.loader import DetectionDataset, EpochSampler, build_loader
from fcosdet.data.records import DatasetSplit
from fcosdet.data.tiles import TileSampler
from fcosdet.data.transforms import DetectionTransform, build_transforms
from fcosdet.data.validate import MissingSplitError, summarize_problems
from fcosdet.errors import UserError


def describe_split(split: str, data: DatasetSplit) -> str:
    """'val: 72 images, 1003 boxes from .../val.json' (+ how many boxes were clipped)."""
    boxes = sum(len(r.boxes) for r in data.records)
    line = f"{split}: {len(data.records)} images, {boxes} boxes from {data.source or '?'}"
    if data.clipped:
        line += f"; clipped {data.clipped} boxes that crossed the image border to the image"
    return line


def require_images(split: str, data: DatasetSplit, dataset: str) -> None:
    """The rule training, evaluation and check-data share: a split with no images (or none left
    after --skip-invalid) is an error, never an empty report or an empty evaluation."""
    if not data.records:
        dropped = f" after skipping {len(data.problems)} invalid ones" if data.problems else ""
        raise UserError(f"split '{split}' of {dataset} ({data.source or 'no file'}) holds no "
                        f"images{dropped}; fix the dataset or choose another split")


def load_split(cfg: Config, split: str, *, training: bool = False) -> DatasetSplit:
    """One split, with a line saying which file, how many images and boxes; an empty split
    (or one emptied by --skip-invalid) is a UserError. `training`: a missing val split also
    says how to train without evaluation."""
    if not cfg.data.dataset:
        raise UserError("no dataset given; pass --data PATH (a dataset YAML or a COCO/VOC/YOLO folder) "
                        "or set data.dataset in the config")
    try:
        data = load_dataset_spec(cfg.data.dataset, split, skip_invalid=cfg.data.skip_invalid,
                                 allow_outside_root=cfg.data.allow_outside_root)
    except MissingSplitError as exc:
        if not (training and split == cfg.data.val_split):
            raise
        raise UserError(f"{exc.base}, or set data.val_split=none to train without evaluation.") from None
    if cfg.data.skip_invalid:  # decode every image now, so a truncated one is dropped, not fatal later
        data.records, undecodable = verify_images(data.records, skip_invalid=True)
        data.problems.extend(undecodable)
    if data.problems:
        say(f"{split}: {summarize_problems(data.problems)}")
    say(describe_split(split, data))
    require_images(split, data, cfg.data.dataset)
    return data


def warn_shared_images(train: DatasetSplit, val: DatasetSplit) -> None:
    """Val images that are also training images make the val metrics (and best.pt) optimistic."""
    seen = {os.path.abspath(r.path) for r in train.records}
    shared = sum(os.path.abspath(r.path) in seen for r in val.records)
    if shared:
        warn(f"{shared} of the {len(val.records)} val images ({val.source}) are also training images "
             f"({train.source}): the val metrics and the choice of best.pt over-estimate the model; "
             f"use a val split without training images")


def build_transform(cfg: Config, *, train: bool) -> DetectionTransform:
    """The training (augmenting) or evaluation transform of a config."""
    d = cfg.data
    return build_transforms(train=train, scale=d.scale, multiscale_short=d.multiscale_short,
                            flip_prob=d.flip_prob, normalize=d.normalize, crop_scale=d.crop_scale,
                            photometric_prob=d.photometric_prob, resize=d.resize,
                            tile=build_tile_sampler(cfg) if train else None)


def build_tile_sampler(cfg: Config) -> TileSampler | None:
    """data.tile / tile_empty / tile_min_area -> the training tile sampler (None: whole images)."""
    d = cfg.data
    if d.tile is None:
        return None
    return TileSampler(size=d.tile, empty_prob=d.tile_empty, min_area=d.tile_min_area)


def make_loader(cfg: Config, data: DatasetSplit, *, train: bool) -> Any:
    d = cfg.data
    dataset = DetectionDataset(data, transforms=build_transform(cfg, train=train))
    sampler = None
    if train:  # order and augmentations a function of (seed, epoch), one process or many
        sampler = EpochSampler(dataset, seed=cfg.train.seed, batch_size=d.batch_size,
                               num_replicas=D.world_size(), rank=D.rank())
    elif D.is_distributed():
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=False, drop_last=False)
    return build_loader(dataset, batch_size=d.batch_size, shuffle=train, num_workers=d.workers,
                        sampler=sampler, drop_last=False, seed=cfg.train.seed + D.rank())
