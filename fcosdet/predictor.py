"""Detector: one object over a checkpoint for inference on images.

    det = Detector.from_checkpoint("runs/exp/best.pt")
    out = det.predict("image.jpg")  # {"boxes" (D, 4) original pixels, "scores" (D,), "labels" (D,), "class_names"}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .build import build_model, build_postprocessor
from .config import Config, apply_overrides, flatten_dict
from .data.transforms import build_transforms, load_image, to_rgb8
from .data.dataset import pad_images
from .engine.checkpoint import load_checkpoint
from .errors import UserError


def config_from_checkpoint(state: dict[str, Any]) -> Config:
    cfg = Config()
    apply_overrides(cfg, flatten_dict(state["config"]))
    return cfg


class Detector:
    def __init__(self, *, model: torch.nn.Module, postprocessor: Any, transform: Any,
                 class_names: list[str], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.postprocessor = postprocessor
        self.transform = transform
        self.class_names = list(class_names)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu",
                        score_thr: float | None = None) -> "Detector":
        state = load_checkpoint(Path(path))
        cfg = config_from_checkpoint(state)
        if score_thr is not None:
            cfg.test.score_thr = score_thr
        cfg.model.backbone_weights = None  # the checkpoint holds every weight
        model = build_model(cfg.model)
        model.load_state_dict(state["model"])
        d = cfg.data
        transform = build_transforms(train=False, scale=d.scale, normalize=d.normalize)
        return cls(model=model, postprocessor=build_postprocessor(cfg.model, cfg.test),
                   transform=transform, class_names=state["class_names"], device=device)

    def _prepare(self, image: str | Path | Image.Image | np.ndarray) -> tuple[torch.Tensor, dict]:
        if isinstance(image, (str, Path)):
            pil = load_image(image)
        elif isinstance(image, np.ndarray):
            pil = Image.fromarray(image).convert("RGB")  # (H, W, 3) uint8 RGB
        elif isinstance(image, Image.Image):
            pil = to_rgb8(image)
        else:
            raise UserError(f"predict() takes a path, a PIL image or an (H, W, 3) uint8 array, "
                            f"not {type(image).__name__}")
        empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int64)}
        return self.transform(pil, empty)

    @torch.no_grad()
    def predict_batch(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        prepared = [self._prepare(im) for im in images]
        batch = pad_images([x for x, _ in prepared]).to(self.device)  # (B, 3, Hp, Wp)
        outputs = self.model(batch)
        dets = self.postprocessor(outputs, [t["img_size"] for _, t in prepared],
                                  [t["orig_size"] for _, t in prepared])
        return [{"boxes": d["boxes"].cpu(), "scores": d["scores"].cpu(), "labels": d["labels"].cpu(),
                 "class_names": [self.class_names[i] for i in d["labels"].tolist()]} for d in dets]

    def predict(self, image: Any) -> dict[str, Any]:
        return self.predict_batch([image])[0]
