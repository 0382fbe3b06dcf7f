"""What several sub-commands share: the --set option, the rule that only test.* keys change an
already trained model, and reading a config from a preset, a YAML file, a run folder or a model file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fcosdet.config import Config, apply_overrides, parse_sets
from fcosdet.deploy.build import config_of
from fcosdet.errors import UserError
from fcosdet.io.model_file import MODEL_SUFFIXES, ModelFile
from fcosdet.presets import load_config


def add_set_option(parser: Any, help: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def test_overrides(sets: list[str], *, command: str) -> dict[str, Any]:
    """--set values for a trained model: test.* keys only (the rest comes from the model file)."""
    overrides = parse_sets(list(sets))
    for key in overrides:
        if not key.startswith("test."):
            raise UserError(f"{command} --set takes test.* keys (test.nms_iou, test.score_thr, test.max_per_img, "
                            f"...), got {key!r}: the model's other settings come from the model file")
    return overrides


CONFIG_SOURCES = "a preset, a YAML config, a run folder (its config.yaml) or a model file (.pt, .safetensors, .onnx, .pt2)"


def config_from_source(source: str, sets: list[str]) -> Config:
    """The config of a preset or YAML file, of a run folder (the config.yaml training saved) or of
    a model file (the settings it was trained with), then --set overrides."""
    path = Path(source)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise UserError(f"--config {path} is a folder without config.yaml; give a run folder, a model "
                            f"file, a preset or a YAML config")
        return load_config(str(path / "config.yaml"), sets)
    if path.suffix in MODEL_SUFFIXES:
        return apply_overrides(config_of(ModelFile.load(path)), parse_sets(list(sets)))
    return load_config(source, sets)
