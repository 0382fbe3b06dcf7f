"""Model file -> objects: the one place that turns a `ModelFile` into what inference runs
(`Detector.from_file`, `fcosdet export`, the benchmarks)."""
from __future__ import annotations

from typing import Any, NamedTuple

from fcosdet.config import Config, apply_overrides, flatten_dict
from fcosdet.data.build import build_transform
from fcosdet.data.transforms import DetectionTransform
from fcosdet.io.model_file import ModelFile
from fcosdet.model import FCOS
from fcosdet.model.build import build_model, build_postprocessor
from fcosdet.model.postprocess import FCOSPostProcessor


class InferenceParts(NamedTuple):
    """What a trained model file turns into (`build_inference`)."""
    model: FCOS  # weights loaded, in eval mode, on the CPU
    postprocessor: FCOSPostProcessor
    transform: DetectionTransform  # the evaluation transform (resize + normalise)
    class_names: list[str]
    config: Config
    category_ids: list[int] | None = None  # the dataset's id of each label (trained on COCO, or imported)
    category_ids_saved: bool = True  # False: a file from before fcosdet saved them (ids unknown, label + 1)

    def model_file(self) -> ModelFile:
        """The weights, config (with the overrides) and class names as a model file (what export writes)."""
        return ModelFile(model=self.model.state_dict(), config=self.config.to_dict(),
                         class_names=list(self.class_names), category_ids=self.category_ids)


def config_of(model_file: ModelFile) -> Config:
    """The Config a model file was saved with, over today's defaults (keys added since keep their default)."""
    cfg = Config()
    apply_overrides(cfg, flatten_dict(model_file.config))
    return cfg


def build_inference(model_file: ModelFile, *, overrides: dict[str, Any] | None = None) -> InferenceParts:
    """A model file with weights (`.pt` / `.safetensors`) -> the objects inference needs.
    `overrides` ({"test.score_thr": 0.3}) change its settings (the test ones, in practice)."""
    model_file.require_weights()
    cfg = apply_overrides(config_of(model_file), dict(overrides or {}))
    cfg.model.backbone_weights = None  # the file holds every weight
    model = build_model(cfg.model)
    model.load_state_dict(model_file.model)
    return InferenceParts(model=model.eval(), postprocessor=build_postprocessor(cfg.model, cfg.test),
                          transform=build_transform(cfg, train=False), class_names=list(model_file.class_names), config=cfg,
                          category_ids=model_file.category_ids, category_ids_saved=model_file.category_ids_saved)
