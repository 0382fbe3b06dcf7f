"""Torch Dataset over a DatasetSplit, the padding collate and the DataLoader builder.

Dimensions: B images per batch, G boxes in one image, H x W one resized image, Hp x Wp the
padded batch (multiples of `size_divisor`).
Conventions: boxes (x1, y1, x2, y2) float pixels of the resized image, labels in [0, C)
(background = C is never stored); crowd boxes are removed from training targets (the evaluator
reads them from the records instead).
"""
from __future__ import annotations

import random
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
    get_worker_info,
)

from fcosdet.data.images import load_image
from fcosdet.data.records import DatasetSplit
from fcosdet.errors import UserError
from fcosdet.model.points import SIZE_DIVISOR

Transform = Callable[[Any, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]


@dataclass(frozen=True)
class LoadFailure:
    """An image a DataLoader worker could not load; `message` is the UserError's text."""
    message: str


class DetectionDataset(Dataset):
    """Item i: (image (3, H, W) float32, target) where target holds boxes (G, 4) float32,
    labels (G,) int64, image_id int, orig_size (H0, W0), img_size (H, W) and path str."""

    def __init__(self, split: DatasetSplit, *, transforms: Transform) -> None:
        self.split = split
        self.records = split.records
        self.transforms = transforms

    @property
    def class_names(self) -> list[str]:
        return self.split.class_names

    @property
    def num_classes(self) -> int:
        return len(self.split.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]] | LoadFailure:
        """`key`: an index, or (index, seed) from `EpochSampler`: the random augmentations of
        that item then come from `seed` alone (whatever worker or process loads it)."""
        try:
            if isinstance(key, tuple):
                index, seed = key
                with torch.random.fork_rng(devices=[]):  # the caller's CPU RNG is left as it was
                    torch.manual_seed(seed)
                    return self._load(index)
            return self._load(key)
        except UserError as exc:
            if get_worker_info() is None:
                raise
            # torch would re-raise it in the main process with the worker's traceback pasted
            # into the message; the loader turns this value back into the one-line UserError.
            return LoadFailure(str(exc))

    def _load(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.records[index]
        image = load_image(record.path)  # UserError naming the file if it does not decode
        if image.size != (record.width, record.height):
            raise UserError(f"Image file {record.path} decodes to {image.size[0]}x{image.size[1]} but the "
                            f"dataset says {record.width}x{record.height}; fix the annotation or re-save "
                            "the image without an EXIF rotation.")
        keep = ~np.asarray(record.iscrowd, bool)  # (G,)
        target = {
            "boxes": np.asarray(record.boxes, np.float32).reshape(-1, 4)[keep],  # (G, 4)
            "labels": np.asarray(record.labels, np.int64).reshape(-1)[keep],  # (G,)
            "image_id": int(record.image_id),
            "path": record.path,
        }
        return self.transforms(image, target)


def _move(value: Any, device: torch.device | str, non_blocking: bool) -> Any:
    return value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, Hp, Wp) float32, zero-padded at the bottom / right
    targets: list[dict[str, Any]]  # per image: boxes (G, 4), labels (G,), image_id, sizes, path

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Batch:
        """The batch with images and every tensor in the targets on `device`."""
        targets = [{k: _move(v, device, non_blocking) for k, v in t.items()} for t in self.targets]
        return Batch(images=self.images.to(device, non_blocking=non_blocking), targets=targets)

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) for custom batch types."""
        targets = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                   for t in self.targets]
        return Batch(images=self.images.pin_memory(), targets=targets)

    def __len__(self) -> int:
        return len(self.targets)


def pad_images(images: Sequence[torch.Tensor], *, size_divisor: int = SIZE_DIVISOR) -> torch.Tensor:
    """Stack images (3, H_i, W_i) into (B, 3, Hp, Wp), zero-padded at the bottom / right so that
    Hp, Wp are the largest H_i, W_i rounded up to a multiple of `size_divisor`."""
    height = max(int(img.shape[-2]) for img in images)
    width = max(int(img.shape[-1]) for img in images)
    if size_divisor > 1:
        height = -(-height // size_divisor) * size_divisor
        width = -(-width // size_divisor) * size_divisor
    shape = (len(images), int(images[0].shape[0]), height, width)  # (B, 3, Hp, Wp)
    batch = images[0].new_zeros(shape)  # (B, 3, Hp, Wp)
    for index, img in enumerate(images):
        batch[index, :, : img.shape[-2], : img.shape[-1]].copy_(img)
    return batch


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]] | LoadFailure], *,
            size_divisor: int = SIZE_DIVISOR) -> Batch | LoadFailure:
    """(image, target) pairs -> Batch; padding comes after normalisation, so pads are 0.
    A batch with an image that failed to load becomes that failure."""
    for item in batch:
        if isinstance(item, LoadFailure):
            return item
    images = [image for image, _ in batch]
    return Batch(images=pad_images(images, size_divisor=size_divisor), targets=[t for _, t in batch])


SEED_STRIDE = 1_000_003  # a prime: (seed, epoch) and (seed, epoch, index) pairs never collide in practice


class EpochSampler(Sampler):
    """The training order: a function of (seed, epoch) only, so a resumed run sees exactly the
    batches an uninterrupted run would.

    Wraps a DistributedSampler (one replica without torchrun: the same code path either way),
    whose permutation for epoch e comes from a generator seeded with seed * SEED_STRIDE + e.
    Yields (index, item seed): each item's augmentations are seeded with a function of
    (seed, epoch, index). `skip_batches(k)` makes the next pass start after k batches of
    `batch_size` (a mid-epoch resume)."""

    def __init__(self, dataset: Dataset, *, seed: int, batch_size: int, num_replicas: int = 1,
                 rank: int = 0) -> None:
        self.base = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                                       seed=seed * SEED_STRIDE, drop_last=False)
        self.seed, self.batch_size, self.epoch, self.skip = seed, batch_size, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def skip_batches(self, batches: int) -> None:
        self.skip = batches * self.batch_size

    def item_seed(self, index: int) -> int:
        return ((self.seed * SEED_STRIDE + self.epoch) * SEED_STRIDE + index) % 2**63

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip, self.skip = self.skip, 0  # one pass only
        for position, index in enumerate(self.base):
            if position >= skip:
                yield index, self.item_seed(index)

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)


def _seed_worker(worker_id: int) -> None:
    """Python's and numpy's RNGs follow the worker's torch seed (base seed + worker id). Ctrl-C
    reaches the whole process group: workers ignore it, and the main process saves a checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class _Loader(DataLoader):
    """A DataLoader that raises a worker's LoadFailure in the caller as a plain UserError."""

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            if isinstance(batch, LoadFailure):
                raise UserError(batch.message)
            yield batch


def build_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int,
                 sampler: Sampler | None = None, drop_last: bool = False, seed: int = 0,
                 size_divisor: int = SIZE_DIVISOR) -> DataLoader:
    """DataLoader yielding `Batch`es; reproducible for a given `seed` (shuffle order and the
    per-worker RNGs of random augmentations). With a `sampler`, `shuffle` is ignored."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return _Loader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=partial(collate, size_divisor=size_divisor),
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=generator,
    )
