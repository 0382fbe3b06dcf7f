"""Helpers several test files share."""
from __future__ import annotations

import pytest

from fcosdet.cli.main import main


def error_line(capsys, argv: list[str]) -> str:
    """Run the CLI on `argv`, which must stop with status 2 and one `fcosdet: error:` line; that line."""
    capsys.readouterr()  # what earlier commands printed
    with pytest.raises(SystemExit) as code:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("fcosdet: error:"), err
    return err


# a small model with random weights whose detections are spread out (test_label_formats, test_serve)
SPREAD_NAMES, SPREAD_IDS = ["WBC", "RBC", "Platelets"], [3, 5, 9]  # ids that are not label + 1
SPREAD_TINY = ["model.depth=18", "model.fpn_channels=32", "model.feat_channels=32", "model.stacked_convs=1",
               "data.scale=[224,160]", "data.multiscale_short=null", "test.max_per_img=12"]


def spread_model(path):
    """A model file of random weights with biases that give boxes of a few strides and scores spread
    over (0, 1), classes SPREAD_NAMES with category ids SPREAD_IDS; returns `path`."""
    import torch

    from fcosdet.io.model_file import ModelFile
    from fcosdet.model.build import build_model
    from fcosdet.presets import load_config

    torch.manual_seed(0)
    cfg = load_config("fcos_r18_cpu", SPREAD_TINY)
    cfg.model.num_classes = len(SPREAD_NAMES)
    model = build_model(cfg.model)
    with torch.no_grad():
        model.head.conv_cls.bias.fill_(-1.0)
        model.head.conv_cls.weight.mul_(10.0)  # classes and scores vary from point to point
        model.head.conv_reg.weight.mul_(3.0)
        model.head.conv_reg.bias.uniform_(1.0, 3.0)
    ModelFile(model=model.state_dict(), config=cfg.to_dict(), class_names=SPREAD_NAMES,
              category_ids=SPREAD_IDS).save(path)
    return path
