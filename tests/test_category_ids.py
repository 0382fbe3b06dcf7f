"""A COCO dataset's own category ids (not label + 1) in every results file of a model trained on it.

The dataset: a few real bccd photos whose WBC / RBC boxes are written with the ids 7 and 3
(listed in that order), so label 0 is 'rbc' (id 3) and label 1 is 'wbc' (id 7).
"""
import json
import shutil

import pytest
import torch

from fcosdet.cli.main import main
from fcosdet.cli.main import run as cli
from fcosdet.data import load_dataset_spec, read_coco, read_voc
from fcosdet.deploy.predictor import Detector
from fcosdet.errors import UserError
from fcosdet.io.model_file import save_atomic

IDS = {7: "wbc", 3: "rbc"}  # bccd's WBC (1) -> 7, RBC (2) -> 3; Platelets dropped
BCCD_TO_ID = {1: 7, 2: 3}
TINY = ["--set", "model.depth=10", "--set", "model.fpn_channels=32", "--set", "model.feat_channels=32",
        "--set", "model.stacked_convs=1", "--set", "data.scale=[224,160]", "--set", "data.multiscale_short=null",
        "--set", "data.batch_size=2", "--set", "data.workers=0", "--set", "train.log_interval=1",
        "--set", "train.warmup_iters=2", "--set", "train.epochs=1", "--set", "train.max_iters=2",
        "--set", "test.max_per_img=10"]


def _coco(bccd, names, categories):
    """A COCO dict of the bccd images `names` with their WBC / RBC boxes under the ids 7 / 3."""
    source = json.loads((bccd / "annotations.json").read_text())
    images = [im for im in source["images"] if im["file_name"] in names]
    keep = {im["id"] for im in images}
    anns = [{**a, "category_id": BCCD_TO_ID[a["category_id"]]} for a in source["annotations"]
            if a["image_id"] in keep and a["category_id"] in BCCD_TO_ID]
    return {"images": images, "annotations": anns, "categories": categories}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, shared_data):
    """images/ (5 bccd photos), train.json (3 of them) and val.json (2), categories {7: wbc, 3: rbc}."""
    root = tmp_path_factory.mktemp("ids_data")
    bccd = shared_data / "bccd"
    names = [f"BloodImage_0000{i}.jpg" for i in range(5)]
    (root / "images").mkdir()
    for name in names:
        shutil.copy(bccd / "images" / name, root / "images" / name)
    categories = [{"id": cid, "name": name} for cid, name in IDS.items()]
    (root / "train.json").write_text(json.dumps(_coco(bccd, names[:3], categories)))
    (root / "val.json").write_text(json.dumps(_coco(bccd, names[3:], categories)))
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ids_run") / "run"
    cli(["train", "fcos_r18_cpu", "--data", str(dataset), "--run-dir", str(run_dir), *TINY])
    return run_dir


def test_coco_reader_keeps_each_labels_category_id(dataset, tmp_path):
    split = read_coco(dataset / "images", dataset / "train.json")
    assert split.class_names == ["rbc", "wbc"] and split.category_ids == [3, 7]
    source = json.loads((dataset / "train.json").read_text())
    for record in split.records:  # every box's label names its category id
        ids = [a["category_id"] for a in source["annotations"] if a["image_id"] == record.image_id]
        assert [split.category_ids[label] for label in record.labels] == ids
    # 0-based ids, and ids matched to the names list of a dataset YAML (its order wins)
    zero = {**source, "categories": [{"id": 5, "name": "y"}, {"id": 0, "name": "x"}], "annotations": []}
    (tmp_path / "zero.json").write_text(json.dumps(zero))
    assert read_coco(dataset / "images", tmp_path / "zero.json").category_ids == [0, 5]
    spec = tmp_path / "data.yaml"
    spec.write_text(f"format: coco\nroot: {dataset}\ntrain: train.json\nnames: [wbc, rbc]\n")
    named = load_dataset_spec(spec, "train")
    assert named.class_names == ["wbc", "rbc"] and named.category_ids == [7, 3]
    for record in named.records:
        ids = [a["category_id"] for a in source["annotations"] if a["image_id"] == record.image_id]
        assert [named.category_ids[label] for label in record.labels] == ids
    # a name must be exactly one category: else the results files would not know its id
    twice = {**zero, "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "x"}]}
    (tmp_path / "twice.json").write_text(json.dumps(twice))
    with pytest.raises(UserError, match="2 categories named 'x'"):
        read_coco(dataset / "images", tmp_path / "twice.json", class_names=["x"])
    with pytest.raises(UserError, match="0 categories named 'z'"):
        read_coco(dataset / "images", tmp_path / "zero.json", class_names=["x", "z"])


def test_voc_labels_have_no_category_ids(shared_data):
    assert read_voc(shared_data / "bccd", "test").category_ids is None  # results files: label + 1


def test_trained_model_writes_the_datasets_ids_in_predict_eval_and_export(trained, dataset, tmp_path):
    images = sorted((dataset / "images").iterdir())[:2]
    cli(["predict", str(trained / "last.pt"), *map(str, images), "--out", str(tmp_path / "pred"),
         "--score-thr", "0"])
    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert preds and {p["category"] for p in preds} == {"rbc", "wbc"}
    assert all(p["category_id"] == {"rbc": 3, "wbc": 7}[p["category"]] for p in preds)

    cli(["eval", str(trained / "last.pt"), "--out", str(tmp_path / "eval"), "--set", "test.score_thr=0"])
    dets = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert dets and {d["category_id"] for d in dets} == {3, 7}

    cli(["export", str(trained / "last.pt"), "--format", "weights", "--out", str(tmp_path / "m.safetensors")])
    assert Detector.from_file(tmp_path / "m.safetensors").category_ids == [3, 7]
    state = torch.load(trained / "last.pt", weights_only=True)  # the key imported files carry too
    assert state["category_ids"] == [3, 7] and state["class_names"] == ["rbc", "wbc"]
    assert torch.load(trained / "best.pt", weights_only=True)["category_ids"] == [3, 7]


def test_checkpoint_without_category_ids_predicts_label_plus_one_with_a_warning(trained, dataset, tmp_path,
                                                                                capsys):
    state = torch.load(trained / "last.pt", weights_only=True)
    save_atomic({**state, "category_ids": None}, tmp_path / "voc.pt")  # trained on VOC / YOLO data: no ids
    del state["category_ids"]  # a checkpoint written before the key existed
    save_atomic(state, tmp_path / "old.pt")
    image = sorted((dataset / "images").iterdir())[0]
    capsys.readouterr()
    cli(["predict", str(tmp_path / "voc.pt"), str(image), "--out", str(tmp_path / "voc"), "--score-thr", "0"])
    assert "warning" not in capsys.readouterr().err  # label + 1 is that dataset's numbering
    cli(["predict", str(tmp_path / "old.pt"), str(image), "--out", str(tmp_path / "pred"), "--score-thr", "0"])
    err = capsys.readouterr().err  # the ids are unknown: label + 1 may be wrong, and the fix is named
    assert "fcosdet: warning:" in err and "old.pt predates" in err and "fcosdet eval" in err
    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert preds and all(p["category_id"] == {"rbc": 1, "wbc": 2}[p["category"]] for p in preds)
    # an exported weights file from before the key behaves the same; one exported today keeps the key
    cli(["export", str(tmp_path / "voc.pt"), "--format", "weights", "--out", str(tmp_path / "voc.safetensors")])
    assert Detector.from_file(tmp_path / "voc.safetensors").category_ids_saved
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(tmp_path / "voc.safetensors"), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if not k.endswith("category_ids")}
    save_file(load_file(str(tmp_path / "voc.safetensors")), str(tmp_path / "old.safetensors"), metadata=meta)
    assert not Detector.from_file(tmp_path / "old.safetensors").category_ids_saved
    # evaluated on its COCO dataset, detections.json takes that annotation file's ids
    cli(["eval", str(tmp_path / "old.pt"), "--out", str(tmp_path / "eval"), "--set", "test.score_thr=0"])
    assert {d["category_id"] for d in json.loads((tmp_path / "eval" / "detections.json").read_text())} == {3, 7}


def test_train_and_val_with_different_category_ids_is_one_error_line(dataset, tmp_path, capsys):
    val = json.loads((dataset / "val.json").read_text())
    val["categories"] = [{"id": 8, "name": "wbc"}, {"id": 3, "name": "rbc"}]
    val["annotations"] = [{**a, "category_id": 8 if a["category_id"] == 7 else 3} for a in val["annotations"]]
    (tmp_path / "val.json").write_text(json.dumps(val))
    spec = tmp_path / "data.yaml"
    spec.write_text(f"format: coco\nroot: {dataset}\ntrain: train.json\nval: {tmp_path / 'val.json'}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "fcos_r18_cpu", "--data", str(spec), "--run-dir", str(tmp_path / "run"), *TINY])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fcosdet: error:"), err
    assert str(dataset / "train.json") in err and str(tmp_path / "val.json") in err and "[3, 8]" in err
