"""The command line as a new user meets it: every option of every sub-command says what it does
and shows its default, a wrong flag gets the sub-command's usage, and a YAML config can name the
preset it changes."""
from __future__ import annotations

import argparse

import pytest

from fcosdet.cli.main import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    return build_parser().parse_args(["demo"]).subcommands


def test_every_option_has_help_and_shows_its_default(capsys):
    missing = [f"{name} {a.dest}" for name, sub in _subcommands().items() for a in sub._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not missing, missing
    for name, sub in _subcommands().items():
        text = sub.format_help()
        for a in sub._actions:
            if a.option_strings and a.default not in (None, False, [], argparse.SUPPRESS) and "(default" not in a.help:
                assert f"(default: {a.default})" in " ".join(text.split()), (name, a.dest)  # else it says its own


def test_an_unknown_flag_gets_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as code:
        main(["predict", "model.pt", "images/", "--bogus"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.startswith("usage: fcosdet predict") and "--bogus" in err


def test_a_yaml_config_changes_the_preset_its_base_names(tmp_path, capsys):
    from fcosdet.presets import load_config
    (tmp_path / "my.yaml").write_text("base: fcos_r18_tricks_cpu\ntrain: {epochs: 3}\ndata: {scale: [320, 256]}\n")
    cfg = load_config(str(tmp_path / "my.yaml"), ["train.lr=0.02"])
    assert (cfg.model.depth, cfg.model.center_sampling, cfg.train.epochs, cfg.train.lr) == (18, True, 3, 0.02)
    assert tuple(cfg.data.scale) == (320, 256) and "laid over" not in capsys.readouterr().out
    (tmp_path / "partial.yaml").write_text("train: {epochs: 2}\n")
    assert load_config(str(tmp_path / "partial.yaml")).model.depth == 50
    assert "partial.yaml has no `base:`: laid over fcos_r50_1x" in capsys.readouterr().out
    (tmp_path / "bad.yaml").write_text("base: fcos_r9000\n")
    with pytest.raises(Exception, match="unknown preset 'fcos_r9000'"):
        load_config(str(tmp_path / "bad.yaml"))


def test_check_data_and_show_targets_take_a_run_folder_or_model_file_as_config(tmp_path, shared_data, capsys):
    """A user sees the assignment of the model they trained, not fcos_r50_1x's 1333x800."""
    from fcosdet.cli.data import check_data
    from fcosdet.config import save_config
    from fcosdet.io.model_file import ModelFile
    from fcosdet.model.build import build_model
    from fcosdet.presets import preset
    cfg = preset("fcos_r18_cpu")
    cfg.data.scale, cfg.model.num_classes = (256, 192), 3
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    model = tmp_path / "model.pt"
    ModelFile(model=build_model(cfg.model).state_dict(), config=cfg.to_dict(), class_names=["a", "b", "c"]).save(model)
    for source in (str(run_dir), str(model)):
        report = check_data(str(shared_data / "bccd"), ["val"], skip_invalid=False, config=source)
        assert report["val"]["train_scale"] == [256, 192], source
    assert main_exit_code(["show-targets", str(shared_data / "bccd"), "--images", "1", "--config", str(run_dir),
                           "--out", str(tmp_path / "st")]) == 0
    assert "shown at the evaluation scale (256, 192)" in capsys.readouterr().out


def main_exit_code(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code)
    return 0


def test_the_readme_config_example_loads(tmp_path):
    from pathlib import Path

    from fcosdet.presets import load_config
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = "# my.yaml:" + readme.split("# my.yaml:", 1)[1].split("```", 1)[0]
    (tmp_path / "my.yaml").write_text(example)
    cfg = load_config(str(tmp_path / "my.yaml"))
    assert (cfg.model.depth, cfg.train.epochs, cfg.train.checkpoint_interval, cfg.test.nms_iou) == (18, 36, 500, 0.6)


def test_a_url_source_is_echoed_as_typed(tmp_path, capsys):
    from fcosdet.cli.predict import collect_images
    from fcosdet.errors import UserError
    with pytest.raises(UserError, match=r"^https://example\.com/a\.jpg is neither"):
        collect_images(["https://example.com/a.jpg"])
