"""A `.pt2` (torch.export program) is read with zipfile + safetensors only: fcosdet's metadata
entry and its safetensors copy of the weights. Anything else (a pickle in the weights entry, a
program not written by fcosdet, one from before the weights copy, not a zip at all) is one
error line, and nothing in the file runs. (Parity with the checkpoint: tests/test_export.py.)"""
import json
import zipfile

import pytest
import safetensors.torch
import torch
from helpers import error_line
from test_predictor import _state

from fcosdet.deploy.predictor import Detector
from fcosdet.errors import UserError
from fcosdet.io.model_file import MODEL_SUFFIXES, PROGRAM_METADATA, PROGRAM_WEIGHTS, ModelFile, encode_metadata

BCCD_IMAGE = "bccd/images/BloodImage_00000.jpg"


class _Payload:
    """Unpickling this creates a file: the side effect a malicious weights entry would have."""

    def __init__(self, target) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def _archive(path, entries):
    """A zip laid out as torch.export writes a .pt2: every entry under one root folder."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(f"model/{name}", data)
    return path


@pytest.fixture(scope="module")
def model_file():
    return _state()


def test_pt2_is_an_accepted_model_file_suffix():
    assert ".pt2" in MODEL_SUFFIXES


def test_fcosdet_entries_are_read_back_without_the_program(model_file, tmp_path, shared_data):
    """The two entries `fcosdet export --format program` adds are all ModelFile.load needs."""
    meta = json.dumps(encode_metadata({**model_file.metadata(), "category_ids": [3, 7, 9]}))
    path = _archive(tmp_path / "m.pt2", {f"extra/{PROGRAM_METADATA}": meta,
                                         PROGRAM_WEIGHTS: safetensors.torch.save(model_file.model)})
    loaded = ModelFile.load(path)
    assert loaded.class_names == ["a", "b", "c"] and loaded.category_ids == [3, 7, 9]
    assert loaded.model.keys() == model_file.model.keys()
    assert all(torch.equal(loaded.model[k], v) for k, v in model_file.model.items())
    r = Detector.from_file(path).predict(shared_data / BCCD_IMAGE)
    assert len(r) > 0 and r.category_ids == [3, 7, 9]


def test_a_pickled_weights_entry_is_refused_and_runs_nothing(model_file, tmp_path, shared_data, capsys):
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pickle"
    torch.save({"w": torch.zeros(1), "x": _Payload(marker)}, weights)
    meta = json.dumps(encode_metadata(model_file.metadata()))
    evil = _archive(tmp_path / "evil.pt2", {f"extra/{PROGRAM_METADATA}": meta, PROGRAM_WEIGHTS: weights.read_bytes()})
    with pytest.raises(UserError, match="refusing .*evil.pt2.*not a safetensors file of plain tensors"):
        ModelFile.load(evil)
    image = str(shared_data / BCCD_IMAGE)
    for argv in (["predict", str(evil), image, "--out", str(tmp_path / "pred")],
                 ["eval", str(evil), "--data", str(shared_data / "bccd")]):
        assert "evil.pt2" in error_line(capsys, argv)
    assert not marker.exists()


def test_foreign_old_and_broken_pt2_files_areerror_line(model_file, tmp_path, shared_data, capsys):
    image = str(shared_data / BCCD_IMAGE)
    plain = tmp_path / "plain.pt2"  # a torch.export program that fcosdet did not write
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),)), str(plain))
    err = error_line(capsys, ["predict", str(plain), image, "--out", str(tmp_path / "p")])
    assert "plain.pt2 is not a torch.export program written by fcosdet" in err
    # exported before the weights copy: metadata as plain JSON, weights only inside the program
    old = _archive(tmp_path / "old.pt2", {f"extra/{PROGRAM_METADATA}": json.dumps(model_file.metadata())})
    err = error_line(capsys, ["predict", str(old), image, "--out", str(tmp_path / "p")])
    assert "old.pt2 holds no safetensors copy" in err and "--format program" in err
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"not a zip archive")
    err = error_line(capsys, ["predict", str(broken), image, "--out", str(tmp_path / "p")])
    assert "cannot read program file" in err and "broken.pt2" in err
    bad_meta = _archive(tmp_path / "meta.pt2", {f"extra/{PROGRAM_METADATA}": "[1, 2",
                                                PROGRAM_WEIGHTS: safetensors.torch.save(model_file.model)})
    assert "meta.pt2" in error_line(capsys, ["predict", str(bad_meta), image, "--out", str(tmp_path / "p")])
